//! The open database handle, and its recovery after a failed write.
//!
//! fjall refuses every write with `Poisoned` once a journal write or flush hit an I/O error
//! (a full disk, say) until the database is opened again. The writer thread then marks the
//! store broken; the next write (or health probe) reopens the database — after the readers let
//! go of the old handle — and carries on. Nothing acknowledged is lost: an acknowledged write was committed
//! (fsynced) before its answer, and the failed commit was never acknowledged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::tables::Db;
use kairos_core::store::{StoreError, StoreResult};

/// How long a reopen waits for reads in flight to drop the old handle.
const READERS_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct DbCell {
    path: PathBuf,
    cache_bytes: u64,
    /// `None` only between dropping a broken handle and opening the new one (or while the
    /// reopen keeps failing).
    current: RwLock<Option<Arc<Db>>>,
    /// Why writes fail, while they do.
    broken: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DbCell {
    pub(crate) fn open(path: &Path, cache_bytes: u64) -> StoreResult<Self> {
        let db = open_db(path, cache_bytes)?;
        Ok(Self {
            path: path.to_path_buf(),
            cache_bytes,
            current: RwLock::new(Some(Arc::new(db))),
            broken: Mutex::new(None),
        })
    }

    /// The current handle.
    pub(crate) fn get(&self) -> StoreResult<Arc<Db>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| self.unavailable())
    }

    fn unavailable(&self) -> StoreError {
        let why = lock(&self.broken)
            .clone()
            .unwrap_or_else(|| "the database is being reopened".into());
        StoreError::Unavailable(format!("embedded store cannot write: {why}"))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Why writes fail now, if they do.
    pub(crate) fn broken(&self) -> Option<String> {
        lock(&self.broken).clone()
    }

    pub(crate) fn mark_broken(&self, why: &StoreError) {
        let mut b = lock(&self.broken);
        if b.is_none() {
            tracing::error!(error = %why, path = %self.path.display(), "embedded store writes fail; reopening the database on the next write");
        }
        *b = Some(why.to_string());
    }

    pub(crate) fn mark_healthy(&self) {
        if lock(&self.broken).take().is_some() {
            tracing::info!(path = %self.path.display(), "embedded store writes work again");
        }
    }

    /// Drops the broken handle (once no read holds it) and opens the database again, which
    /// replays fjall's journal. Called by the writer thread only, holding no handle itself.
    pub(crate) fn reopen(&self) -> StoreResult<Arc<Db>> {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = cur.take() {
            let deadline = Instant::now() + READERS_WAIT;
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still_shared) => {
                        *cur = Some(still_shared);
                        return Err(StoreError::Unavailable(
                            "embedded store: reads in flight kept the database open; reopen postponed".into(),
                        ));
                    }
                }
            }
        }
        let db = Arc::new(open_db(&self.path, self.cache_bytes)?);
        *cur = Some(db.clone());
        tracing::info!(path = %self.path.display(), "embedded store reopened");
        Ok(db)
    }
}

/// Bytes free for unprivileged writers on the file system holding `path` (`None` when it
/// cannot be told).
pub(crate) fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty())?;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs buffer;
        // statvfs initialises it when it returns 0.
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: initialised by the successful call above.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::unnecessary_cast)]
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn open_db(path: &Path, cache_bytes: u64) -> StoreResult<Db> {
    Db::open(path, cache_bytes)
}
