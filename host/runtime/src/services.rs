//! What the host offers plugins beyond the sandbox: durable key-value state and
//! follow-up scheduling, behind [`HostServices`] (implemented by the scheduler; an
//! in-memory version, [`MemoryServices`], serves `kairos plugin run` and tests).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::logs::now_ms;

/// One attempt of one task, as handed to a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: String,
    pub key: String,
    pub plugin: String,
    /// 1-based.
    pub attempt: u32,
    pub due_at_ms: i64,
    /// JSON document.
    pub payload: String,
    /// Follow-up generation: 0 for a task from the API or a schedule; a follow-up of this
    /// task gets one more.
    pub generation: u32,
}

/// Metadata of one key-value entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    pub updated_at_ms: i64,
    pub size: u64,
}

/// When a follow-up task is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum When {
    DelayMs(u64),
    AtMs(i64),
}

/// A follow-up task requested by a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowUp {
    pub plugin: String,
    pub key: String,
    pub when: When,
    pub payload: String,
    pub uniqueness_key: Option<String>,
}

/// Host services backing the plugin imports. Errors are plain messages handed to the
/// guest as the `err` of the import's result.
#[async_trait]
pub trait HostServices: Send + Sync + 'static {
    async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    async fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>) -> Result<(), String>;
    /// Returns whether the key existed.
    async fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool, String>;
    /// Entries whose key starts with `prefix`, in key order, at most `limit`.
    async fn kv_list(&self, plugin: &str, prefix: &str, limit: u32)
    -> Result<Vec<KvEntry>, String>;
    /// Bytes (keys plus values) the plugin keeps in kv now.
    async fn kv_usage(&self, plugin: &str) -> Result<u64, String>;
    /// Enqueues a follow-up of `origin`; returns the new (or existing, for a taken
    /// uniqueness key) task id.
    async fn schedule(&self, origin: &TaskInfo, req: FollowUp) -> Result<String, String>;
}

/// A follow-up recorded by [`MemoryServices`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledFollowUp {
    pub id: String,
    pub origin_task_id: String,
    pub follow_up: FollowUp,
}

/// A kv value and its last write time (Unix epoch ms).
type StoredValue = (Vec<u8>, i64);

/// In-memory [`HostServices`]: kv in a map, follow-ups recorded (not run).
#[derive(Debug, Default)]
pub struct MemoryServices {
    kv: Mutex<BTreeMap<(String, String), StoredValue>>,
    scheduled: Mutex<Vec<ScheduledFollowUp>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl MemoryServices {
    pub fn new() -> Self {
        Self::default()
    }

    /// The follow-ups scheduled so far, in order (duplicates by uniqueness key omitted).
    pub fn follow_ups(&self) -> Vec<FollowUp> {
        lock(&self.scheduled)
            .iter()
            .map(|s| s.follow_up.clone())
            .collect()
    }

    /// The follow-ups with their ids and origins.
    pub fn scheduled(&self) -> Vec<ScheduledFollowUp> {
        lock(&self.scheduled).clone()
    }

    /// Forgets the recorded follow-ups.
    pub fn clear_follow_ups(&self) {
        lock(&self.scheduled).clear();
    }

    /// Writes a kv entry with a given update time (to seed tests with old entries).
    pub fn put_at(&self, plugin: &str, key: &str, value: Vec<u8>, updated_at_ms: i64) {
        lock(&self.kv).insert(
            (plugin.to_string(), key.to_string()),
            (value, updated_at_ms),
        );
    }

    /// Reads a kv entry directly.
    pub fn get(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        lock(&self.kv)
            .get(&(plugin.to_string(), key.to_string()))
            .map(|(v, _)| v.clone())
    }

    /// All keys of one plugin, in order.
    pub fn keys(&self, plugin: &str) -> Vec<String> {
        lock(&self.kv)
            .keys()
            .filter(|(p, _)| p == plugin)
            .map(|(_, k)| k.clone())
            .collect()
    }
}

#[async_trait]
impl HostServices for MemoryServices {
    async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.get(plugin, key))
    }

    async fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.put_at(plugin, key, value, now_ms());
        Ok(())
    }

    async fn kv_usage(&self, plugin: &str) -> Result<u64, String> {
        Ok(lock(&self.kv)
            .iter()
            .filter(|((p, _), _)| p == plugin)
            .map(|((_, k), v)| (k.len() + v.0.len()) as u64)
            .sum())
    }

    async fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool, String> {
        Ok(lock(&self.kv)
            .remove(&(plugin.to_string(), key.to_string()))
            .is_some())
    }

    async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<KvEntry>, String> {
        let kv = lock(&self.kv);
        let start = (plugin.to_string(), prefix.to_string());
        Ok(kv
            .range(start..)
            .take_while(|((p, k), _)| p == plugin && k.starts_with(prefix))
            .take(limit as usize)
            .map(|((_, k), (v, at))| KvEntry {
                key: k.clone(),
                updated_at_ms: *at,
                size: v.len() as u64,
            })
            .collect())
    }

    async fn schedule(&self, origin: &TaskInfo, req: FollowUp) -> Result<String, String> {
        if req.plugin.is_empty() {
            return Err("follow-up needs a plugin name".to_string());
        }
        let mut scheduled = lock(&self.scheduled);
        if let Some(u) = &req.uniqueness_key
            && let Some(s) = scheduled
                .iter()
                .find(|s| s.follow_up.uniqueness_key.as_ref() == Some(u))
        {
            return Ok(s.id.clone());
        }
        let id = format!("mem-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        scheduled.push(ScheduledFollowUp {
            id: id.clone(),
            origin_task_id: origin.id.clone(),
            follow_up: req,
        });
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> TaskInfo {
        TaskInfo {
            id: "t1".into(),
            key: "k".into(),
            plugin: "p".into(),
            attempt: 1,
            due_at_ms: 0,
            payload: "{}".into(),
            generation: 0,
        }
    }

    #[tokio::test]
    async fn kv_is_scoped_per_plugin_and_listed_in_order() {
        let s = MemoryServices::new();
        s.kv_set("a", "x/2", b"22".to_vec()).await.unwrap();
        s.kv_set("a", "x/1", b"1".to_vec()).await.unwrap();
        s.kv_set("a", "y", b"y".to_vec()).await.unwrap();
        s.kv_set("b", "x/3", b"3".to_vec()).await.unwrap();
        let l = s.kv_list("a", "x/", 10).await.unwrap();
        let keys: Vec<_> = l.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["x/1", "x/2"]);
        assert_eq!(l[1].size, 2);
        assert_eq!(s.kv_list("a", "x/", 1).await.unwrap().len(), 1);
        assert_eq!(s.kv_get("b", "y").await.unwrap(), None);
        assert!(s.kv_delete("a", "y").await.unwrap());
        assert!(!s.kv_delete("a", "y").await.unwrap());
    }

    #[tokio::test]
    async fn uniqueness_key_dedups() {
        let s = MemoryServices::new();
        let f = FollowUp {
            plugin: "p".into(),
            key: "k".into(),
            when: When::DelayMs(5),
            payload: "{}".into(),
            uniqueness_key: Some("u".into()),
        };
        let a = s.schedule(&origin(), f.clone()).await.unwrap();
        let b = s.schedule(&origin(), f).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(s.follow_ups().len(), 1);
    }
}
