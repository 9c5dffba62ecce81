//! Free space on the data disk: writes are refused (`MISCONF ...`) before
//! the disk is full, so a full disk fails writes cleanly instead of failing
//! a log append (which stops the replica); they succeed again once space
//! is freed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::error::Error;

use crate::util::now_ms;

/// How long a free-space reading is reused.
const RECHECK_MS: i64 = 100;

pub struct DiskGuard {
    dir: PathBuf,
    /// Bytes kept free (for the log's own bookkeeping, snapshots, other replicas).
    reserve: u64,
    free: AtomicU64,
    checked_at: AtomicI64,
}

impl DiskGuard {
    pub fn new(dir: PathBuf, reserve: u64) -> DiskGuard {
        DiskGuard { dir, reserve, free: AtomicU64::new(u64::MAX), checked_at: AtomicI64::new(i64::MIN) }
    }

    /// Bytes available to this process on the data disk (recent reading).
    pub fn free_bytes(&self) -> u64 {
        let now = now_ms();
        if now.saturating_sub(self.checked_at.load(Ordering::Relaxed)) >= RECHECK_MS {
            if let Ok(st) = rustix::fs::statvfs(&self.dir) {
                self.free.store(st.f_bavail.saturating_mul(st.f_frsize), Ordering::Relaxed);
                metrics::gauge!("tessera_node_disk_free_bytes").set(st.f_bavail.saturating_mul(st.f_frsize) as f64);
            }
            self.checked_at.store(now, Ordering::Relaxed);
        }
        self.free.load(Ordering::Relaxed)
    }

    /// An error reply if a write of `bytes` would eat into the reserve
    /// (counting it twice: the log, then a snapshot).
    /// A reserve of 0 turns the check off (a full disk then fails the log
    /// append; the replica stops and is reopened once space returns).
    pub fn check(&self, bytes: usize) -> Option<Error> {
        if self.reserve == 0 {
            return None;
        }
        let free = self.free_bytes();
        let need = self.reserve.saturating_add(2 * bytes as u64);
        if free >= need {
            return None;
        }
        metrics::counter!("tessera_node_disk_full_rejections_total").increment(1);
        Some(Error::DiskFull { free_mib: free >> 20, reserve_mib: self.reserve >> 20 })
    }
}
