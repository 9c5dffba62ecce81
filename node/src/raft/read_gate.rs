//! Reads that arrive together share one confirmation.
//!
//! A linearizable read on the leader needs a confirmation (a read-index
//! round, or a lease check) that *began after the read arrived*: then every
//! write acknowledged before the read is in what the round waits to apply.
//! Any round that begins later serves every read that arrived before it
//! began. So a shard runs at most one round at a time: a read that arrives
//! while one is under way waits for it to end and joins the next, which one
//! of the waiting reads starts. Under load one round serves every read that
//! arrived during the last, where each read used to send its own request to
//! the Raft core (a message, a wake-up and a heartbeat broadcast per read).

use std::future::Future;

use parking_lot::Mutex;
use tokio::sync::Notify;

pub struct ReadGate<T, E> {
    state: Mutex<State<T, E>>,
    /// Told when a round ends (or its driver is dropped).
    ended: Notify,
}

struct State<T, E> {
    /// Rounds begun, and whether one is under way.
    begun: u64,
    running: bool,
    /// The newest round that ended, and what it found.
    ended: u64,
    result: Option<Result<T, E>>,
}

impl<T: Clone, E: Clone> Default for ReadGate<T, E> {
    fn default() -> Self {
        ReadGate { state: Mutex::new(State { begun: 0, running: false, ended: 0, result: None }), ended: Notify::new() }
    }
}

impl<T: Clone, E: Clone> ReadGate<T, E> {
    /// The result of a round `round` would run that begins after this call:
    /// runs it, or shares one another read runs.
    pub async fn confirm<F, Fut>(&self, round: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // The first round this read may use: the next to begin.
        let first = self.state.lock().begun + 1;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the state is looked at: no end is missed.
            ended.as_mut().enable();
            // (Decided under the lock, acted on after it: the guard is not
            // held across an await.)
            let mine = {
                let mut s = self.state.lock();
                if s.ended >= first {
                    if let Some(r) = &s.result {
                        return r.clone();
                    }
                }
                match s.running {
                    true => None,
                    false => {
                        s.running = true;
                        s.begun += 1;
                        Some(s.begun)
                    }
                }
            };
            if let Some(mine) = mine {
                return self.drive(mine, round).await;
            }
            ended.await;
        }
    }

    async fn drive<F, Fut>(&self, mine: u64, round: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // Dropped before the round ends (the read was cancelled): the gate
        // opens for the next read without a result.
        struct Abandoned<'a, T, E>(Option<&'a ReadGate<T, E>>);
        impl<T, E> Drop for Abandoned<'_, T, E> {
            fn drop(&mut self) {
                if let Some(g) = self.0 {
                    g.state.lock().running = false;
                    g.ended.notify_waiters();
                }
            }
        }
        let mut guard = Abandoned(Some(self));
        let r = round().await;
        guard.0 = None;
        {
            let mut s = self.state.lock();
            s.running = false;
            s.ended = mine;
            s.result = Some(r.clone());
        }
        self.ended.notify_waiters();
        r
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Every read is served by a round that began after it arrived, and
    /// reads that arrive together share rounds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rounds_begin_after_their_reads_and_are_shared() {
        let gate = Arc::new(ReadGate::<u64, String>::default());
        let clock = Arc::new(AtomicU64::new(0));
        let rounds = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let (gate, clock, rounds) = (gate.clone(), clock.clone(), rounds.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(i * 150)).await;
                let arrived = clock.fetch_add(1, Ordering::SeqCst);
                let began = gate
                    .confirm(|| async {
                        rounds.fetch_add(1, Ordering::SeqCst);
                        let began = clock.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        Ok(began)
                    })
                    .await
                    .unwrap();
                assert!(began > arrived, "read at {arrived} served by a round begun at {began}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = rounds.load(Ordering::SeqCst);
        assert!(n < 64, "{n} rounds for 64 overlapping reads");
    }

    /// A failed round fails the reads that share it; the next read starts
    /// a new round.
    #[tokio::test]
    async fn errors_are_shared_and_not_kept() {
        let gate = ReadGate::<(), String>::default();
        assert_eq!(gate.confirm(|| async { Err("not leader".to_string()) }).await, Err("not leader".into()));
        assert_eq!(gate.confirm(|| async { Ok(()) }).await, Ok(()));
    }

    /// A read dropped while it runs the round does not leave the gate shut.
    #[tokio::test]
    async fn a_dropped_driver_opens_the_gate() {
        let gate = Arc::new(ReadGate::<(), String>::default());
        let g = gate.clone();
        let stuck = tokio::spawn(async move { g.confirm(std::future::pending).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiting = {
            let g = gate.clone();
            tokio::spawn(async move { g.confirm(|| async { Ok(()) }).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        stuck.abort();
        let r = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("waiter stuck").unwrap();
        assert_eq!(r, Ok(()));
    }
}
