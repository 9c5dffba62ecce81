use bytes::Bytes;
use tessera_common::command::NodeCommand;

use super::*;
use crate::state::chunks::tests::parts;

#[test]
fn a_snapshot_shares_its_large_bytes_and_reads_back() {
    let op = LogOp::Command(NodeCommand::Del { keys: vec![Bytes::from(vec![7u8; 100_000]); 3] });
    let p = parts(&op, 3);
    let mut chunks = Chunks::default();
    assert!(chunks.add(9, 0, 3, p[0].clone(), 10, 2).is_none());
    assert!(chunks.add(9, 1, 3, p[1].clone(), 10, 2).is_none());
    assert!(chunks.add(4, 0, 5, Bytes::from_static(b"tiny"), 11, 2).is_none());
    let mut out = crate::data::Pieces::default();
    chunks.encode_to(&mut out);
    let pieces = out.finish();
    assert_eq!(pieces.concat(), encode(&chunks), "postcard's encoding");
    assert!(pieces.iter().any(|x| x.as_ptr() == p[1].as_ptr()), "a large part is shared, not copied");
    let mut ks = Keyspace::new();
    exec::apply(&mut ks, 1, &LogOp::Command(NodeCommand::Del { keys: vec![] }), &mut Vec::new());
    let d = ShardData {
        ks,
        last_applied: None,
        last_membership: StoredMembership::default(),
        last_ts: 77,
        map: ClusterMap::default(),
        users: Default::default(),
        chunks,
    };
    let r = snapshot::load(snapshot::pieces(d.last_ts, &d.map, &d.users, &d.chunks, &d.ks).concat().into()).unwrap();
    assert_eq!((r.last_ts, r.chunks.len()), (77, 2));
    assert_eq!(encode(&r.chunks), encode(&d.chunks));
}

#[test]
fn users_ride_in_the_map_section_and_older_snapshots_have_none() {
    use crate::state::users::Users;
    use crate::state::users::UsersOp;
    let mut users = Users::default();
    users.apply(&UsersOp::Put { name: "t1".into(), line: "user t1 on ~{t1}* resetchannels -@all".into(), version: 0 });
    let (map, chunks, ks) = (ClusterMap::default(), Chunks::default(), Keyspace::new());
    let r = snapshot::load(snapshot::pieces(5, &map, &users, &chunks, &ks).concat().into()).unwrap();
    assert_eq!(r.users, users);
    // The layout before users were kept: the map section holds the map only.
    let mut old = 5i64.to_le_bytes().to_vec();
    for section in [encode(&map), encode(&chunks)] {
        old.extend((section.len() as u64).to_le_bytes());
        old.extend(section);
    }
    old.extend(snapshot::pieces(5, &map, &users, &chunks, &ks).concat().split_off(old.len() + encode(&users).len()));
    let r = snapshot::load(old.into()).unwrap();
    assert_eq!((r.last_ts, r.users, r.map), (5, Users::default(), map));
}

#[test]
fn the_snapshot_file_is_written_in_pieces_and_read_back_in_place() {
    let dir = std::env::temp_dir().join(format!("tessera-sm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let meta = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() };
    let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    super::super::logfile::write_atomic_parts(&dir.join("snapshot"), &[&snapshot_header(&meta, data.len()), &data])
        .unwrap();
    // The layout files had before, so they stay readable.
    let file = read_atomic(&dir.join("snapshot")).unwrap().unwrap();
    assert_eq!(file, encode(&SnapshotFileRef { meta: &meta, data: &data }));
    let (back, payload) = read_snapshot(&dir).unwrap().unwrap();
    assert_eq!((back, payload), (meta, data));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_fenced_write_applies_only_in_its_term() {
    let set = |v: &str| NodeCommand::Set {
        key: Bytes::from("k"),
        value: Bytes::from(v.to_owned()),
        expire: None,
        keep_ttl: false,
        cond: tessera_common::command::node::SetCond::Always,
        get: false,
    };
    let mut ks = crate::data::keyspace::Keyspace::default();
    let get = |ks: &crate::data::keyspace::Keyspace| match ks.get(b"k", 0).map(|e| &e.value) {
        Some(crate::data::keyspace::Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    assert_eq!(
        exec::apply_in_term(&mut ks, 0, 5, LogOp::Fenced { term: 5, cmd: set("a") }, &mut Vec::new()),
        Reply::ok()
    );
    assert_eq!(get(&ks), Some(Bytes::from("a")));
    // Logged by a later leader of the same node: refused, nothing written.
    assert_eq!(
        exec::apply_in_term(&mut ks, 0, 6, LogOp::Fenced { term: 5, cmd: set("b") }, &mut Vec::new()),
        NodeError::FencedOut.to_reply()
    );
    assert_eq!(get(&ks), Some(Bytes::from("a")));
    // Chunked: the assembled operation keeps its fence.
    let op = LogOp::Fenced { term: 6, cmd: set("c") };
    let p = parts(&op, 2);
    let mut c = Chunks::default();
    assert!(c.add(1, 0, 2, p[0].clone(), 1, 1).is_none());
    let whole = join(c.add(1, 1, 2, p[1].clone(), 1, 1).unwrap().unwrap()).unwrap();
    assert_eq!(exec::apply_in_term(&mut ks, 0, 6, whole, &mut Vec::new()), Reply::ok());
    assert_eq!(get(&ks), Some(Bytes::from("c")));
}
