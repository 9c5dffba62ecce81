//! What the failover tests share: a pipelined load through the router
//! that records each reply, the leader of a shard as the router sees it,
//! and waiting for a restarted node to be back in every shard.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Cluster, Resp};

/// The node that leads `shard`, as the router last saw it (waits until it
/// knows one).
pub fn shard_leader(r: &mut Resp, shard: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = r.cmd(&["INFO", "replication"]).unwrap();
        let leader = info
            .lines()
            .find(|l| l.starts_with(&format!("shard{shard}:")))
            .and_then(|l| l.split(',').find_map(|p| p.strip_prefix("leader_id=")))
            .and_then(|id| id.parse::<usize>().ok())
            .filter(|id| *id != 0);
        if let Some(id) = leader {
            return id;
        }
        assert!(Instant::now() < deadline, "no leader known for shard {shard}:\n{info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Clients pipelining through the router while nodes stop: 8 connections,
/// each sending pipelines of 8 `SET`s (one new key each, over every shard)
/// and 8 `GET`s of the keys the pipeline before set (whose replies have
/// come: a `GET` of an acknowledged write must see it). What each reply was
/// is recorded with when it came.
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<LoadResult>>,
}

#[derive(Default)]
pub struct LoadResult {
    pub ok: u64,
    /// (when, command, reply) of each reply that was not the one expected.
    pub failed: Vec<(Instant, &'static str, String)>,
    /// A `GET` found no value where its `SET` had been acknowledged.
    pub lost: Vec<String>,
}

impl Load {
    pub fn start(c: &Cluster) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..8)
            .map(|t| {
                let (addr, stop) = (c.plain, stop.clone());
                std::thread::spawn(move || {
                    let mut r = Resp::connect(addr).unwrap();
                    let mut res = LoadResult::default();
                    // The previous pipeline's keys, and whether each SET was acknowledged.
                    let mut before: Vec<(String, bool)> = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                        let keys: Vec<String> = (0..8).map(|j| format!("{{{}}}l:{t}:{i}", (i + j) % 64)).collect();
                        for k in &keys {
                            r.send(&[b"SET", k.as_bytes(), b"v"]).unwrap();
                        }
                        for (k, _) in &before {
                            r.send(&[b"GET", k.as_bytes()]).unwrap();
                        }
                        let mut now = Vec::with_capacity(keys.len());
                        for k in keys {
                            let set = r.read().unwrap();
                            let acked = set == "+OK\r\n";
                            match acked {
                                true => res.ok += 1,
                                false => res.failed.push((Instant::now(), "SET", set)),
                            }
                            now.push((k, acked));
                        }
                        for (k, acked) in std::mem::replace(&mut before, now) {
                            let get = r.read().unwrap();
                            match get.as_str() {
                                "$1\r\nv\r\n" => res.ok += 1,
                                // (Its SET's outcome is unknown: either is right.)
                                "$-1\r\n" if !acked => {}
                                "$-1\r\n" => res.lost.push(k),
                                _ => res.failed.push((Instant::now(), "GET", get)),
                            }
                        }
                        i += 8;
                    }
                    res
                })
            })
            .collect();
        Load { stop, clients }
    }

    pub fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadResult::default();
        for t in self.clients {
            let r = t.join().unwrap();
            all.ok += r.ok;
            all.failed.extend(r.failed);
            all.lost.extend(r.lost);
        }
        all
    }
}

/// Waits until node `addr` reports on each of `shards` shards again, within
/// a few hundred entries of what its leader committed (the load goes on, so
/// it is seldom exactly level), and every shard knows a leader.
pub fn wait_back(r: &mut Resp, addr: std::net::SocketAddr, shards: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let me = format!("{addr}/applied=");
    loop {
        let info = r.cmd(&["INFO", "replication"]).unwrap();
        let lines: Vec<&str> = info.lines().filter(|l| l.starts_with("shard")).collect();
        let lag = |l: &str| -> Option<u64> {
            let part = l.split(',').map(|p| p.trim_start_matches("replicas=")).find(|p| p.starts_with(&me))?;
            part.rsplit("/lag=").next()?.trim().parse().ok()
        };
        let back = lines.len() == shards
            && lines.iter().all(|l| !l.contains("leader_id=0,") && lag(l).is_some_and(|n| n < 500));
        if back {
            return;
        }
        assert!(Instant::now() < deadline, "node {addr} did not catch up:\n{info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
