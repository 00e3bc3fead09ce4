//! Task log lines: plugin `log` calls, captured guest stdout/stderr and host notes
//! (refused HTTP requests, limits hit), bounded by `max_log_bytes`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        })
    }
}

/// Who produced a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The plugin's `log` import.
    Plugin,
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error (panic messages land here).
    Stderr,
    /// The host, about this task (a refused request, a limit that was hit).
    Host,
}

impl fmt::Display for LogSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogSource::Plugin => "plugin",
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Host => "host",
        })
    }
}

/// One line of a task's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Unix epoch milliseconds.
    pub at_ms: i64,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} {}] {}", self.source, self.level, self.message)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Rust's "run with RUST_BACKTRACE=1" hint, noise for a guest that has no environment.
pub(crate) fn is_backtrace_note(line: &str) -> bool {
    line.trim_start()
        .starts_with("note: run with `RUST_BACKTRACE=1`")
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Log lines of one task, bounded in total bytes.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    lines: Vec<LogLine>,
    bytes: u64,
    max_bytes: u64,
    dropped: u64,
}

impl LogBuffer {
    pub(crate) fn new(max_bytes: u64) -> Self {
        LogBuffer {
            lines: Vec::new(),
            bytes: 0,
            max_bytes,
            dropped: 0,
        }
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub(crate) fn push(&mut self, line: LogLine) {
        let size = line.message.len()
            + line
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let size = size as u64;
        if self.bytes + size > self.max_bytes {
            self.dropped += 1;
            return;
        }
        self.bytes += size;
        self.lines.push(line);
    }

    /// The lines, with a final note when some were dropped.
    pub(crate) fn finish(mut self) -> Vec<LogLine> {
        if self.dropped > 0 {
            self.lines.push(LogLine {
                at_ms: now_ms(),
                level: LogLevel::Warn,
                source: LogSource::Host,
                message: format!(
                    "{} log line(s) dropped: the task's log exceeded max_log_bytes ({} bytes)",
                    self.dropped, self.max_bytes
                ),
                fields: Vec::new(),
            });
        }
        self.lines
    }
}

/// A guest stdout/stderr sink keeping at most `capacity` bytes; further output is
/// accepted and discarded (the guest never fails or blocks because of it).
#[derive(Clone)]
pub(crate) struct CapturePipe {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    buf: Vec<u8>,
    capacity: usize,
    truncated: bool,
}

impl CapturePipe {
    pub(crate) fn new(capacity: usize) -> Self {
        CapturePipe {
            inner: Arc::new(Mutex::new(Captured {
                buf: Vec::new(),
                capacity,
                truncated: false,
            })),
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut c = match self.inner.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let room = c.capacity.saturating_sub(c.buf.len());
        if bytes.len() > room {
            c.truncated = true;
        }
        let take = bytes.len().min(room);
        c.buf.extend_from_slice(&bytes[..take]);
    }

    /// Captured text (lossy UTF-8) and whether output was cut.
    pub(crate) fn contents(&self) -> (String, bool) {
        let c = match self.inner.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        (String::from_utf8_lossy(&c.buf).into_owned(), c.truncated)
    }

    /// The captured output as log lines, one per line of text.
    pub(crate) fn append_lines_to(&self, source: LogSource, level: LogLevel, out: &mut LogBuffer) {
        let (text, truncated) = self.contents();
        let at_ms = now_ms();
        for l in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !is_backtrace_note(l))
        {
            out.push(LogLine {
                at_ms,
                level,
                source,
                message: l.to_string(),
                fields: Vec::new(),
            });
        }
        if truncated {
            out.push(LogLine {
                at_ms,
                level: LogLevel::Warn,
                source: LogSource::Host,
                message: format!("guest {source} truncated: more than max_log_bytes was written"),
                fields: Vec::new(),
            });
        }
    }
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturePipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CapturePipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buffer_is_bounded_and_says_so() {
        let mut b = LogBuffer::new(10);
        for i in 0..5 {
            b.push(LogLine {
                at_ms: 0,
                level: LogLevel::Info,
                source: LogSource::Plugin,
                message: format!("msg{i}"),
                fields: vec![],
            });
        }
        let lines = b.finish();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[2].message.contains("3 log line(s) dropped"));
    }

    #[test]
    fn capture_pipe_truncates() {
        let p = CapturePipe::new(4);
        p.append(b"ab");
        p.append(b"cdef");
        assert_eq!(p.contents(), ("abcd".to_string(), true));
    }
}
