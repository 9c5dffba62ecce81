//! `tessera-admin rebalance` and `step-down` on a live cluster: a fourth
//! node receives its share of replicas and leaders, a second run plans
//! nothing, data written before reads back; a node that steps down leads no
//! group. Real processes, disks and sockets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tessera_tests::{Cluster, Resp};

/// Replicas per node on `status`'s group lines (`shard 0 slots [..] voters
/// [1, 2, 3] ...`, `meta slots [] voters [..] ...`), every node listed
/// counted (0 when it holds none).
fn replicas(status: &str) -> BTreeMap<u64, usize> {
    let mut held: BTreeMap<u64, usize> = status
        .lines()
        .filter(|l| l.starts_with("node ") && !l.contains(" shard ") && !l.contains("Removed"))
        .filter_map(|l| l.split_whitespace().nth(1)?.trim_end_matches(':').parse().ok())
        .map(|id| (id, 0))
        .collect();
    for line in status.lines().filter(|l| l.starts_with("shard ") || l.starts_with("meta ")) {
        let voters = line.split("voters [").nth(1).and_then(|r| r.split(']').next()).unwrap_or("");
        for v in voters.split(',').filter_map(|v| v.trim().parse().ok()) {
            *held.entry(v).or_default() += 1;
        }
    }
    held
}

/// The plan lines of `rebalance`'s output.
fn steps(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("move-replica ") || l.starts_with("transfer-leader ")).collect()
}

/// GETs `keys` through the router, allowing a bounded while for leaders
/// that moved to be found.
fn must_read(plain: std::net::SocketAddr, keys: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut r = Resp::connect(plain).unwrap();
    for k in keys {
        let want = format!("${}\r\n{k}\r\n", k.len());
        loop {
            let got = r.cmd(&["GET", k]).unwrap_or_default();
            if got == want {
                break;
            }
            assert!(Instant::now() < deadline, "{k} reads back {got:?}, not {want:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn rebalance_gives_a_new_node_its_share_once() {
    let mut c = Cluster::start(3, 2).expect("cluster starts");
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let mut r = Resp::connect(c.plain).unwrap();
    for k in &keys {
        assert_eq!(r.cmd(&["SET", k, k]).unwrap(), "+OK\r\n");
    }
    assert_eq!(c.add_node().expect("node 4 starts"), 4);
    c.wait_status("node 4 registering", Duration::from_secs(20), |s| s.contains("node 4 127.0.0.1"));

    let plan = c.admin(&["rebalance", "--dry-run"]).expect("dry run");
    let planned = steps(&plan);
    let moves: Vec<&&str> = planned.iter().filter(|s| s.starts_with("move-replica ")).collect();
    assert!(!moves.is_empty(), "no move planned:\n{plan}");
    assert!(moves.iter().all(|s| s.ends_with(" 4")), "moves to a node other than 4:\n{plan}");
    let status = c.admin(&["status"]).unwrap();
    assert_eq!(replicas(&status).get(&4), Some(&0), "a dry run changed the map:\n{status}");

    let out = c.admin(&["rebalance"]).expect("rebalance");
    eprintln!("planned:\n{plan}ran:\n{out}");
    assert!(steps(&out).starts_with(&planned), "the run started from another plan than\n{plan}:\n{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("OK ")).count(), planned.len(), "{out}");
    let status = c.admin(&["status"]).unwrap();
    let held = replicas(&status);
    assert!(held[&4] > 0, "node 4 holds nothing:\n{status}");
    let (most, least) = (held.values().max().unwrap(), held.values().min().unwrap());
    assert!(most - least <= 1, "replicas per node {held:?}:\n{status}");

    let again = c.admin(&["rebalance", "--dry-run"]).expect("second dry run");
    assert!(steps(&again).is_empty() && again.contains("nothing to do"), "a second run plans:\n{again}");
    let again = c.admin(&["rebalance"]).expect("second run");
    assert!(!again.contains("OK "), "a second run did something:\n{again}");
    must_read(c.plain, &keys);
}

#[test]
fn a_node_that_steps_down_leads_nothing() {
    let c = Cluster::start(3, 2).expect("cluster starts");
    let node1 = vec![c.node_addrs[0].to_string()];
    c.wait_status("node 1 leading", Duration::from_secs(20), |s| s.contains("node 1 shard 0: leader 1 "));
    let out = tessera_tests::admin(&node1, 30, &["step-down"]).expect("step-down");
    eprintln!("step-down:\n{out}");
    assert!(out.contains("handed from node 1"), "{out}");
    assert!(out.contains("node 1 leads no group now"), "{out}");
    // Checked before the 10 s after which leaders hand groups back to their
    // preferred leader (node 1 still is).
    let status = c.admin(&["status"]).unwrap();
    assert!(!status.contains("meta leader 1\n"), "node 1 still leads meta:\n{status}");
    let leading: Vec<&str> =
        status.lines().filter(|l| l.starts_with("node 1 shard ") && l.contains(": leader 1 ")).collect();
    assert!(leading.is_empty(), "node 1 still leads {leading:?}:\n{out}");
    let again = tessera_tests::admin(&node1, 30, &["step-down"]).expect("second step-down");
    assert!(again.contains("nothing to hand off"), "{again}");
    let mut r = Resp::connect(c.plain).unwrap();
    assert_eq!(r.cmd(&["SET", "{0}k", "v"]).unwrap(), "+OK\r\n");

    // A node that does not answer is an error, not "nothing to do".
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let err = tessera_tests::admin(&[gone], 5, &["step-down"]).unwrap_err().to_string();
    assert!(err.contains("does not answer"), "{err}");
}
