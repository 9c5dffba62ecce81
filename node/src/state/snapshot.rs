//! A shard's snapshot payload: the last proposal's timestamp, the cluster
//! map and users (meta group), the unfinished chunked writes and the
//! keyspace dump, and reading it back.

use std::io;

use super::chunks::Chunks;
use super::meta::ClusterMap;
use super::users::Users;
use crate::data::keyspace::Keyspace;
use crate::util::{decode, encode};

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Snapshot payload: `last_ts`, then the cluster map with the users after
/// it, and the unfinished chunked writes (each section a length and its
/// encoding), then the keyspace dump; as pieces that share the models'
/// bytes and the writes' parts (the file is written from them: a shard's
/// models are never copied into one buffer).
pub fn pieces(last_ts: i64, map: &ClusterMap, users: &Users, chunks: &Chunks, ks: &Keyspace) -> Vec<bytes::Bytes> {
    let mut out = crate::data::Pieces::default();
    out.extend(&last_ts.to_le_bytes());
    let mut map = encode(map);
    map.extend(encode(users));
    out.extend(&(map.len() as u64).to_le_bytes());
    out.extend(&map);
    let size = postcard::experimental::serialized_size(chunks).expect("chunks always serialize");
    out.extend(&(size as u64).to_le_bytes());
    let before = out.len();
    chunks.encode_to(&mut out);
    debug_assert_eq!(out.len() - before, size, "chunks encoded as postcard does");
    ks.dump_to(&mut out);
    out.finish()
}

/// A snapshot payload, restored.
pub struct Restored {
    pub last_ts: i64,
    pub map: ClusterMap,
    pub users: Users,
    pub chunks: Chunks,
    pub ks: Keyspace,
}

/// Restores a snapshot payload; model blobs stay in `b` (slices of it, see
/// [`Keyspace::load_shared`]).
pub fn load(b: bytes::Bytes) -> io::Result<Restored> {
    let truncated = || invalid("snapshot is truncated");
    let word = |at: usize| -> io::Result<u64> {
        let bytes = b.get(at..at + 8).ok_or_else(truncated)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    };
    let ts = word(0)? as i64;
    let mut at = 8usize;
    let mut section = || -> io::Result<&[u8]> {
        let len = usize::try_from(word(at)?).map_err(invalid)?;
        let s = b.get(at + 8..(at + 8).saturating_add(len)).ok_or_else(truncated)?;
        at += 8 + len;
        Ok(s)
    };
    // (A map section with nothing after the map was written before users
    // were kept: there are none.)
    let (map, rest) = postcard::take_from_bytes::<ClusterMap>(section()?).map_err(invalid)?;
    let users = if rest.is_empty() { Users::default() } else { decode(rest)? };
    let chunks = decode(section()?)?;
    let dump = b.slice(at..);
    drop(b);
    let ks = Keyspace::load_shared(dump).map_err(invalid)?;
    Ok(Restored { last_ts: ts, map, users, chunks, ks })
}
