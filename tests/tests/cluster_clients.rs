//! Real cluster clients against real processes: redis-rs's async cluster
//! client spreads strings and tensors over all 16384 slots; keyspace-wide
//! commands are scoped per advertised node so fan-out clients count right.

use std::time::Duration;

use redis::AsyncCommands;
use tessera_tests::{key_per_slot, Cluster, Resp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_cluster_client_covers_every_slot_with_strings_and_tensors() {
    let c = Cluster::start(3, 2).expect("cluster starts");
    // redis-rs gives up on a reply after 500 ms by default; a write that
    // meets a leader change on a loaded 2-core box can take longer (the
    // router itself retries for up to 6 s).
    let client = redis::cluster::ClusterClientBuilder::new(c.cluster_urls())
        .response_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut con = client.get_async_connection().await.expect("cluster connection");

    let keys = key_per_slot();
    for chunk in keys.chunks(512) {
        let writes = chunk.iter().cloned().map(|k| {
            let mut con = con.clone();
            async move { con.set::<_, _, ()>(&k, format!("v-{k}")).await }
        });
        for r in futures_join(writes).await {
            r.expect("SET");
        }
    }
    // Every 16th slot also gets a tensor, through the raw command.
    for (i, k) in keys.iter().enumerate().step_by(16) {
        let t = format!("{{{k}}}:t");
        let _: () = redis::cmd("AI.TENSORSET")
            .arg(&t)
            .arg("INT32")
            .arg(2)
            .arg("VALUES")
            .arg(i as i64)
            .arg(-(i as i64))
            .query_async(&mut con)
            .await
            .expect("TENSORSET");
    }
    for (i, k) in keys.iter().enumerate() {
        let v: String = con.get(k).await.expect("GET");
        assert_eq!(v, format!("v-{k}"), "slot {i}");
    }
    for (i, k) in keys.iter().enumerate().step_by(16) {
        let t = format!("{{{k}}}:t");
        let v: Vec<i64> = redis::cmd("AI.TENSORGET").arg(&t).arg("VALUES").query_async(&mut con).await.unwrap();
        assert_eq!(v, vec![i as i64, -(i as i64)], "tensor in slot {i}");
        let ty: String = redis::cmd("TYPE").arg(&t).query_async(&mut con).await.unwrap();
        assert_eq!(ty, "AI_TENSOR");
    }
    // redis-rs sends DBSIZE to every advertised master and sums the answers.
    let n: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(n, 16384 + 1024, "DBSIZE over all masters counts each key once");
    let listed: Vec<String> = redis::cmd("KEYS").arg("key:*").query_async(&mut con).await.unwrap();
    assert_eq!(listed.len(), 16384, "KEYS over all masters lists each key once");

    // The plain port sees the whole keyspace from one connection.
    let mut plain = Resp::connect(c.plain).unwrap();
    assert_eq!(plain.cmd(&["DBSIZE"]).unwrap(), format!(":{}\r\n", 16384 + 1024));
}

/// Runs the futures as tasks and collects their outputs in order.
async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_scan_visits_every_key_exactly_once() {
    let c = Cluster::start(3, 2).expect("cluster starts");
    let client = redis::Client::open(c.plain_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    con.set_response_timeout(Duration::from_secs(10));
    for i in 0..3000 {
        let _: () = con.set(format!("s:{i}"), i).await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor: u64 = 0;
    let mut calls = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("s:*")
            .arg("COUNT")
            .arg(100)
            .query_async(&mut con)
            .await
            .unwrap();
        for k in keys {
            assert!(seen.insert(k.clone()), "{k} returned twice");
        }
        calls += 1;
        assert!(calls < 10_000, "SCAN does not terminate");
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 3000);
    // Cluster ports scan only their own slots: together they see each key once.
    let mut total = 0;
    for addr in &c.cluster {
        let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        con.set_response_timeout(Duration::from_secs(10));
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).query_async(&mut con).await.unwrap();
            total += keys.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    assert_eq!(total, 3000);
}
