use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use openraft::{ErrorSubject, ErrorVerb};

use super::*;
use crate::raft::sm::StateMachine;

/// Regression: these files were written as `Option<LogId>` but read as
/// `LogId`, so a restarted replica took a garbage committed index (and a
/// wrong purge point) — caught by openraft's assertion when a restarted
/// follower met a log id at that index from another term.
#[test]
fn committed_and_purged_hints_read_back_what_was_written() {
    let dir = std::env::temp_dir().join(format!("tessera-hints-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let id = openraft::LogId::new(openraft::vote::leader_id_adv::LeaderId { term: 2, node_id: 1 }, 5);
    write_hint(&dir.join("committed"), &encode_log_id(Some(id))).unwrap();
    assert_eq!(read_log_id(&dir.join("committed")).unwrap(), Some(id));
    write_atomic(&dir.join("purged"), &encode_log_id(Some(id))).unwrap();
    assert_eq!(read_log_id(&dir.join("purged")).unwrap(), Some(id));
    write_hint(&dir.join("committed"), &encode_log_id(None)).unwrap();
    assert_eq!(read_log_id(&dir.join("committed")).unwrap(), None);
    assert_eq!(read_log_id(&dir.join("missing")).unwrap(), None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model-sized entry leaves memory once written, reads back whole
/// (in a range with in-memory neighbours), and is reloaded as on-disk
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_spill_to_disk_and_read_back() {
    use crate::state::{LogOp, Proposal};
    let dir = std::env::temp_dir().join(format!("tessera-spill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = TempDir(dir.clone());
    let leader = openraft::vote::leader_id_adv::LeaderId { term: 1, node_id: 1 };
    let entry = |index: u64, data: Vec<u8>| EntryOf::<C> {
        log_id: openraft::LogId::new(leader, index),
        payload: openraft::EntryPayload::Normal(Proposal {
            ts: 0,
            op: LogOp::Chunk { id: 7, part: index as u32, parts: 3, data: data.into() },
        }),
    };
    let big: Vec<u8> = (0..(SPILL_BYTES * 2)).map(|i| (i % 253) as u8).collect();
    let want = vec![entry(1, b"a".to_vec()), entry(2, big.clone()), entry(3, b"c".to_vec())];
    let mut log = LogStore::open(&dir, 0).unwrap();
    log.append(want.clone(), IOFlushed::noop()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !matches!(log.mem.lock().entries.get(&2), Some(Held::OnDisk(_))) {
        assert!(std::time::Instant::now() < deadline, "the large entry stayed in memory");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(matches!(log.mem.lock().entries.get(&1), Some(Held::Entry(_))));
    assert_eq!(log.try_get_log_entries(1..=3).await.unwrap(), want);
    drop(log);
    let mut log = LogStore::open(&dir, 0).unwrap();
    assert!(matches!(log.mem.lock().entries.get(&2), Some(Held::OnDisk(_))));
    assert_eq!(log.try_get_log_entries(2..).await.unwrap(), want[1..]);
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(want[2].log_id));
}

/// The committed index reaches the hint file without a message to the
/// writer per commit: the writer reads it after the batch it wrote, and a
/// restarted store reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_index_reaches_the_hint_after_a_batch() {
    use crate::state::{LogOp, Proposal};
    let dir = std::env::temp_dir().join(format!("tessera-hint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = TempDir(dir.clone());
    let leader = openraft::vote::leader_id_adv::LeaderId { term: 1, node_id: 1 };
    let entry = |index: u64| EntryOf::<C> {
        log_id: openraft::LogId::new(leader, index),
        payload: openraft::EntryPayload::Normal(Proposal { ts: 0, op: LogOp::PurgeExpired }),
    };
    let mut log = LogStore::open(&dir, 0).unwrap();
    log.append(vec![entry(1), entry(2)], IOFlushed::noop()).await.unwrap();
    let committed = Some(entry(2).log_id);
    log.save_committed(committed).await.unwrap();
    // Within HINT_EVERY of the batch; the deadline only bounds a failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while read_log_id(&dir.join("committed")).unwrap() != committed {
        assert!(std::time::Instant::now() < deadline, "the committed index never reached the hint file");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(log);
    let mut log = LogStore::open(&dir, 0).unwrap();
    assert_eq!(log.read_committed().await.unwrap(), committed);
}

/// Removes the test's folder when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder;

impl StoreBuilder<C, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<C>> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tessera-raft-suite-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let io = |e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Read, e);
        let log = LogStore::open(&dir.join("log"), 0).map_err(io)?;
        let sm = StateMachine::open(&dir.join("sm")).map_err(io)?;
        Ok((TempDir(dir), log, sm))
    }
}

/// openraft's own conformance suite, against our real file-backed log
/// store and state machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("storage suite");
}
