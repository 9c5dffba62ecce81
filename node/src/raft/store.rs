//! The durable Raft log store of one group.
//!
//! Entries are kept in memory (readable as soon as `append` returns) and
//! written by one writer thread per group to its [`LogFile`]: the thread takes
//! every append queued since its last write, writes them and fsyncs **once**
//! (group commit), then reports each append flushed to openraft. Truncation
//! and purging go through the same thread so file order is log order. Vote and
//! committed index are small checksummed files replaced atomically.
//!
//! Large entries (model parts, up to 4 MiB each) leave memory once they are
//! on disk: the map keeps their log id and reads go back to the file
//! (through the writer thread, which owns it). A 600 MB model would
//! otherwise stay in memory as log entries until the next snapshot.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::logfile::{read_atomic, write_atomic, LogFile, Records};
use super::types::C;
use crate::util::{decode, encode};

/// Entries whose record is at least this large are dropped from memory once
/// written.
const SPILL_BYTES: usize = 256 << 10;

/// At most this many bytes of on-disk entries are read for one replication
/// call (counted as [`CHUNK_ESTIMATE`] each: spilled entries are model parts).
const READ_BUDGET: usize = 64 << 20;
const CHUNK_ESTIMATE: usize = 4 << 20;

/// An entry in memory, or one only on disk (its log id kept). Entries were
/// this size in the map before; boxing would add an allocation to each.
#[allow(clippy::large_enum_variant)]
enum Held {
    Entry(EntryOf<C>),
    OnDisk(LogIdOf<C>),
}

impl Held {
    fn log_id(&self) -> LogIdOf<C> {
        match self {
            Held::Entry(e) => e.log_id,
            Held::OnDisk(id) => *id,
        }
    }
}

#[derive(Default)]
struct Mem {
    entries: BTreeMap<u64, Held>,
    last_purged: Option<LogIdOf<C>>,
    vote: Option<VoteOf<C>>,
    committed: Option<LogIdOf<C>>,
}

/// An encoded record to append; `spill` is set for large ones (their log
/// id), which leave memory once written.
struct Record {
    index: u64,
    bytes: Vec<u8>,
    spill: Option<LogIdOf<C>>,
}

enum WriterCmd {
    Append(Vec<Record>, IOFlushed<C>),
    /// Reads records back from the file (entries no longer in memory).
    Read(Vec<u64>, oneshot::Sender<io::Result<Records>>),
    Truncate(u64, oneshot::Sender<io::Result<()>>),
    Purge(u64, oneshot::Sender<io::Result<()>>),
}

#[derive(Clone)]
pub struct LogStore {
    dir: PathBuf,
    mem: Arc<Mutex<Mem>>,
    writer: std_mpsc::Sender<WriterCmd>,
}

impl LogStore {
    /// Opens the group's log under `dir`, verifying every record.
    pub fn open(dir: &Path, group: u32) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let vote: Option<VoteOf<C>> = read_atomic(&dir.join("vote"))?.map(|b| decode(&b)).transpose()?;
        let mut mem = Mem {
            // A restarted leader must not resume its old leadership: with a
            // committed vote openraft would lead again in the same term
            // without a fresh no-op, and its read index would be its stale
            // committed index (a stale read). Reloaded as an uncommitted vote
            // it still never votes twice in that term, and leads again only
            // through an election in a higher term.
            vote: vote.map(|mut v| {
                v.committed = false;
                v
            }),
            committed: read_log_id(&dir.join("committed"))?,
            last_purged: read_log_id(&dir.join("purged"))?,
            ..Mem::default()
        };
        let purged = mem.last_purged.map_or(0, |l| l.index + 1);
        // Record by record: large ones are not kept (they stay on disk).
        let file = LogFile::open_with(&dir.join("raft.log"), |index, bytes| {
            if index < purged {
                return Ok(());
            }
            let entry: EntryOf<C> = decode(&bytes)?;
            if entry.log_id.index != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("record {index} holds entry {}", entry.log_id.index),
                ));
            }
            let held = if bytes.len() >= SPILL_BYTES { Held::OnDisk(entry.log_id) } else { Held::Entry(entry) };
            mem.entries.insert(index, held);
            Ok(())
        })?;
        // The committed index is only a hint; never let it point past what
        // this replica has on disk (openraft would try to apply entries it
        // cannot read).
        let last = mem.entries.values().next_back().map(Held::log_id).or(mem.last_purged);
        if let (Some(c), Some(l)) = (mem.committed, last) {
            if c.index > l.index {
                tracing::warn!(group, committed = c.index, last = l.index, "committed hint ahead of the log; clamped");
                mem.committed = Some(l);
            }
        } else if mem.committed.is_some() && last.is_none() {
            mem.committed = None;
        }
        let (tx, rx) = std_mpsc::channel();
        let mem = Arc::new(Mutex::new(mem));
        std::thread::Builder::new().name(format!("raft-log-{group}")).spawn({
            // What the hint file holds: read here, not when the thread
            // starts (openraft may have saved a newer index by then).
            let hint = Hint::new(dir.join("committed"), mem.lock().committed);
            let mem = mem.clone();
            move || writer_loop(file, rx, hint, mem)
        })?;
        Ok(LogStore { dir: dir.to_path_buf(), mem, writer: tx })
    }

    fn send(&self, cmd: WriterCmd) -> io::Result<()> {
        self.writer.send(cmd).map_err(|_| io::Error::other("raft log writer thread is gone"))
    }

    async fn persist_small(&self, name: &'static str, data: Vec<u8>) -> io::Result<()> {
        let path = self.dir.join(name);
        tokio::task::spawn_blocking(move || write_atomic(&path, &data)).await.map_err(io::Error::other)?
    }
}

/// How often, at most, the committed-index hint is rewritten. It is only a
/// hint (a restarted replica re-learns commitment from its leader, and
/// openraft takes the snapshot's index when the hint is older), so it is
/// not worth a file replacement per write: that cost four syscalls on every
/// replica for every commit. Nor is it worth a wake-up of this thread per
/// commit: the writer reads the committed index from memory (where
/// `save_committed` puts it) after a batch it writes, and again every
/// `HINT_EVERY` until the batch's entries are committed (see [`Hint`]).
const HINT_EVERY: Duration = Duration::from_millis(200);
const HINT_TRIES: u32 = 25;

/// The committed-index hint file, as the log writer keeps it.
struct Hint {
    path: PathBuf,
    /// What the file holds, and when the writer last looked.
    written: Option<LogIdOf<C>>,
    looked: Instant,
    /// The last index the writer wrote; while the committed index is behind
    /// it, the writer looks again every HINT_EVERY (at most HINT_TRIES
    /// times: entries a new leader replaces are never committed).
    appended: u64,
    tries: u32,
}

impl Hint {
    fn new(path: PathBuf, written: Option<LogIdOf<C>>) -> Hint {
        Hint { path, written, looked: Instant::now(), appended: 0, tries: 0 }
    }

    /// Writes the committed index if it moved; whether to look again.
    fn update(&mut self, mem: &Mutex<Mem>) -> bool {
        let c = mem.lock().committed;
        if c != self.written {
            if let Err(e) = write_hint(&self.path, &encode_log_id(c)) {
                tracing::warn!(error = %e, "could not record the committed index");
            }
            self.written = c;
        }
        self.looked = Instant::now();
        self.tries += 1;
        c.map_or(0, |c| c.index + 1) <= self.appended && self.tries < HINT_TRIES
    }
}

fn writer_loop(mut file: LogFile, rx: std_mpsc::Receiver<WriterCmd>, mut hint: Hint, mem: Arc<Mutex<Mem>>) {
    let mut due = false;
    loop {
        let first = match due {
            false => rx.recv().map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
            true => rx.recv_timeout(HINT_EVERY.saturating_sub(hint.looked.elapsed())),
        };
        let first = match first {
            Ok(cmd) => cmd,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                due = hint.update(&mem);
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                hint.update(&mem);
                return;
            }
        };
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let mut batch: Vec<Record> = Vec::new();
        let mut callbacks: Vec<IOFlushed<C>> = Vec::new();
        let mut failed = false;
        // The last index this batch writes (0: it writes none).
        let mut last = 0u64;
        let mut flush = |file: &mut LogFile, batch: &mut Vec<Record>, callbacks: &mut Vec<IOFlushed<C>>| {
            let res = file.append(batch.iter().map(|r| (r.index, r.bytes.as_slice())));
            if let Err(e) = &res {
                tracing::error!(error = %e, "raft log append failed");
                failed = true;
            } else {
                // Written: large entries now live only in the file (unless
                // a truncation replaced the entry at that index meanwhile).
                let mut m = mem.lock();
                for r in batch.iter() {
                    if let Some(id) = r.spill {
                        if let Some(held) = m.entries.get_mut(&r.index).filter(|h| h.log_id() == id) {
                            *held = Held::OnDisk(id);
                        }
                    }
                }
            }
            metrics::counter!("tessera_raft_log_fsyncs_total").increment(u64::from(!batch.is_empty()));
            for cb in callbacks.drain(..) {
                cb.io_completed(res.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
            }
            batch.clear();
        };
        for cmd in pending {
            match cmd {
                WriterCmd::Append(records, cb) => {
                    last = records.iter().fold(last, |l, r| l.max(r.index));
                    batch.extend(records);
                    callbacks.push(cb);
                }
                WriterCmd::Read(indexes, done) => {
                    // Only records already written are ever asked for.
                    let mut out = Vec::with_capacity(indexes.len());
                    let mut result = Ok(());
                    for i in indexes {
                        match file.read(i) {
                            Ok(Some(bytes)) => out.push((i, bytes)),
                            Ok(None) => break, // purged or truncated meanwhile
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    let _ = done.send(result.map(|_| out));
                }
                WriterCmd::Truncate(from, done) => {
                    flush(&mut file, &mut batch, &mut callbacks);
                    let _ = done.send(file.truncate_from(from));
                }
                WriterCmd::Purge(upto, done) => {
                    flush(&mut file, &mut batch, &mut callbacks);
                    let _ = done.send(file.purge_upto(upto));
                }
            }
        }
        flush(&mut file, &mut batch, &mut callbacks);
        if !failed && last > 0 {
            (hint.appended, hint.tries) = (last, 0);
            due = true;
        }
        // Off openraft's path, and not fsync'd on its own (see HINT_EVERY).
        // (Also after batches of reads: a steady stream of them never lets
        // the wait above time out.)
        if due && hint.looked.elapsed() >= HINT_EVERY {
            due = hint.update(&mem);
        }
    }
}

/// The `committed` and `purged` files hold an encoded `Option<LogId>`; these
/// two are the only way they are written and read.
fn encode_log_id(id: Option<LogIdOf<C>>) -> Vec<u8> {
    encode(&id)
}

fn read_log_id(path: &Path) -> io::Result<Option<LogIdOf<C>>> {
    Ok(read_atomic(path)?.map(|b| decode::<Option<LogIdOf<C>>>(&b)).transpose()?.flatten())
}

fn write_hint(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut bytes = crc32fast::hash(data).to_le_bytes().to_vec();
    bytes.extend_from_slice(data);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        // What is in memory, and the entries to read back from the file.
        // Per index: the entry, or the log id of one to read back.
        type Slot = Result<EntryOf<C>, LogIdOf<C>>;
        let held: Vec<(u64, Slot)> = self
            .mem
            .lock()
            .entries
            .range(range)
            .map(|(i, h)| match h {
                Held::Entry(e) => (*i, Ok(e.clone())),
                Held::OnDisk(id) => (*i, Err(*id)),
            })
            .collect();
        let missing: Vec<u64> = held.iter().filter(|(_, e)| e.is_err()).map(|(i, _)| *i).collect();
        let mut read: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        if !missing.is_empty() {
            let (tx, rx) = oneshot::channel();
            self.send(WriterCmd::Read(missing, tx))?;
            read = rx.await.map_err(io::Error::other)??.into_iter().collect();
        }
        // A contiguous run from the start: an entry purged, or truncated
        // and replaced, while it was being read ends the answer there.
        let mut out = Vec::with_capacity(held.len());
        for (i, e) in held {
            match e {
                Ok(e) => out.push(e),
                Err(id) => match read.remove(&i).map(|bytes| decode::<EntryOf<C>>(&bytes)).transpose()? {
                    Some(e) if e.log_id == id => out.push(e),
                    _ => break,
                },
            }
        }
        Ok(out)
    }

    /// Replication's reads: at most [`READ_BUDGET`] bytes of on-disk
    /// (large) entries per call, and always at least one entry, so a
    /// lagging follower is not sent hundreds of model parts at once.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<EntryOf<C>>, io::Error> {
        let end = {
            let m = self.mem.lock();
            let mut spilled = 0usize;
            let mut stop = end;
            for (i, h) in m.entries.range(start..end) {
                if let Held::OnDisk(_) = h {
                    spilled += 1;
                    if spilled > 1 && spilled * CHUNK_ESTIMATE > READ_BUDGET {
                        stop = *i;
                        break;
                    }
                }
            }
            stop
        };
        self.try_get_log_entries(start..end).await
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.mem.lock().vote)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let m = self.mem.lock();
        let last = m.entries.values().next_back().map(Held::log_id).or(m.last_purged);
        Ok(LogState { last_purged_log_id: m.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.persist_small("vote", encode(vote)).await?;
        self.mem.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        // The log writer copies it to the hint file (see HINT_EVERY).
        self.mem.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.mem.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        {
            let mut m = self.mem.lock();
            for e in entries {
                let bytes = encode(&e);
                let spill = (bytes.len() >= SPILL_BYTES).then_some(e.log_id);
                records.push(Record { index: e.log_id.index, bytes, spill });
                m.entries.insert(e.log_id.index, Held::Entry(e));
            }
        }
        self.send(WriterCmd::Append(records, callback))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let (tx, rx) = oneshot::channel();
        self.send(WriterCmd::Truncate(from, tx))?;
        rx.await.map_err(io::Error::other)??;
        self.mem.lock().entries.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        self.persist_small("purged", encode_log_id(Some(log_id))).await?;
        let (tx, rx) = oneshot::channel();
        self.send(WriterCmd::Purge(log_id.index, tx))?;
        rx.await.map_err(io::Error::other)??;
        let mut m = self.mem.lock();
        m.last_purged = Some(log_id);
        m.entries = m.entries.split_off(&(log_id.index + 1));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
