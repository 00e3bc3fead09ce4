//! `kairos task add --file FILE`: bulk import of a JSON Lines file through
//! `POST /v1/tasks/batch`, with progress on stderr and a summary at the end.
//!
//! - A line that is not a JSON object is rejected here, with its number and the parse error,
//!   and never sent.
//! - A batch the server refuses naming a task (`"index": N`) loses that line (rejected, with
//!   the server's message) and the rest is sent again. A refusal naming none (too large, too
//!   many tasks) splits the batch in halves, down to single tasks.
//! - Transient failures (429, 5xx, connection errors) are retried with a short backoff a few
//!   times; then the import stops, saying what was accepted and from which line to resume.
//! - Nothing is imported twice on a resend: a batch the server refused was not stored (it is
//!   validated whole, then made durable in one commit), and every task without a
//!   `uniqueness_key` gets `import:ID:LINE`, so a batch whose answer was lost after the server
//!   stored it comes back, when retried, as duplicates of this import's own tasks (counted as
//!   accepted). A resumed import (`--skip-lines N --import-id ID`) counts lines the stopped
//!   one had stored as duplicates.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::cli::ServerArg;
use crate::progress::Progress;

/// Tasks per batch unless `--batch-size` says otherwise.
pub const DEFAULT_BATCH: u64 = 500;
/// Waits before the retries of a transiently failed batch (then the import stops).
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];
/// Rejected lines listed in the summary (the rest are counted).
const LISTED: usize = 50;

pub struct ImportArgs {
    /// A path, or `-` for stdin.
    pub file: String,
    pub batch_size: u64,
    pub skip_lines: u64,
    pub import_id: Option<String>,
    pub server: ServerArg,
}

/// One line on its way to the server.
struct Entry {
    line: u64,
    /// The task's JSON, as sent.
    json: String,
    /// Its uniqueness key is ours (`import:ID:LINE`): a duplicate is this import's own task.
    own_key: bool,
}

/// What the server said to one batch.
enum Answer {
    /// One `duplicate` flag per task, in order.
    Stored {
        dups: Vec<bool>,
        /// After a transient failure: the batch may have been stored by the earlier try.
        retried: bool,
    },
    /// 400/413/422: the batch was refused (nothing of it stored), naming a task or not.
    Refused {
        index: Option<usize>,
        message: String,
    },
    /// Worth trying again (429, 5xx, no connection).
    Transient(String),
    /// Will not get better by retrying (401, 403, 404, a malformed answer, …).
    Fatal(String),
}

/// The import could not go on.
struct Stop {
    reason: String,
    /// Every line before this one is done (imported or rejected).
    first_undone: u64,
}

#[derive(Default)]
struct Tally {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    /// The first [`LISTED`] rejected lines, in line order.
    listed: Vec<(u64, String)>,
}

impl Tally {
    fn reject(&mut self, rejects: &mut Vec<(u64, String)>) {
        rejects.sort_by_key(|(line, _)| *line);
        for r in rejects.drain(..) {
            self.rejected += 1;
            if self.listed.len() < LISTED {
                self.listed.push(r);
            }
        }
    }
}

struct Importer {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
    /// Most tasks per request: `--batch-size`, halved when the server finds a batch too large.
    cap: usize,
    tally: Tally,
    /// Rejections of the lines of the batch in hand (committed to the tally once it is done).
    rejects: Vec<(u64, String)>,
    progress: Progress,
}

/// Runs the import; prints the summary; the exit status is 0 (all imported), 1 (some lines
/// rejected) or 2 (stopped early, or could not start).
pub fn run(args: ImportArgs) -> ExitCode {
    match import(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn import(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let (input, total): (Box<dyn BufRead>, Option<u64>) = if args.file == "-" {
        (Box::new(BufReader::new(std::io::stdin())), None)
    } else {
        let open = || {
            std::fs::File::open(&args.file)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", args.file))
        };
        let total =
            count_lines(open()?).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file))?;
        (Box::new(BufReader::new(open()?)), Some(total))
    };
    let id = match &args.import_id {
        Some(id) => id.clone(),
        None => uuid::Uuid::now_v7().simple().to_string(),
    };
    let agent = crate::client::agent_builder(&args.server)?
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(300))
        .build();
    let progress = Progress::new("import", total, "lines")
        .rate_of("tasks")
        .starting_at(args.skip_lines.min(total.unwrap_or(u64::MAX)));
    let mut imp = Importer {
        agent,
        url: format!(
            "{}/v1/tasks/batch",
            args.server.server.trim_end_matches('/')
        ),
        token: args.server.token.clone(),
        cap: usize::try_from(args.batch_size)
            .unwrap_or(usize::MAX)
            .max(1),
        tally: Tally::default(),
        rejects: Vec::new(),
        progress,
    };
    let stop = imp.read_and_send(input, args.skip_lines, &id);
    imp.progress.finish();
    let out = &mut std::io::stdout().lock();
    let t = &imp.tally;
    writeln!(
        out,
        "accepted {}, duplicates {}, rejected {}",
        t.accepted, t.duplicates, t.rejected
    )?;
    for (line, reason) in &t.listed {
        writeln!(out, "line {line}: {reason}")?;
    }
    if t.rejected > t.listed.len() as u64 {
        writeln!(out, "… and {} more", t.rejected - t.listed.len() as u64)?;
    }
    match stop {
        Ok(()) if t.rejected == 0 => Ok(ExitCode::SUCCESS),
        Ok(()) => Ok(ExitCode::from(1)),
        Err(stop) => {
            let skip = stop.first_undone.saturating_sub(1);
            writeln!(
                out,
                "stopped at line {}: {}",
                stop.first_undone, stop.reason
            )?;
            let done = match skip {
                0 => "no line is done".to_string(),
                n => format!("lines 1 to {n} are done"),
            };
            writeln!(
                out,
                "{done}; resume with: --file {} --skip-lines {skip} --import-id {id}",
                args.file
            )?;
            eprintln!(
                "error: import stopped at line {}: {}",
                stop.first_undone, stop.reason
            );
            Ok(ExitCode::from(2))
        }
    }
}

/// Lines in a file (a last line without a newline counts).
fn count_lines(mut f: impl Read) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut n, mut last) = (0u64, b'\n');
    loop {
        let got = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        n += buf[..got].iter().filter(|b| **b == b'\n').count() as u64;
        last = buf[got - 1];
    }
    Ok(n + u64::from(last != b'\n'))
}

/// A line made ready to send: the task's JSON (with `import:ID:LINE` as its uniqueness key
/// when it has none), or why it is rejected.
fn prepare(line: u64, raw: &[u8], id: &str) -> Result<Entry, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    // Each value is kept as written (numbers are not rounded through f64).
    let mut fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                "not a JSON object (one task per line, like the body of POST /v1/tasks)".to_string()
            }
            _ => format!("invalid JSON: {}", without_position(&e)),
        })?;
    let has_key = fields
        .get("uniqueness_key")
        .is_some_and(|v| v.get() != "null");
    if has_key {
        return Ok(Entry {
            line,
            json: text.to_string(),
            own_key: false,
        });
    }
    let key = serde_json::to_string(&format!("import:{id}:{line}")).map_err(|e| e.to_string())?;
    fields.insert(
        "uniqueness_key".into(),
        RawValue::from_string(key).map_err(|e| e.to_string())?,
    );
    Ok(Entry {
        line,
        json: serde_json::to_string(&fields).map_err(|e| e.to_string())?,
        own_key: true,
    })
}

/// serde_json's message with "at line 1 column N" said as "at column N".
fn without_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(at) => format!("{} at column {}", &msg[..at], e.column()),
        None => msg,
    }
}

#[derive(Deserialize)]
struct Accepted {
    duplicate: bool,
}

impl Importer {
    fn read_and_send(
        &mut self,
        mut input: Box<dyn BufRead>,
        skip: u64,
        id: &str,
    ) -> Result<(), Stop> {
        let mut line = 0u64;
        let mut raw = Vec::new();
        let mut batch = Vec::new();
        loop {
            raw.clear();
            match input.read_until(b'\n', &mut raw) {
                Ok(0) => {
                    self.send(std::mem::take(&mut batch))?;
                    self.progress.batch(line);
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => {
                    // What was read so far is sent; the rest is for a resumed run.
                    self.send(std::mem::take(&mut batch))?;
                    return Err(Stop {
                        reason: format!("cannot read the input: {e}"),
                        first_undone: line + 1,
                    });
                }
            }
            line += 1;
            if line <= skip {
                continue;
            }
            let trimmed = raw.trim_ascii();
            if !trimmed.is_empty() {
                match prepare(line, trimmed, id) {
                    Ok(e) => batch.push(e),
                    Err(reason) => self.rejects.push((line, reason)),
                }
            }
            if batch.len() >= self.cap {
                self.send(std::mem::take(&mut batch))?;
                self.progress.batch(line);
            }
        }
    }

    /// Sends `batch` (and commits the rejections in hand), resending what the server did not
    /// refuse until every line is stored or rejected.
    fn send(&mut self, batch: Vec<Entry>) -> Result<(), Stop> {
        let mut queue = VecDeque::from([batch]);
        while let Some(mut batch) = queue.pop_front() {
            if batch.is_empty() {
                continue;
            }
            if batch.len() > self.cap {
                // Queued before the server said smaller.
                queue.push_front(batch.split_off(self.cap));
            }
            match self.post_with_retries(&batch) {
                Ok(Answer::Stored { dups, retried }) => {
                    for (e, dup) in batch.iter().zip(dups) {
                        // This import's own key again, after a try whose answer was lost:
                        // that try stored it. (Without a retry, a resumed import found it
                        // stored by the stopped one: a duplicate.)
                        if dup && !(e.own_key && retried) {
                            self.tally.duplicates += 1;
                        } else {
                            self.tally.accepted += 1;
                        }
                    }
                    self.progress
                        .set_items(self.tally.accepted + self.tally.duplicates);
                }
                Ok(Answer::Refused {
                    index: Some(i),
                    message,
                }) if i < batch.len() => {
                    let e = batch.remove(i);
                    let prefix = format!("task [{i}]: ");
                    let reason = message.strip_prefix(&prefix).unwrap_or(&message);
                    self.rejects.push((e.line, reason.to_string()));
                    queue.push_front(batch);
                }
                Ok(Answer::Refused { .. }) if batch.len() > 1 => {
                    // Not about one task but the batch as a whole (too many tasks, too many
                    // bytes): halves, and smaller batches from now on.
                    let tail = batch.split_off(batch.len() / 2);
                    self.cap = self.cap.min(batch.len());
                    queue.push_front(tail);
                    queue.push_front(batch);
                }
                Ok(Answer::Refused { message, .. }) => {
                    self.rejects.push((batch[0].line, message));
                }
                Ok(Answer::Transient(reason) | Answer::Fatal(reason)) | Err(reason) => {
                    // Lines from this one on are for a resumed run (their rejections too).
                    let first_undone = batch[0].line;
                    let (mut done, _later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rejects)
                        .into_iter()
                        .partition(|(line, _)| *line < first_undone);
                    self.tally.reject(&mut done);
                    return Err(Stop {
                        reason,
                        first_undone,
                    });
                }
            }
        }
        let mut rejects = std::mem::take(&mut self.rejects);
        self.tally.reject(&mut rejects);
        Ok(())
    }

    /// Posts a batch; retries transient failures with a backoff, then gives up with the last
    /// one (`Err`).
    fn post_with_retries(&mut self, batch: &[Entry]) -> Result<Answer, String> {
        let mut tries = 0;
        loop {
            match self.post(batch) {
                Answer::Transient(reason) => {
                    let Some(wait) = BACKOFF.get(tries) else {
                        return Err(format!("{reason} (tried {} times)", tries + 1));
                    };
                    tries += 1;
                    self.progress.clear();
                    eprintln!(
                        "import: {reason}; trying again in {:.2} s ({tries} of {})",
                        wait.as_secs_f64(),
                        BACKOFF.len()
                    );
                    std::thread::sleep(*wait);
                }
                Answer::Stored { dups, .. } => {
                    return Ok(Answer::Stored {
                        dups,
                        retried: tries > 0,
                    });
                }
                answer => return Ok(answer),
            }
        }
    }

    fn post(&self, batch: &[Entry]) -> Answer {
        let mut body =
            String::with_capacity(batch.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&e.json);
        }
        body.push(']');
        let mut req = self
            .agent
            .post(&self.url)
            .set("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.set("authorization", &format!("Bearer {t}"));
        }
        match req.send_string(&body) {
            Ok(r) => match r.into_json::<Vec<Accepted>>() {
                Ok(v) if v.len() == batch.len() => Answer::Stored {
                    dups: v.into_iter().map(|a| a.duplicate).collect(),
                    retried: false,
                },
                Ok(v) => Answer::Fatal(format!(
                    "the server answered {} results for {} tasks",
                    v.len(),
                    batch.len()
                )),
                // The tasks may be stored: a resend finds them by their uniqueness keys.
                Err(e) => Answer::Transient(format!("cannot read the server's answer: {e}")),
            },
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let v: Option<Value> = serde_json::from_str(&text).ok();
                let message = v
                    .as_ref()
                    .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                    .unwrap_or(text);
                // `"index"`, or (from a server without it) the message's `task [N]: `.
                let index = v
                    .as_ref()
                    .and_then(|v| v.get("index")?.as_u64())
                    .and_then(|i| usize::try_from(i).ok())
                    .or_else(|| {
                        let rest = message.strip_prefix("task [")?;
                        rest[..rest.find("]: ")?].parse().ok()
                    });
                match code {
                    400 | 413 | 422 => Answer::Refused { index, message },
                    429 | 500..=599 => {
                        Answer::Transient(format!("server answered {code}: {message}"))
                    }
                    _ => Answer::Fatal(format!("server answered {code}: {message}")),
                }
            }
            // ureq's message names the URL.
            Err(e) => Answer::Transient(format!("cannot reach the server: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_with_or_without_a_last_newline() {
        assert_eq!(count_lines(&b""[..]).ok(), Some(0));
        assert_eq!(count_lines(&b"a\nb\n"[..]).ok(), Some(2));
        assert_eq!(count_lines(&b"a\nb"[..]).ok(), Some(2));
        assert_eq!(count_lines(&b"\n\n"[..]).ok(), Some(2));
    }

    #[test]
    fn a_line_keeps_its_values_and_gets_a_key_only_without_one() {
        let e = prepare(
            7,
            br#"{"plugin":"p","key":"k","payload":{"n":12345678901234567890123}}"#,
            "R",
        )
        .expect("a task");
        assert!(e.own_key);
        assert!(
            e.json.contains(r#""n":12345678901234567890123"#),
            "{}",
            e.json
        );
        let v: Value = serde_json::from_str(&e.json).expect("JSON");
        assert_eq!(v["uniqueness_key"], "import:R:7");
        let e = prepare(
            7,
            br#"{"plugin":"p","key":"k","uniqueness_key":"mine"}"#,
            "R",
        )
        .expect("a task");
        assert!(!e.own_key);
        assert_eq!(
            e.json,
            r#"{"plugin":"p","key":"k","uniqueness_key":"mine"}"#
        );
        let e =
            prepare(7, br#"{"plugin":"p","key":"k","uniqueness_key":null}"#, "R").expect("a task");
        assert!(
            e.own_key && e.json.contains(r#""uniqueness_key":"import:R:7""#),
            "{}",
            e.json
        );
        let err = |raw: &[u8]| prepare(1, raw, "R").err().unwrap_or_default();
        assert!(
            err(b"[1]").starts_with("not a JSON object"),
            "{}",
            err(b"[1]")
        );
        assert!(err(b"42").starts_with("not a JSON object"));
        assert_eq!(
            err(br#"{"plugin": "#),
            "invalid JSON: EOF while parsing a value at column 11"
        );
        assert!(err(b"{\"a\": \"\xff\"}").starts_with("not UTF-8"));
    }
}
