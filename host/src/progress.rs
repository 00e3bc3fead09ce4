//! Progress of long CLI work on stderr (`kairos task add --file`, the `kairos-bench`
//! scenarios). On a terminal: one line redrawn in place with `\r`, at most 10 times a second.
//! Otherwise (a pipe, a log file): a plain line every ~2 s or every 10 batches, whichever
//! comes first, and a last one at the end.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Least time between two redraws on a terminal.
const REDRAW: Duration = Duration::from_millis(100);
/// Most time between two lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);
/// Most batches between two lines when stderr is not a terminal.
const LINE_BATCHES: u32 = 10;
/// Width of the bar on a terminal.
const BAR: usize = 24;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Redrawn in place (stderr is a terminal).
    Tty,
    /// A line every ~2 s or 10 batches.
    Lines,
    /// Nothing.
    Hidden,
}

impl Mode {
    /// `Tty` when stderr is a terminal, else `Lines`.
    pub fn for_stderr() -> Mode {
        if std::io::stderr().is_terminal() {
            Mode::Tty
        } else {
            Mode::Lines
        }
    }
}

/// One progress display: `LABEL: DONE/TOTAL UNIT (P%), RATE RATE_UNIT/s`.
pub struct Progress {
    label: String,
    unit: &'static str,
    rate_unit: &'static str,
    total: Option<u64>,
    mode: Mode,
    out: Box<dyn Write + Send>,
    started: Instant,
    /// The position at the start (`--skip-lines`): the rate counts from there.
    start_done: u64,
    done: u64,
    /// What the rate counts, when not the position (the import: tasks sent, not lines read).
    items: Option<u64>,
    /// When the display last changed (drawn or a line printed).
    last_shown: Option<Instant>,
    batches_since_line: u32,
    /// The position last shown (a finished run does not repeat its last line).
    shown_done: Option<u64>,
    /// A bar is on the terminal's current line.
    drawn: bool,
    finished: bool,
}

impl Progress {
    /// Progress on stderr, its [`Mode`] chosen by whether stderr is a terminal.
    pub fn new(label: impl Into<String>, total: Option<u64>, unit: &'static str) -> Progress {
        Progress::to(
            Box::new(std::io::stderr()),
            Mode::for_stderr(),
            label,
            total,
            unit,
        )
    }

    /// Progress written to `out` in `mode` (tests).
    pub fn to(
        out: Box<dyn Write + Send>,
        mode: Mode,
        label: impl Into<String>,
        total: Option<u64>,
        unit: &'static str,
    ) -> Progress {
        Progress {
            label: label.into(),
            unit,
            rate_unit: unit,
            total,
            mode,
            out,
            started: Instant::now(),
            start_done: 0,
            done: 0,
            items: None,
            last_shown: None,
            batches_since_line: 0,
            shown_done: None,
            drawn: false,
            finished: false,
        }
    }

    /// The rate counts `set_items` in `unit`s per second instead of the position.
    pub fn rate_of(mut self, unit: &'static str) -> Progress {
        self.rate_unit = unit;
        self.items = Some(0);
        self
    }

    /// Starts at `done` (work done before this run); the rate counts from there.
    pub fn starting_at(mut self, done: u64) -> Progress {
        self.start_done = done;
        self.done = done;
        self
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Moves to `done`; shows it if it is time.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        self.show(Instant::now(), false);
    }

    /// Adds `n` to the position.
    pub fn inc(&mut self, n: u64) {
        self.set(self.done + n);
    }

    /// Sets what the rate counts (after [`Progress::rate_of`]).
    pub fn set_items(&mut self, items: u64) {
        self.items = Some(items);
    }

    /// One more batch done at position `done`: without a terminal, every tenth prints a line.
    pub fn batch(&mut self, done: u64) {
        self.done = done;
        self.batches_since_line += 1;
        self.show(Instant::now(), false);
    }

    /// Erases the bar from the terminal (before printing something else there); the next
    /// update draws it again.
    pub fn clear(&mut self) {
        if self.drawn {
            let _ = write!(self.out, "\r\x1b[K");
            let _ = self.out.flush();
            self.drawn = false;
            self.last_shown = None;
        }
    }

    /// Shows the final state (on a terminal: the bar stays, and the line ends).
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.show(Instant::now(), true);
        if self.mode == Mode::Tty && self.drawn {
            let _ = writeln!(self.out);
            let _ = self.out.flush();
            self.drawn = false;
        }
    }

    fn show(&mut self, now: Instant, last: bool) {
        if self.finished && !last {
            return;
        }
        match self.mode {
            Mode::Hidden => {}
            Mode::Tty => {
                if last || self.last_shown.is_none_or(|t| now - t >= REDRAW) {
                    let line = self.text(now, true);
                    let _ = write!(self.out, "\r{line}\x1b[K");
                    let _ = self.out.flush();
                    self.drawn = true;
                    self.last_shown = Some(now);
                }
            }
            Mode::Lines => {
                let since = self.last_shown.unwrap_or(self.started);
                let end = last && self.shown_done != Some(self.done);
                if end || now - since >= LINE_EVERY || self.batches_since_line >= LINE_BATCHES {
                    let line = self.text(now, false);
                    let _ = writeln!(self.out, "{line}");
                    let _ = self.out.flush();
                    self.shown_done = Some(self.done);
                    self.last_shown = Some(now);
                    self.batches_since_line = 0;
                }
            }
        }
    }

    /// `LABEL [#####-----] DONE/TOTAL UNIT P%  RATE/s` (with `bar`), else
    /// `LABEL: DONE/TOTAL UNIT (P%), RATE/s, ELAPSED s`.
    fn text(&self, now: Instant, bar: bool) -> String {
        let secs = (now - self.started).as_secs_f64();
        let counted = self
            .items
            .unwrap_or(self.done.saturating_sub(self.start_done));
        let rate = if secs > 0.0 {
            counted as f64 / secs
        } else {
            0.0
        };
        let rate = format!("{rate:.0} {}/s", self.rate_unit);
        let label = &self.label;
        let (done, unit) = (self.done, self.unit);
        match (self.total, bar) {
            (Some(total), true) => {
                let frac = fraction(done, total);
                let filled = ((frac * BAR as f64).round() as usize).min(BAR);
                format!(
                    "{label} [{}{}] {done}/{total} {unit} {:>3.0}%  {rate}",
                    "#".repeat(filled),
                    "-".repeat(BAR - filled),
                    frac * 100.0
                )
            }
            (Some(total), false) => format!(
                "{label}: {done}/{total} {unit} ({:.0}%), {rate}, {secs:.1} s",
                fraction(done, total) * 100.0
            ),
            (None, true) => format!("{label} {done} {unit}  {rate}"),
            (None, false) => format!("{label}: {done} {unit}, {rate}, {secs:.1} s"),
        }
    }
}

fn fraction(done: u64, total: u64) -> f64 {
    if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    }
}

impl Drop for Progress {
    /// A bar left on the terminal gets its line ended, so what follows starts on a new one.
    fn drop(&mut self) {
        if self.mode == Mode::Tty && self.drawn {
            let _ = writeln!(self.out);
            let _ = self.out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
        }
    }

    #[test]
    fn a_terminal_gets_one_line_redrawn_at_most_ten_times_a_second() {
        let buf = Buf::default();
        let mut p = Progress::to(
            Box::new(buf.clone()),
            Mode::Tty,
            "import",
            Some(100),
            "lines",
        );
        let t0 = p.started;
        for i in 0..=50u64 {
            p.done = i;
            // 51 updates over 500 ms.
            p.show(t0 + Duration::from_millis(i * 10), false);
        }
        let text = buf.text();
        let draws = text.matches('\r').count();
        assert!((5..=6).contains(&draws), "{draws} draws: {text:?}");
        assert!(!text.contains('\n'), "{text:?}");
        p.done = 100;
        p.finish();
        let text = buf.text();
        assert!(
            text.contains("\rimport [########################] 100/100 lines 100%  "),
            "{text:?}"
        );
        assert!(text.ends_with(" lines/s\x1b[K\n"), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
    }

    #[test]
    fn without_a_terminal_a_line_every_ten_batches_or_two_seconds_and_at_the_end() {
        let buf = Buf::default();
        let mut p = Progress::to(
            Box::new(buf.clone()),
            Mode::Lines,
            "import",
            Some(1000),
            "lines",
        )
        .rate_of("tasks");
        for b in 1..=25u64 {
            p.set_items(b * 10);
            p.batch(b * 10);
        }
        let text = buf.text();
        assert_eq!(text.lines().count(), 2, "{text:?}");
        assert!(
            text.lines()
                .next()
                .unwrap_or("")
                .starts_with("import: 100/1000 lines (10%), "),
            "{text:?}"
        );
        assert!(!text.contains('\r'), "{text:?}");
        // Time alone: a line 2 s after the last one.
        let t = p.last_shown.expect("shown");
        p.done = 260;
        p.show(t + Duration::from_millis(1_900), false);
        assert_eq!(buf.text().lines().count(), 2);
        p.show(t + Duration::from_millis(2_100), false);
        assert_eq!(buf.text().lines().count(), 3);
        p.done = 1000;
        p.batch(1000);
        assert_eq!(buf.text().lines().count(), 3, "not the 10th batch yet");
        p.finish();
        p.finish();
        let text = buf.text();
        assert_eq!(text.lines().count(), 4, "{text:?}");
        assert!(
            text.lines()
                .last()
                .unwrap_or("")
                .starts_with("import: 1000/1000 lines (100%), "),
            "{text:?}"
        );
        assert!(text.contains("tasks/s"), "{text:?}");
    }

    #[test]
    fn hidden_shows_nothing_and_an_unknown_total_shows_the_count() {
        let buf = Buf::default();
        let mut p = Progress::to(Box::new(buf.clone()), Mode::Hidden, "x", Some(3), "tasks");
        p.inc(3);
        p.finish();
        assert_eq!(buf.text(), "");
        let mut p = Progress::to(Box::new(buf.clone()), Mode::Lines, "import", None, "lines")
            .starting_at(40);
        p.inc(2);
        p.finish();
        assert!(
            buf.text().starts_with("import: 42 lines, "),
            "{:?}",
            buf.text()
        );
        // The last line is not repeated by `finish`.
        let buf = Buf::default();
        let mut p = Progress::to(Box::new(buf.clone()), Mode::Lines, "x", Some(10), "tasks");
        for i in 1..=10 {
            p.batch(i);
        }
        p.finish();
        assert_eq!(buf.text().lines().count(), 1, "{:?}", buf.text());
    }
}
