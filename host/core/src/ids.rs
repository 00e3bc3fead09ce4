//! Task ids. Kairos makes every id it hands out (the API, schedules, follow-ups); a client or
//! an external Kafka producer may bring its own. Ids are opaque to clients.
//!
//! A store whose task rows are grouped by a *home* (Cassandra: the Kairos partition and a
//! time bucket of the first due time) has the id name that home: `{uuid v7}.p{partition}.h{home}`.
//! The store then finds the row from the id alone. Without that, every enqueue must look the
//! id up in a table of its own (`task_homes`), one Cassandra partition per task, to tell a
//! replayed record from a new task. Stores without homes get a plain UUID v7.

use crate::model::Millis;

/// How this node makes the ids of new tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskIds {
    /// A UUID v7.
    #[default]
    Plain,
    /// A UUID v7 that names its home: the task's partition and `floor(due_at / bucket_ms)`
    /// (see [`home_named`]).
    Homed { bucket_ms: i64 },
}

impl TaskIds {
    /// A fresh id for a task of `partition` first due at `due_at`.
    pub fn new_id(self, partition: u32, due_at: Millis) -> String {
        let uuid = uuid::Uuid::now_v7();
        match self {
            TaskIds::Plain => uuid.to_string(),
            TaskIds::Homed { bucket_ms } => {
                let home = due_at.div_euclid(bucket_ms.max(1));
                format!("{uuid}.p{partition}.h{home}")
            }
        }
    }
}

/// The `(partition, home)` an id names, if it has the form [`TaskIds::Homed`] makes (exactly:
/// a hyphenated lowercase UUID, then `.p` and `.h` with canonical decimal numbers). Any other
/// id names nothing.
pub fn home_named(id: &str) -> Option<(u32, i64)> {
    let (uuid, rest) = id.split_at_checked(36)?;
    let (p, h) = rest.strip_prefix(".p")?.split_once(".h")?;
    let partition: u32 = p.parse().ok()?;
    let home: i64 = h.parse().ok()?;
    let canonical = partition.to_string() == p && home.to_string() == h;
    let parsed = uuid::Uuid::try_parse(uuid).ok()?;
    (canonical && parsed.hyphenated().to_string() == uuid).then_some((partition, home))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_homed_id_names_its_partition_and_the_bucket_of_its_due_time() {
        let ids = TaskIds::Homed { bucket_ms: 60_000 };
        let id = ids.new_id(7, 1_733_164_859_999);
        assert_eq!(home_named(&id), Some((7, 28_886_080)));
        let id = ids.new_id(0, 1_733_164_860_000);
        assert_eq!(home_named(&id), Some((0, 28_886_081)));
    }

    #[test]
    fn other_ids_name_no_home() {
        let plain = TaskIds::Plain.new_id(7, 1_000);
        assert_eq!(home_named(&plain), None);
        assert!(uuid::Uuid::try_parse(&plain).is_ok());
        let homed = TaskIds::Homed { bucket_ms: 1_000 }.new_id(3, 5_000);
        let uuid = &homed[..36];
        for id in [
            "",
            "t1",
            "x.p1.h2",
            &format!("{uuid}.p1"),
            &format!("{uuid}.p01.h2"),
            &format!("{uuid}.p1.h+2"),
            &format!("{uuid}.p1.h2 "),
            &format!("{uuid}.p-1.h2"),
            &format!("{uuid}.p4294967296.h2"),
            &format!("{}.p1.h2", uuid.to_uppercase()),
            &format!("{}.p1.h2", uuid.replace('-', "")),
        ] {
            assert_eq!(home_named(id), None, "{id:?}");
        }
        assert_eq!(home_named(&format!("{uuid}.p1.h-2")), Some((1, -2)));
        assert_eq!(home_named(&homed), Some((3, 5)));
    }
}
