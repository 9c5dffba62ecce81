//! A clock of each node's own: nodes started under libfaketime (Debian's
//! `libfaketime`), each reading its clocks' offset and rate — monotonic and
//! wall alike — from a file of its own, so a test can make one node's time
//! run slow while it runs.
//!
//! libfaketime computes a clock as `start + offset + (real - start) × rate`,
//! `start` being when the process loaded it, and rereads the file at most
//! once a second (`FAKETIME_CACHE_DURATION`; rereading it on every clock
//! read costs a file read per `Instant::now`). Changing the rate alone would
//! send a clock back by the time already run × (1 − rate), and libfaketime's
//! own `FAKETIME_XRESET` sent `CLOCK_MONOTONIC` back by over a second when
//! tried (0.9.10). So [`FakeClocks::set_rate`] writes the offset that keeps the
//! clock continuous at the *latest* moment the node can pick the file up: the
//! clock never goes back; it steps forward by under (1 − rate) × 1 s at most,
//! then runs at the new rate. Going back to rate 1 steps it forward to the
//! real time.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long libfaketime may keep using a file's old contents, seconds.
const REREAD_SECS: u64 = 1;

pub struct FakeClocks {
    lib: PathBuf,
    dir: PathBuf,
}

impl FakeClocks {
    /// libfaketime's library: `TESSERA_LIBFAKETIME`, else Debian's path.
    pub fn library() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("TESSERA_LIBFAKETIME") {
            return Some(p.into());
        }
        let arches = std::fs::read_dir("/usr/lib").ok()?;
        arches.flatten().map(|d| d.path().join("faketime/libfaketime.so.1")).find(|p| p.is_file())
    }

    /// Clocks whose files live in `dir`; `None` without libfaketime.
    pub fn new(dir: &Path) -> Option<FakeClocks> {
        Some(FakeClocks { lib: Self::library()?, dir: dir.to_path_buf() })
    }

    fn file(&self, id: usize) -> PathBuf {
        self.dir.join(format!("node-{id}.faketime"))
    }

    /// The environment node `id` starts with: its clocks at real time.
    pub(crate) fn env(&self, id: usize) -> anyhow::Result<Vec<(String, OsString)>> {
        self.write(id, "+0 x1")?;
        Ok(vec![
            ("LD_PRELOAD".into(), self.lib.clone().into()),
            ("FAKETIME_TIMESTAMP_FILE".into(), self.file(id).into()),
            ("FAKETIME_CACHE_DURATION".into(), REREAD_SECS.to_string().into()),
            // No shared-memory segments: they would outlive a kill -9.
            ("FAKETIME_DISABLE_SHM".into(), "1".into()),
        ])
    }

    /// From about now on (within [`REREAD_SECS`]), node `id`'s clocks run at
    /// `rate` × real time; 1 puts them back on real time. `running` is how
    /// long the node's process has run (a little more is safe: the clock
    /// steps forward by the excess × (1 − rate)).
    pub(crate) fn set_rate(&self, id: usize, rate: f64, running: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(rate > 0.0 && rate <= 1.0, "a clock rate in (0, 1], not {rate}");
        if rate == 1.0 {
            return self.write(id, "+0 x1");
        }
        let latest = running.as_secs_f64() + REREAD_SECS as f64;
        self.write(id, &format!("+{:.3} x{rate}", latest * (1.0 - rate)))
    }

    /// Replaces a node's file whole, so it never reads half of one.
    fn write(&self, id: usize, spec: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".node-{id}.faketime"));
        std::fs::write(&tmp, format!("{spec}\n"))?;
        std::fs::rename(&tmp, self.file(id))?;
        Ok(())
    }
}
