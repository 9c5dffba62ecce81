//! A clock of each node's own: nodes started under libfaketime (Debian's
//! `libfaketime`), each reading its clocks' offset and rate — monotonic and
//! wall alike — from a file of its own, so a test can make one node's time
//! run slow while it runs.
//!
//! libfaketime computes a clock as `start + offset + (real - start) × rate`,
//! `start` being when the process loaded it, and rereads the file once its
//! copy is more than a second old, counted in whole seconds: up to two
//! seconds after a change (`FAKETIME_CACHE_DURATION`; rereading it on every
//! clock read costs a file read per `Instant::now`). The multi-threaded
//! build (`libfaketimeMT`) is used: the other reads offset and rate without
//! a lock, so a thread could pair a new offset with the old rate. Changing the rate alone would
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

/// libfaketime's `FAKETIME_CACHE_DURATION`, seconds.
const CACHE_SECS: u64 = 1;

/// How long after a change a node may still use a file's old contents.
pub const REREAD: Duration = Duration::from_secs(CACHE_SECS + 1);

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
        arches.flatten().map(|d| d.path().join("faketime/libfaketimeMT.so.1")).find(|p| p.is_file())
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
            ("FAKETIME_CACHE_DURATION".into(), CACHE_SECS.to_string().into()),
        ])
    }

    /// From about now on (within [`REREAD`]), node `id`'s clocks run at
    /// `rate` × real time; 1 puts them back on real time. `running` is how
    /// long the node's process has run (a little more is safe: the clock
    /// steps forward by the excess × (1 − rate)).
    pub(crate) fn set_rate(&self, id: usize, rate: f64, running: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(rate > 0.0 && rate <= 1.0, "a clock rate in (0, 1], not {rate}");
        if rate == 1.0 {
            return self.write(id, "+0 x1");
        }
        let latest = (running + REREAD).as_secs_f64();
        self.write(id, &format!("+{:.3} x{rate}", latest * (1.0 - rate)))
    }

    /// Removes the shared-memory segment and semaphore libfaketime made for
    /// process `pid`, which a kill -9 (or the `exec` from `ip netns exec`)
    /// leaves behind: a later process given the same pid would fail to make
    /// its own.
    pub(crate) fn forget(pid: u32) {
        let _ = std::fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
        let _ = std::fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
    }

    /// Replaces a node's file whole, so it never reads half of one.
    fn write(&self, id: usize, spec: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".node-{id}.faketime"));
        std::fs::write(&tmp, format!("{spec}\n"))?;
        std::fs::rename(&tmp, self.file(id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn clocks(test: &str) -> Option<(FakeClocks, PathBuf)> {
        let dir = std::env::temp_dir().join(format!("tessera-clock-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        match FakeClocks::new(&dir) {
            Some(c) => Some((c, dir)),
            None => {
                eprintln!("skipped: no libfaketime (apt install libfaketime)");
                None
            }
        }
    }

    #[test]
    fn the_offset_keeps_the_clock_from_going_back() {
        let Some((c, dir)) = clocks("offset") else { return };
        c.set_rate(3, 0.25, Duration::from_secs(9)).expect("write");
        // Continuous at 9 s + the 2 s the node may keep the old contents.
        assert_eq!(std::fs::read_to_string(dir.join("node-3.faketime")).unwrap(), "+8.250 x0.25\n");
        c.set_rate(3, 1.0, Duration::from_secs(20)).expect("write");
        assert_eq!(std::fs::read_to_string(dir.join("node-3.faketime")).unwrap(), "+0 x1\n");
        assert!(c.set_rate(3, 0.0, Duration::ZERO).is_err());
        assert!(c.set_rate(3, 1.5, Duration::ZERO).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A process started with a node's environment keeps the time its file
    /// says: a half-speed `sleep 0.4` takes 0.8 s.
    #[test]
    fn a_slowed_process_sleeps_longer() {
        let Some((c, dir)) = clocks("sleep") else { return };
        let env = c.env(1).expect("env");
        c.set_rate(1, 0.5, Duration::ZERO).expect("rate");
        let started = Instant::now();
        let status = std::process::Command::new("sleep")
            .arg("0.4")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .status()
            .expect("sleep runs");
        assert!(status.success());
        // (`sleep` exits normally: libfaketime removes its own segment.)
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(750), "sleep 0.4 at half speed took {took:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
