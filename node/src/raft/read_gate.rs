//! Reads that arrive together share one confirmation.
//!
//! A linearizable read on the leader needs a confirmation (a read-index
//! round, or a lease check) that *began after the read arrived*: then every
//! write acknowledged before the read is in the log index the round returns,
//! which the read waits to see applied. Any round that begins later serves
//! every read that arrived before it began. So a shard runs at most one
//! round at a time: a read that arrives while one is under way waits for it
//! to end and joins the next, which the first read to see the gate open
//! starts. Under load one round serves every read that arrived during the
//! last, where each read used to send its own request to the Raft core.
//!
//! A round runs in a task of its own, so a read whose caller stops polling
//! it (a session blocked on a slow client) holds up no other read.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

pub struct ReadGate<T, E> {
    state: Mutex<State<T, E>>,
    /// Told when a round ends.
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

impl<T, E> Default for ReadGate<T, E> {
    fn default() -> Self {
        ReadGate { state: Mutex::new(State { begun: 0, running: false, ended: 0, result: None }), ended: Notify::new() }
    }
}

impl<T: Clone + Send + 'static, E: Clone + Send + 'static> ReadGate<T, E> {
    /// The result of a round (`round()`) that begins after this call: one
    /// this read starts, or one another read started.
    pub async fn confirm<F, Fut>(self: &Arc<Self>, round: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        // The first round this read may use: the next to begin.
        let first = self.state.lock().begun + 1;
        let mut round = Some(round);
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the state is looked at: no end is missed.
            ended.as_mut().enable();
            // (Decided under the lock, acted on after it: the guard is not
            // held across an await.)
            let begin = {
                let mut s = self.state.lock();
                if s.ended >= first {
                    if let Some(r) = &s.result {
                        return r.clone();
                    }
                }
                // (A read whose round was dropped unfinished, at shutdown,
                // leaves the next to another read.)
                match s.running || round.is_none() {
                    true => None,
                    false => {
                        s.running = true;
                        s.begun += 1;
                        Some(s.begun)
                    }
                }
            };
            if let Some(n) = begin {
                // The round this read starts is one it may use (n >= first).
                let f = round.take().expect("checked above");
                self.spawn(n, f());
            }
            ended.await;
        }
    }

    fn spawn(self: &Arc<Self>, n: u64, round: impl Future<Output = Result<T, E>> + Send + 'static) {
        // Dropped before the round ends (the runtime is shutting down): the
        // gate opens for the next read without a result.
        struct Open<T, E>(Option<Arc<ReadGate<T, E>>>);
        impl<T, E> Drop for Open<T, E> {
            fn drop(&mut self) {
                if let Some(g) = self.0.take() {
                    g.state.lock().running = false;
                    g.ended.notify_waiters();
                }
            }
        }
        let mut open = Open(Some(self.clone()));
        tokio::spawn(async move {
            let r = round.await;
            let gate = open.0.take().expect("set until the round ends");
            {
                let mut s = gate.state.lock();
                s.running = false;
                s.ended = n;
                s.result = Some(r);
            }
            gate.ended.notify_waiters();
        });
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
                let (r, c) = (rounds.clone(), clock.clone());
                let began = gate
                    .confirm(move || async move {
                        r.fetch_add(1, Ordering::SeqCst);
                        let began = c.fetch_add(1, Ordering::SeqCst);
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
        let gate = Arc::new(gate);
        assert_eq!(gate.confirm(|| async { Err("not leader".to_string()) }).await, Err("not leader".into()));
        assert_eq!(gate.confirm(|| async { Ok(()) }).await, Ok(()));
    }

    /// A read dropped while its round runs stops no other read: the round
    /// ends in its own task and serves the reads that wait for it.
    #[tokio::test]
    async fn a_dropped_read_does_not_hold_up_others() {
        let gate = Arc::new(ReadGate::<(), String>::default());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let g = gate.clone();
        let first = tokio::spawn(async move {
            g.confirm(|| async move {
                let _ = released.await;
                Ok(())
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiting = {
            let g = gate.clone();
            tokio::spawn(async move { g.confirm(|| async { Ok(()) }).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        let _ = release.send(());
        let r = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("waiter stuck").unwrap();
        assert_eq!(r, Ok(()));
    }
}
