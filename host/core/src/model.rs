//! The task model shared by every backend, the scheduler and the API.
//!
//! Times are Unix epoch milliseconds (`i64`) everywhere inside Kairos; the API converts to and
//! from RFC 3339.

use serde::{Deserialize, Serialize};

/// Unix epoch milliseconds.
pub type Millis = i64;

/// A task's life cycle.
///
/// `Scheduled` → `Running` → `Succeeded`, or → `Retrying` → `Running` … → `Dead` after the last
/// attempt. `Cancelled` is reachable from `Scheduled` and `Retrying` (and from `Dead` when the
/// task parked its key). `Dead` tasks can be sent back to `Scheduled` by an operator (retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Scheduled,
    Running,
    Retrying,
    Succeeded,
    Dead,
    Cancelled,
}

impl TaskState {
    /// Finished tasks never run again unless an operator retries a dead one.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// Every state, in life-cycle order.
    pub const ALL: [TaskState; 6] = [
        Self::Scheduled,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Dead,
        Self::Cancelled,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "scheduled" => Self::Scheduled,
            "running" => Self::Running,
            "retrying" => Self::Retrying,
            "succeeded" => Self::Succeeded,
            "dead" => Self::Dead,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// How many stored tasks are in each state (see [`TaskStore::state_counts`]).
///
/// [`TaskStore::state_counts`]: crate::store::TaskStore::state_counts
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub scheduled: u64,
    pub running: u64,
    pub retrying: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
}

impl StateCounts {
    /// The count of `state`.
    pub fn get(&self, state: TaskState) -> u64 {
        match state {
            TaskState::Scheduled => self.scheduled,
            TaskState::Running => self.running,
            TaskState::Retrying => self.retrying,
            TaskState::Succeeded => self.succeeded,
            TaskState::Dead => self.dead,
            TaskState::Cancelled => self.cancelled,
        }
    }

    fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Scheduled => &mut self.scheduled,
            TaskState::Running => &mut self.running,
            TaskState::Retrying => &mut self.retrying,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Dead => &mut self.dead,
            TaskState::Cancelled => &mut self.cancelled,
        }
    }

    /// Sets the count of `state`.
    pub fn set(&mut self, state: TaskState, count: u64) {
        *self.slot(state) = count;
    }

    /// Adds `delta` (negative: removes) to the count of `state`, saturating at 0 and
    /// `u64::MAX`.
    pub fn add(&mut self, state: TaskState, delta: i64) {
        let slot = self.slot(state);
        *slot = slot.saturating_add_signed(delta);
    }

    /// Tasks in any state.
    pub fn total(&self) -> u64 {
        TaskState::ALL
            .iter()
            .fold(0u64, |sum, s| sum.saturating_add(self.get(*s)))
    }
}

/// Exponential backoff with full jitter between `initial_ms` and `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            max_ms: 120_000,
        }
    }
}

impl Backoff {
    /// Upper bound of the delay before attempt `next_attempt` (2-based: the first retry is
    /// attempt 2). The scheduler draws the actual delay uniformly from `[cap/2, cap]`.
    pub fn cap_ms(&self, next_attempt: u32) -> u64 {
        let exp = next_attempt.saturating_sub(2).min(32);
        self.initial_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_ms.max(self.initial_ms))
    }
}

/// What a client asks for. Validation (plugin exists, payload size, …) happens before this is
/// built; the store only persists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    /// Assigned by the caller (UUID v7 string) so a producer can answer before the store does.
    pub id: String,
    pub partition: u32,
    pub plugin: String,
    /// A pinned plugin version (sha256 digest, hex); `None` runs the current version.
    pub pin_version: Option<String>,
    pub key: String,
    pub due_at: Millis,
    /// The payload as JSON text (already validated to be JSON).
    pub payload: String,
    pub uniqueness_key: Option<String>,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// When the last attempt fails, keep the key parked (blocked) until an operator acts,
    /// instead of letting the next task of the key run.
    pub park_on_dead: bool,
    /// 0 for a task enqueued through the API or a schedule; a plugin's follow-up is one more
    /// than the task that scheduled it (capped by `tasks.max_follow_up_depth`).
    #[serde(default)]
    pub generation: u32,
    pub created_at: Millis,
}

/// A persisted task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub partition: u32,
    /// Enqueue sequence, assigned by the store, strictly increasing across the whole store.
    /// Tasks of one key run in `(due_at, seq)` order.
    pub seq: u64,
    pub plugin: String,
    pub pin_version: Option<String>,
    pub key: String,
    /// When the task is due (its ordering position). Changed only by a reschedule.
    pub due_at: Millis,
    /// When it may next start: `due_at` at first, later the retry time after backoff.
    pub next_at: Millis,
    pub payload: String,
    pub uniqueness_key: Option<String>,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub park_on_dead: bool,
    /// See [`NewTask::generation`].
    #[serde(default)]
    pub generation: u32,
    pub state: TaskState,
    /// Attempts started so far (durable: survives restarts and rebalances).
    pub attempts: u32,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub last_error: Option<String>,
    /// The plugin's output of the successful attempt.
    pub output: Option<String>,
}

impl Task {
    pub fn from_new(t: NewTask, seq: u64) -> Self {
        Self {
            id: t.id,
            partition: t.partition,
            seq,
            plugin: t.plugin,
            pin_version: t.pin_version,
            key: t.key,
            due_at: t.due_at,
            next_at: t.due_at,
            payload: t.payload,
            uniqueness_key: t.uniqueness_key,
            max_attempts: t.max_attempts,
            backoff: t.backoff,
            park_on_dead: t.park_on_dead,
            generation: t.generation,
            state: TaskState::Scheduled,
            attempts: 0,
            created_at: t.created_at,
            updated_at: t.created_at,
            last_error: None,
            output: None,
        }
    }

    /// Ordering position within its key (and within its partition's window).
    pub fn order(&self) -> OrderPos {
        OrderPos {
            due_at: self.due_at,
            seq: self.seq,
        }
    }

    /// Gives back the recorded start of attempt `attempt`, which never ran: the task returns
    /// to `back_to` (`scheduled` or `retrying`, the state it was started from) with
    /// `attempts = attempt - 1` and `updated_at = at` (its time from before the start), at its
    /// position, due and next times. `Err` (a conflict, with the reason) unless the task is
    /// running attempt `attempt` and `back_to` is one of those two states. Every store gives a
    /// start back through this one function
    /// ([`crate::store::TaskStore::unclaim_attempt`]).
    pub fn apply_unclaim(
        &mut self,
        attempt: u32,
        back_to: TaskState,
        at: Millis,
    ) -> Result<(), String> {
        if !matches!(back_to, TaskState::Scheduled | TaskState::Retrying) {
            return Err(format!(
                "cannot give back the start of task {}: it can go back to scheduled or retrying, not {}",
                self.id,
                back_to.as_str()
            ));
        }
        if self.state != TaskState::Running || self.attempts != attempt || attempt == 0 {
            return Err(format!(
                "cannot give back attempt {attempt} of task {}: it is {} after {} attempts",
                self.id,
                self.state.as_str(),
                self.attempts
            ));
        }
        self.state = back_to;
        self.attempts = attempt - 1;
        self.updated_at = at;
        Ok(())
    }

    /// Applies the end of attempt `attempt` (its number) at `at`: the attempt count only grows,
    /// and the transition sets the state with its output, retry time or error. Every store
    /// records a finished attempt through this one function.
    pub fn apply_finish(&mut self, attempt: u32, transition: &Transition, at: Millis) {
        self.attempts = self.attempts.max(attempt);
        self.updated_at = at;
        match transition {
            Transition::Succeeded { output } => {
                self.state = TaskState::Succeeded;
                self.output = output.clone();
            }
            Transition::Retry { next_at, error } => {
                self.state = TaskState::Retrying;
                self.next_at = *next_at;
                self.last_error = Some(error.clone());
            }
            Transition::Dead { error } => {
                self.state = TaskState::Dead;
                self.last_error = Some(error.clone());
            }
        }
    }

    /// A task the scheduler still has to deal with: not finished, or dead and parking its key.
    pub fn is_pending(&self) -> bool {
        !self.state.is_terminal() || (self.state == TaskState::Dead && self.park_on_dead)
    }

    /// Whether retention may delete it at a cutoff of `before`: finished (not pending) and
    /// last updated before it.
    pub fn expired(&self, before: Millis) -> bool {
        !self.is_pending() && self.updated_at < before
    }
}

/// Position of a task in its partition: `(due_at, seq)`, compared lexicographically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderPos {
    pub due_at: Millis,
    pub seq: u64,
}

impl OrderPos {
    pub const MIN: OrderPos = OrderPos {
        due_at: i64::MIN,
        seq: 0,
    };
    /// The last position at or before `due_at`.
    pub fn end_of(due_at: Millis) -> Self {
        OrderPos {
            due_at,
            seq: u64::MAX,
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    /// The plugin asked for a retry (or the failure is transient: trap, limit, missing plugin).
    Retryable,
    /// The plugin said retrying is pointless.
    Permanent,
}

/// One attempt in a task's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based.
    pub number: u32,
    pub started_at: Millis,
    pub ended_at: Millis,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    /// sha256 of the plugin version that ran it, when one was found.
    pub plugin_digest: Option<String>,
    /// The last lines the plugin logged during the attempt, newline-separated (at most
    /// [`ATTEMPT_LOG_MAX_LINES`] lines and [`ATTEMPT_LOG_MAX_BYTES`] bytes; see [`log_tail`]).
    /// `None` when it logged nothing, or for attempts recorded before logs were kept.
    #[serde(default)]
    pub logs: Option<String>,
}

/// Most lines of an attempt's log kept with the attempt ([`Attempt::logs`]).
pub const ATTEMPT_LOG_MAX_LINES: usize = 20;
/// Most bytes of an attempt's log kept with the attempt ([`Attempt::logs`]).
pub const ATTEMPT_LOG_MAX_BYTES: usize = 2048;

/// The tail of a log for [`Attempt::logs`]: the last [`ATTEMPT_LOG_MAX_LINES`] lines joined
/// by `\n`, then, if that is longer than [`ATTEMPT_LOG_MAX_BYTES`], only its last bytes (cut
/// at a character boundary, so the first line kept may be partial). An item holding line
/// breaks counts as that many lines; an empty item adds none. `None` when no line is left.
pub fn log_tail<I, S>(lines: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut kept = std::collections::VecDeque::with_capacity(ATTEMPT_LOG_MAX_LINES + 1);
    for item in lines {
        for line in item.as_ref().lines() {
            if kept.len() == ATTEMPT_LOG_MAX_LINES {
                kept.pop_front();
            }
            // Only the last ATTEMPT_LOG_MAX_BYTES of a line can ever be kept.
            kept.push_back(tail_bytes(line, ATTEMPT_LOG_MAX_BYTES).to_owned());
        }
    }
    if kept.is_empty() {
        return None;
    }
    let joined = Vec::from(kept).join("\n");
    Some(tail_bytes(&joined, ATTEMPT_LOG_MAX_BYTES).to_owned())
}

/// The longest suffix of `s` of at most `max` bytes that starts at a character boundary.
fn tail_bytes(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// What follows a finished attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Transition {
    Succeeded {
        output: Option<String>,
    },
    /// Run again at `next_at` (state `retrying`).
    Retry {
        next_at: Millis,
        error: String,
    },
    /// No attempts left, or a permanent error (state `dead`; parks the key if the task asked).
    Dead {
        error: String,
    },
}

/// A task with its attempt history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: Task,
    pub attempts: Vec<Attempt>,
}

/// Result of enqueueing one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnqueueOutcome {
    /// Newly stored.
    Created(Task),
    /// Its uniqueness key was already taken: the existing task (of any state) is returned.
    Duplicate(Task),
}

impl EnqueueOutcome {
    pub fn task(&self) -> &Task {
        match self {
            Self::Created(t) | Self::Duplicate(t) => t,
        }
    }
}

/// Filter for listing tasks. Results are ordered by `(due_at, seq)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListFilter {
    pub key: Option<String>,
    pub state: Option<TaskState>,
    pub limit: usize,
    /// Only tasks positioned strictly after this `(due_at, seq)`: the next page after a page
    /// that ended there.
    #[serde(default)]
    pub after: Option<OrderPos>,
}

impl ListFilter {
    /// Whether `t` passes the state and position filters (the key is the caller's index).
    pub fn admits(&self, t: &Task) -> bool {
        self.state.is_none_or(|s| t.state == s) && self.after.is_none_or(|a| t.order() > a)
    }
}

/// A recurring task definition. Each occurrence becomes one task whose uniqueness key is
/// `schedule:{name}:{occurrence millis}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    pub cron: String,
    pub plugin: String,
    pub key: String,
    pub payload: String,
    /// IANA time zone name; `None` = UTC.
    pub timezone: Option<String>,
    /// The last occurrence that was materialised (millis), so a restart neither doubles nor
    /// skips one.
    pub last_fired: Option<Millis>,
    pub created_at: Millis,
}

/// Metadata of one plugin key-value entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntryMeta {
    pub key: String,
    pub updated_at: Millis,
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines() {
        assert_eq!(log_tail(Vec::<String>::new()), None);
        assert_eq!(log_tail([""]), None);
        let lines: Vec<String> = (1..=25).map(|i| format!("line {i}")).collect();
        let tail = log_tail(&lines).expect("lines");
        let kept: Vec<&str> = tail.split('\n').collect();
        assert_eq!(kept.len(), ATTEMPT_LOG_MAX_LINES);
        assert_eq!(kept.first(), Some(&"line 6"));
        assert_eq!(kept.last(), Some(&"line 25"));
        // A multi-line item counts as its lines.
        assert_eq!(log_tail(["a\nb", "c"]).as_deref(), Some("a\nb\nc"));
    }

    #[test]
    fn log_tail_keeps_the_last_bytes_at_a_char_boundary() {
        // 3-byte characters: 2048 is not a multiple of 3, so the cut falls inside one.
        let long = "€".repeat(1_000);
        let tail = log_tail([long.as_str(), "end"]).expect("lines");
        assert!(tail.len() <= ATTEMPT_LOG_MAX_BYTES, "{}", tail.len());
        assert!(tail.len() > ATTEMPT_LOG_MAX_BYTES - 4);
        assert!(tail.ends_with("€\nend"));
        assert!(tail.starts_with('€'));
        // Many short lines: the byte cap applies after the line cap.
        let lines = vec!["x".repeat(200); 30];
        let tail = log_tail(&lines).expect("lines");
        assert_eq!(tail.len(), ATTEMPT_LOG_MAX_BYTES);
        assert!(tail.ends_with(&"x".repeat(200)));
    }

    #[test]
    fn state_counts_add_get_total() {
        let mut c = StateCounts::default();
        for s in TaskState::ALL {
            c.add(s, 3);
        }
        c.add(TaskState::Running, -1);
        c.add(TaskState::Dead, -10);
        c.set(TaskState::Cancelled, 7);
        assert_eq!(c.get(TaskState::Scheduled), 3);
        assert_eq!(c.get(TaskState::Running), 2);
        assert_eq!(c.get(TaskState::Dead), 0, "saturates at 0");
        assert_eq!(c.cancelled, 7);
        assert_eq!(c.total(), 3 + 2 + 3 + 3 + 7);
    }
}
