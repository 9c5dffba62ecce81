//! Real network partitions: each node in its own network namespace, links
//! cut with nftables. A node cut off from its peers (but still reachable by
//! the router) must not acknowledge writes; the majority elects a leader and
//! goes on; after the partition heals, every acknowledged write is there.

use std::time::{Duration, Instant};

use tessera_tests::netns::{is_root, NetCluster};
use tessera_tests::Resp;

#[test]
fn a_node_cut_off_from_its_peers_acknowledges_nothing_and_no_acked_write_is_lost() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let c = NetCluster::start(3, 1).expect("cluster starts");
    let mut r = Resp::connect(c.plain).unwrap();
    // "{0}" hashes to slot 13907: shard 2, formed (and first led) by node 3.
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..20 {
        let (k, v) = (format!("{{0}}p{i}"), format!("before{i}"));
        assert_eq!(r.cmd(&["SET", &k, &v]).unwrap(), "+OK\r\n");
        acked.push((k, v));
    }
    c.isolate_from_peers(3).expect("partition");
    let (mut refused, mut ok_during) = (0, 0);
    let until = Instant::now() + Duration::from_secs(8);
    let mut i = 0;
    while Instant::now() < until {
        let (k, v) = (format!("{{0}}q{i}"), format!("during{i}"));
        let reply = r.cmd(&["SET", &k, &v]).unwrap();
        if reply == "+OK\r\n" {
            ok_during += 1;
            acked.push((k, v));
        } else {
            assert!(reply.starts_with("-TRYAGAIN") || reply.starts_with("-CLUSTERDOWN"), "{reply}");
            refused += 1;
        }
        i += 1;
    }
    // The cut-off leader could not commit: the router got no answer from it
    // (TRYAGAIN) until it learned of the majority's new leader.
    assert!(refused > 0, "no write went to the cut-off leader");
    assert!(ok_during > 0, "the majority side never took writes during the partition");
    c.heal(3).expect("heal");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if r.cmd(&["SET", "{0}after", "x"]).map(|v| v == "+OK\r\n").unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "no writes after the partition healed");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (k, v) in &acked {
        assert_eq!(r.cmd(&["GET", k]).unwrap(), format!("${}\r\n{v}\r\n", v.len()), "acknowledged write {k} lost");
    }
    eprintln!("partition: {ok_during} writes acknowledged by the majority, {refused} refused while the router still sent to the cut-off leader");
}
