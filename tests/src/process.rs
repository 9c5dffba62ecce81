//! The processes a cluster runs (nodes, routers): started with their flags
//! and environment, waited for until they print READY, signalled, killed,
//! and their logs shown when a test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::start_wait;

/// One process of a cluster, restartable with the same flags and log.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Option<Child>,
    pub(crate) log: PathBuf,
    pub(crate) args: Vec<std::ffi::OsString>,
    pub(crate) bin: PathBuf,
    /// Extra environment (a faked clock).
    pub(crate) env: Vec<(String, std::ffi::OsString)>,
    /// When the running process was spawned.
    pub(crate) started: Option<Instant>,
}

impl Proc {
    pub(crate) fn new(name: String, bin: PathBuf, args: Vec<std::ffi::OsString>, log: PathBuf) -> Proc {
        Proc { name, child: None, log, args, bin, env: Vec::new(), started: None }
    }

    pub(crate) fn spawn(&mut self) -> anyhow::Result<String> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let started = Instant::now();
        let mut child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", std::env::var("TESSERA_TEST_RUST_LOG").unwrap_or_else(|_| "info,openraft=info".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let ready = read_ready(&mut child, start_wait());
        self.child = Some(child);
        self.started = Some(started);
        ready.with_context(|| {
            format!("{} did not start; the end of {}:\n{}", self.name, self.log.display(), log_tail(&self.log, 20))
        })
    }

    /// SIGKILLs the process (if running) and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGSTOP / SIGCONT and waits (bounded) until the kernel reports
    /// every thread stopped / running again.
    pub(crate) fn signal(&self, sig: &str) {
        let Some(child) = &self.child else { return };
        let pid = child.id();
        let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "kill -{sig} {pid} failed");
        let want_stopped = sig == "STOP";
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // A group stop reaches each thread on its own: the process is
            // stopped only once every thread reports state T (a worker thread
            // still running could finish a replication round trip).
            let states = thread_states(pid);
            if !states.is_empty() && states.iter().all(|s| (s == "T") == want_stopped) {
                return;
            }
            assert!(Instant::now() < deadline, "{} did not reach state after SIG{sig}: {states:?}", self.name);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn read_ready(child: &mut Child, timeout: Duration) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(timeout).context("process did not print READY in time")?;
    if !line.starts_with("READY") {
        bail!("unexpected first line: {line:?}");
    }
    Ok(line.trim().to_string())
}

/// The last `n` lines of a log file, for errors that should say why.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Everything the processes logged.
pub(crate) fn logs_of(procs: &[Proc]) -> String {
    let mut out = String::new();
    for p in procs {
        out.push_str(&format!("----- {} ({}) -----\n", p.name, p.log.display()));
        out.push_str(&std::fs::read_to_string(&p.log).unwrap_or_default());
    }
    out
}

/// Prints the logs when a test failed (or `TESSERA_TEST_LOGS` is set), kills
/// every process and removes the cluster's folder.
pub(crate) fn stop_all(procs: &mut [Proc], dir: &Path) {
    if std::thread::panicking() || std::env::var_os("TESSERA_TEST_LOGS").is_some() {
        eprintln!("{}", logs_of(procs));
    }
    for p in procs {
        if let Some(mut c) = p.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The scheduler state of every thread of `pid` ("R", "S", "T", ...), from
/// `/proc/<pid>/task/*/stat` ("tid (comm) S ...").
fn thread_states(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()?.to_string()))
        .collect()
}
