//! Client-side helpers the end-to-end tests share: a redis-rs connection to
//! a cluster's router, commands as string slices, and replies checked the
//! way the tests read them.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis::{Connection, RedisResult, Value};

use crate::Cluster;

/// One cluster at a time within a test binary: these tests load real
/// runtimes and move large models; seven debug clusters starting at once on
/// a 2-core box can take longer than the harness waits for a first election.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection to the cluster's plain router port (20 s read timeout).
pub fn connect(c: &Cluster) -> Connection {
    let client = redis::Client::open(c.plain_url()).unwrap();
    let con = client.get_connection_with_timeout(Duration::from_secs(10)).unwrap();
    con.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    con
}

/// The error's text as it was on the wire; panics on a reply.
pub fn err_text(r: RedisResult<Value>) -> String {
    match r {
        Err(e) => {
            // redis-rs splits "CODE detail"; put the wire text back together.
            let code = e.code().unwrap_or("");
            let detail = e.detail().unwrap_or("");
            if code.is_empty() {
                detail.to_owned()
            } else if detail.is_empty() {
                code.to_owned()
            } else {
                format!("{code} {detail}")
            }
        }
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// Runs a command given as words.
pub fn exec(con: &mut Connection, args: &[&str]) -> RedisResult<Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con)
}

/// Panics unless the reply is `+OK`.
pub fn ok(v: RedisResult<Value>) {
    match v {
        Ok(Value::Okay) => {}
        Ok(Value::SimpleString(s)) if s == "OK" => {}
        other => panic!("expected OK, got {other:?}"),
    }
}
