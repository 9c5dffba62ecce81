//! A full data disk: writes fail cleanly (an error, the node stays up,
//! nothing acknowledged is lost) and succeed again once space is freed.
//! Each node's data dir is its own small tmpfs (needs root to mount).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tessera_tests::failover::shard_leader;
use tessera_tests::{is_root, Cluster, Resp};

const DISK_MB: u64 = 48;

/// Unmounts the nodes' tmpfs when dropped (after the cluster is gone).
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

fn mount_disks(dir: &Path) -> anyhow::Result<()> {
    for n in 1..=3 {
        let d = dir.join(format!("node-{n}"));
        std::fs::create_dir_all(&d)?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK_MB}m"), "tmpfs"])
            .arg(&d)
            .status()?
            .success();
        anyhow::ensure!(ok, "mount tmpfs on {} failed (needs root)", d.display());
    }
    Ok(())
}

/// Fills node `n`'s disk with a filler file: `leave_mb` MiB left free, or
/// every byte (the write stops at ENOSPC) when `None`.
fn fill(c: &Cluster, n: usize, leave_mb: Option<u64>) -> PathBuf {
    let path = c.dir.join(format!("node-{n}")).join("filler");
    let target = leave_mb.map_or(DISK_MB << 20, |l| (DISK_MB - l - 2) << 20);
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![7u8; 1 << 20];
    let mut written = 0u64;
    while written < target {
        use std::io::Write;
        if f.write_all(&block).is_err() {
            break; // the disk is full
        }
        written += block.len() as u64;
    }
    path
}

/// A cluster whose nodes each have a data disk of `DISK_MB`, keeping
/// `reserve_mb` free (`--min-free-mb`); the disks go when the mounts drop
/// (bound first, so they drop after the cluster).
fn start_on_small_disks(reserve_mb: u64) -> (Mounts, Cluster) {
    let dir_holder = std::cell::RefCell::new(None);
    let prepare = |d: &Path| {
        mount_disks(d)?;
        *dir_holder.borrow_mut() = Some(d.to_path_buf());
        Ok(())
    };
    let reserve = reserve_mb.to_string();
    let c = Cluster::start_prepared(3, 1, &[], &["--min-free-mb", &reserve], &prepare);
    let d = dir_holder.borrow().clone().expect("prepared");
    let mounts = Mounts((1..=3).map(|n| d.join(format!("node-{n}"))).collect());
    let c = c.expect("cluster starts");
    (mounts, c)
}

fn run(reserve_mb: u64) {
    if !is_root() {
        eprintln!("skipped: mounting tmpfs needs root");
        return;
    }
    let (_mounts, mut c) = start_on_small_disks(reserve_mb);
    let mut r = Resp::connect(c.plain).unwrap();
    for i in 0..50 {
        assert_eq!(r.cmd(&["SET", &format!("k{i}"), "before"]).unwrap(), "+OK\r\n");
    }
    // With a reserve the guard refuses first; without one the log append
    // itself fails (ENOSPC) and the replica stops until it is reopened.
    let leave = if reserve_mb > 0 { Some(reserve_mb / 2) } else { None };
    let fillers: Vec<PathBuf> = (1..=3).map(|n| fill(&c, n, leave)).collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        let reply = r.cmd(&["SET", &format!("full{i}"), &"x".repeat(4096)]).unwrap();
        eprintln!("full disk reply: {}", reply.trim_end());
        assert!(reply.starts_with('-'), "a write was acknowledged on a full disk: {reply}");
        if reserve_mb > 0 {
            assert!(reply.starts_with("-MISCONF disk full"), "{reply}");
        }
    }
    for n in 1..=3 {
        assert!(c.wait_exit(n, Duration::from_millis(10)).is_none(), "node {n} exited on a full disk");
    }
    for f in &fillers {
        std::fs::remove_file(f).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = r.cmd(&["SET", "after", "x"]).unwrap();
        if reply == "+OK\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not recover after space was freed: {reply}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..50 {
        assert_eq!(r.cmd(&["GET", &format!("k{i}")]).unwrap(), "$6\r\nbefore\r\n", "k{i} lost");
    }
    drop(c);
}

#[test]
fn a_full_disk_is_refused_before_it_fills_and_writes_resume_when_space_returns() {
    run(16);
}

#[test]
fn a_disk_filled_to_enospc_stops_writes_without_crashing_and_recovers() {
    run(0);
}

/// A leader whose disk fills stops its replicas (a storage error), and the
/// others, with room, take over: the commands a client sends meanwhile
/// succeed, but for a write in flight when leadership moved (answered as of
/// unknown outcome). A stopped replica answers as a follower does, so the
/// router finds the new leader; it never answers `CLUSTERDOWN`.
#[test]
fn when_one_leaders_disk_fills_the_other_replicas_take_over() {
    if !is_root() {
        eprintln!("skipped: mounting tmpfs needs root");
        return;
    }
    let (_mounts, c) = start_on_small_disks(0);
    let mut r = Resp::connect(c.plain).unwrap();
    // Keys of shard 0 (slots 0..=5460), and the node that leads it.
    let keys: Vec<String> = (0..)
        .map(|i| format!("d:{i}"))
        .filter(|k| tessera_common::slot::key_slot(k.as_bytes()) < 5000)
        .take(60)
        .collect();
    for k in &keys[..10] {
        assert_eq!(r.cmd(&["SET", k, "before"]).unwrap(), "+OK\r\n");
    }
    let leader = shard_leader(&mut r, 0);
    let filler = fill(&c, leader, None);
    let (mut ok, mut unknown) = (0, 0);
    for k in &keys[10..] {
        let reply = r.cmd(&["SET", k, &"x".repeat(4096)]).unwrap();
        match reply.as_str() {
            "+OK\r\n" => ok += 1,
            e if e.starts_with("-TRYAGAIN") && e.contains("may or may not") => {
                eprintln!("outcome unknown: {}", e.trim_end());
                unknown += 1
            }
            e => panic!("a write failed while node {leader}'s disk was full: {e}"),
        }
    }
    eprintln!("node {leader} (shard 0's leader) out of disk: {ok} writes acknowledged, {unknown} of unknown outcome");
    // One write is in flight when the leader's disk fills; another may be
    // when a later election moves leadership again (the full node's replica
    // is reopened twice a second, and fails again).
    assert!(unknown <= 3, "{unknown} writes of unknown outcome in {} sequential writes", keys.len() - 10);
    assert!(ok >= 45, "only {ok} writes acknowledged");
    std::fs::remove_file(filler).unwrap();
    for k in &keys[..10] {
        assert_eq!(r.cmd(&["GET", k]).unwrap(), "$6\r\nbefore\r\n", "{k} lost");
    }
}
