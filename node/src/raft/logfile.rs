//! The on-disk Raft log of one group: an append-only file of checksummed
//! records, fsync'd before an append is acknowledged.
//!
//! Record layout: `len: u32 LE | crc32(index ‖ payload): u32 LE | index: u64 LE | payload`.
//! On open every record is read back and verified; a torn tail (a record cut
//! short by a crash mid-append, which was never acknowledged) is truncated
//! away, while a record whose checksum does not match is corruption and
//! refuses to load. Small state (vote, committed index) lives in
//! [`write_atomic`] files: written to a temporary file, fsync'd, renamed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 16;
/// Payloads at least this large skip the batch buffer.
const DIRECT_WRITE: usize = 64 << 10;
/// Largest single record (a bound against reading garbage lengths).
pub const MAX_RECORD: usize = 1 << 30;

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Stored records: `(index, payload)`.
pub type Records = Vec<(u64, Vec<u8>)>;

pub struct LogFile {
    path: PathBuf,
    file: File,
    /// `(index, file offset)` of every record, in order.
    offsets: Vec<(u64, u64)>,
    len: u64,
}

impl LogFile {
    /// Opens (or creates) the log at `path`, returning it with every stored
    /// record (tests; the store reads records one by one).
    #[cfg(test)]
    pub fn open(path: &Path) -> io::Result<(LogFile, Records)> {
        let mut records = Vec::new();
        let file = Self::open_with(path, |index, payload| {
            records.push((index, payload));
            Ok(())
        })?;
        Ok((file, records))
    }

    /// Opens (or creates) the log at `path`, handing each verified record to
    /// `each` as it is read (so a large log is never all in memory).
    pub fn open_with(path: &Path, mut each: impl FnMut(u64, Vec<u8>) -> io::Result<()>) -> io::Result<LogFile> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let total = file.metadata()?.len();
        let mut reader = BufReader::new(&mut file);
        let mut offsets = Vec::new();
        let mut pos = 0u64;
        let mut header = [0u8; HEADER];
        while pos < total {
            if total - pos < HEADER as u64 {
                break; // torn header
            }
            reader.read_exact(&mut header)?;
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            if len > MAX_RECORD {
                return Err(corrupt(path, format!("record at offset {pos} claims {len} bytes")));
            }
            if total - pos - (HEADER as u64) < len as u64 {
                break; // torn payload
            }
            let mut payload = vec![0u8; len];
            reader.read_exact(&mut payload)?;
            if checksum(index, &payload) != crc {
                return Err(corrupt(path, format!("checksum mismatch in record {index} at offset {pos}")));
            }
            if let Some((prev, _)) = offsets.last() {
                if index != prev + 1 {
                    return Err(corrupt(path, format!("record {index} follows record {prev}")));
                }
            }
            offsets.push((index, pos));
            each(index, payload)?;
            pos += (HEADER + len) as u64;
        }
        drop(reader);
        if pos < total {
            tracing::warn!(path = %path.display(), kept = pos, dropped = total - pos, "truncating torn log tail");
            file.set_len(pos)?;
            file.sync_all()?;
        }
        Ok(LogFile { path: path.to_path_buf(), file, offsets, len: pos })
    }

    /// Appends records (consecutive indexes) and fsyncs once for all of them.
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = (u64, &'a [u8])>) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut new_offsets = Vec::new();
        let mut pos = self.len;
        let file = &mut self.file;
        let mut write = |buf: &mut Vec<u8>, large: Option<&[u8]>| -> io::Result<()> {
            file.write_all(buf)?;
            buf.clear();
            large.map_or(Ok(()), |p| file.write_all(p))
        };
        let mut result = Ok(());
        for (index, payload) in records {
            if let Some((prev, _)) = new_offsets.last().or(self.offsets.last()) {
                if index != prev + 1 {
                    // Large records before it may already be written: the
                    // rollback below removes them.
                    result =
                        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("append of {index} after {prev}")));
                    break;
                }
            }
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&checksum(index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            // Large payloads (model parts) are written from where they
            // are, not copied into the batch buffer.
            if payload.len() >= DIRECT_WRITE {
                result = write(&mut buf, Some(payload));
                if result.is_err() {
                    break;
                }
            } else {
                buf.extend_from_slice(payload);
            }
            new_offsets.push((index, pos));
            pos += (HEADER + payload.len()) as u64;
        }
        if new_offsets.is_empty() && result.is_ok() {
            return Ok(());
        }
        let written = result.and_then(|_| write(&mut buf, None));
        if let Err(e) = written.and_then(|_| self.file.sync_data()) {
            // Leave no partial record behind (e.g. the disk filled up).
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.offsets.extend(new_offsets);
        self.len = pos;
        Ok(())
    }

    /// The payload of record `index`, read back from the file and verified
    /// (`None` if the file holds no such record).
    pub fn read(&self, index: u64) -> io::Result<Option<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        let Ok(at) = self.offsets.binary_search_by_key(&index, |(i, _)| *i) else {
            return Ok(None);
        };
        let pos = self.offsets[at].1;
        let mut header = [0u8; HEADER];
        self.file.read_exact_at(&mut header, pos)?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let stored = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if stored != index || len > MAX_RECORD {
            return Err(corrupt(&self.path, format!("record {index} at offset {pos} has a bad header")));
        }
        let mut payload = vec![0u8; len];
        self.file.read_exact_at(&mut payload, pos + HEADER as u64)?;
        if checksum(index, &payload) != crc {
            return Err(corrupt(&self.path, format!("checksum mismatch in record {index} at offset {pos}")));
        }
        Ok(Some(payload))
    }

    /// Removes every record with index >= `from`.
    pub fn truncate_from(&mut self, from: u64) -> io::Result<()> {
        let keep = self.offsets.partition_point(|(i, _)| *i < from);
        if keep == self.offsets.len() {
            return Ok(());
        }
        let cut = self.offsets[keep].1;
        self.file.set_len(cut)?;
        self.file.sync_all()?;
        self.offsets.truncate(keep);
        self.len = cut;
        Ok(())
    }

    /// Removes every record with index <= `upto` by rewriting the rest into a
    /// new file that atomically replaces this one.
    pub fn purge_upto(&mut self, upto: u64) -> io::Result<()> {
        let drop_n = self.offsets.partition_point(|(i, _)| *i <= upto);
        if drop_n == 0 {
            return Ok(());
        }
        let start = self.offsets.get(drop_n).map_or(self.len, |(_, o)| *o);
        let tmp = self.path.with_extension("purge");
        {
            let mut src = File::open(&self.path)?;
            src.seek(SeekFrom::Start(start))?;
            let mut dst = File::create(&tmp)?;
            io::copy(&mut src.take(self.len - start), &mut dst)?;
            dst.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)?;
        self.file = OpenOptions::new().read(true).append(true).open(&self.path)?;
        self.offsets = self.offsets[drop_n..].iter().map(|(i, o)| (*i, o - start)).collect();
        self.len -= start;
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.len
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `data` to `path` atomically and durably, with a checksum.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_parts(path, &[data])
}

/// [`write_atomic`] of `parts` joined, without joining them in memory.
pub fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut crc = crc32fast::Hasher::new();
        parts.iter().for_each(|p| crc.update(p));
        let mut f = File::create(&tmp)?;
        f.write_all(&crc.finalize().to_le_bytes())?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Reads a file written by [`write_atomic`]; `None` if it does not exist.
/// The vector has room past the contents to lay a model out in place
/// ([`tessera_common::blob::layout_room`]): a snapshot's models are restored
/// in the memory it was read into.
pub fn read_atomic(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(len + tessera_common::blob::layout_room(len));
    file.read_to_end(&mut bytes)?;
    if bytes.len() < 4 || crc32fast::hash(&bytes[4..]).to_le_bytes() != bytes[..4] {
        return Err(corrupt(path, "checksum mismatch"));
    }
    // In place: a snapshot can be as large as the shard.
    bytes.drain(..4);
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests;
