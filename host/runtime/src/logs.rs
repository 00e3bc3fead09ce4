//! Task log lines: plugin `log` calls, captured guest stdout/stderr and host notes
//! (refused HTTP requests, limits hit), bounded per line by `max_log_line_bytes` and per
//! attempt by `max_log_lines` and `max_log_bytes`.

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

/// The bounds of one attempt's log (from its [`crate::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogCaps {
    pub(crate) max_bytes: u64,
    pub(crate) max_lines: u32,
    pub(crate) max_line_bytes: u64,
}

impl LogCaps {
    pub(crate) fn of(limits: &crate::Limits) -> LogCaps {
        LogCaps {
            max_bytes: limits.max_log_bytes,
            max_lines: limits.max_log_lines,
            max_line_bytes: limits.max_log_line_bytes,
        }
    }
}

fn line_size(line: &LogLine) -> u64 {
    let fields: usize = line.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    (line.message.len() + fields) as u64
}

/// Cuts `s` to at most `max` bytes, on a char boundary.
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// Truncates a line longer than `max` bytes (message first, then fields in order) and
/// marks it.
fn cap_line(line: &mut LogLine, max: u64) {
    let size = line_size(line);
    if size <= max {
        return;
    }
    let mut room = usize::try_from(max).unwrap_or(usize::MAX);
    cut(&mut line.message, room);
    room -= line.message.len();
    let mut kept = Vec::new();
    for (mut k, mut v) in std::mem::take(&mut line.fields) {
        if room == 0 {
            break;
        }
        cut(&mut k, room);
        room -= k.len();
        cut(&mut v, room);
        room -= v.len();
        kept.push((k, v));
    }
    line.fields = kept;
    line.message.push_str(&format!(
        " … [line of {size} bytes truncated to max_log_line_bytes ({max})]"
    ));
}

/// Log lines of one attempt, bounded in line size, line count and total bytes. Lines past
/// a bound are dropped and counted.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    lines: Vec<LogLine>,
    bytes: u64,
    caps: LogCaps,
    dropped: u64,
    dropped_for_lines: bool,
    dropped_for_bytes: bool,
}

impl LogBuffer {
    pub(crate) fn new(caps: LogCaps) -> Self {
        LogBuffer {
            lines: Vec::new(),
            bytes: 0,
            caps,
            dropped: 0,
            dropped_for_lines: false,
            dropped_for_bytes: false,
        }
    }

    pub(crate) fn caps(&self) -> LogCaps {
        self.caps
    }

    /// Lines dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Keeps `line` (truncated to `max_line_bytes`) if the attempt's log has room for it,
    /// and returns it as kept; `None` when it was dropped.
    pub(crate) fn push(&mut self, mut line: LogLine) -> Option<&LogLine> {
        cap_line(&mut line, self.caps.max_line_bytes);
        let size = line_size(&line);
        if self.lines.len() as u64 >= u64::from(self.caps.max_lines) {
            self.dropped += 1;
            self.dropped_for_lines = true;
            return None;
        }
        if self.bytes.saturating_add(size) > self.caps.max_bytes {
            self.dropped += 1;
            self.dropped_for_bytes = true;
            return None;
        }
        self.bytes += size;
        self.lines.push(line);
        self.lines.last()
    }

    /// The lines, with one closing note when some were dropped.
    pub(crate) fn finish(mut self) -> Vec<LogLine> {
        if self.dropped > 0 {
            let mut reached = Vec::new();
            if self.dropped_for_lines {
                reached.push(format!("max_log_lines ({})", self.caps.max_lines));
            }
            if self.dropped_for_bytes {
                reached.push(format!("max_log_bytes ({} bytes)", self.caps.max_bytes));
            }
            self.lines.push(LogLine {
                at_ms: now_ms(),
                level: LogLevel::Warn,
                source: LogSource::Host,
                message: format!(
                    "{} log line(s) dropped: the attempt's log reached {}",
                    self.dropped,
                    reached.join(" and ")
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

    /// Empties the buffer for the next task of a reused instance.
    pub(crate) fn reset(&self) {
        let mut c = match self.inner.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        c.buf.clear();
        c.truncated = false;
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

    fn caps(max_bytes: u64, max_lines: u32, max_line_bytes: u64) -> LogCaps {
        LogCaps {
            max_bytes,
            max_lines,
            max_line_bytes,
        }
    }

    fn line(message: &str, fields: &[(&str, &str)]) -> LogLine {
        LogLine {
            at_ms: 0,
            level: LogLevel::Info,
            source: LogSource::Plugin,
            message: message.to_string(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn log_buffer_is_bounded_in_bytes_and_says_so() {
        let mut b = LogBuffer::new(caps(10, 100, 100));
        for i in 0..5 {
            b.push(line(&format!("msg{i}"), &[]));
        }
        let lines = b.finish();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[2].message,
            "3 log line(s) dropped: the attempt's log reached max_log_bytes (10 bytes)"
        );
    }

    #[test]
    fn log_buffer_is_bounded_in_lines_and_says_so_once() {
        let mut b = LogBuffer::new(caps(1 << 20, 3, 100));
        for i in 0..10 {
            let kept = b.push(line(&format!("m{i}"), &[])).is_some();
            assert_eq!(kept, i < 3);
        }
        assert_eq!(b.dropped(), 7);
        let lines = b.finish();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[3].message,
            "7 log line(s) dropped: the attempt's log reached max_log_lines (3)"
        );
    }

    #[test]
    fn long_lines_are_truncated_with_a_marker() {
        let mut b = LogBuffer::new(caps(1 << 20, 100, 8));
        let kept = b
            .push(line("héllo world", &[("key", "value"), ("other", "x")]))
            .expect("kept")
            .clone();
        assert_eq!(
            kept.message,
            "héllo w … [line of 26 bytes truncated to max_log_line_bytes (8)]"
        );
        assert!(kept.fields.is_empty(), "{:?}", kept.fields);
        let kept = b
            .push(line("ab", &[("key", "value"), ("other", "x")]))
            .expect("kept")
            .clone();
        assert_eq!(kept.fields, [("key".to_string(), "val".to_string())]);
        assert!(kept.message.starts_with("ab … [line of 16 bytes"));
        let short = b.push(line("ok", &[("k", "v")])).expect("kept").clone();
        assert_eq!(short, line("ok", &[("k", "v")]), "short lines untouched");
    }

    #[test]
    fn capture_pipe_truncates() {
        let p = CapturePipe::new(4);
        p.append(b"ab");
        p.append(b"cdef");
        assert_eq!(p.contents(), ("abcd".to_string(), true));
    }
}
