use super::*;

fn s(v: &str) -> Entry {
    Entry { value: Value::Str(Bytes::copy_from_slice(v.as_bytes())), expire_at: None }
}

#[test]
fn insert_get_remove_and_accounting() {
    let mut ks = Keyspace::new();
    ks.insert(Bytes::from_static(b"a"), s("1"));
    ks.insert(Bytes::from_static(b"a"), s("22"));
    assert_eq!(ks.len(), 1);
    assert_eq!(ks.value_bytes(), 3);
    assert!(ks.remove(b"a").is_some());
    assert_eq!((ks.len(), ks.value_bytes()), (0, 0));
    assert!(ks.remove(b"a").is_none());
}

#[test]
fn expiry_is_decided_by_the_given_clock() {
    let mut ks = Keyspace::new();
    ks.insert(Bytes::from_static(b"k"), Entry { expire_at: Some(100), ..s("v") });
    ks.insert(Bytes::from_static(b"p"), s("v"));
    assert!(ks.get(b"k", 99).is_some());
    assert!(ks.get(b"k", 100).is_none());
    assert_eq!(ks.purge_expired(99), 0);
    assert_eq!(ks.purge_expired(100), 1);
    assert_eq!(ks.len(), 1);
    assert_eq!(ks.volatile(), 0);
    // Overwriting a volatile key with a persistent one clears its index entry.
    ks.insert(Bytes::from_static(b"x"), Entry { expire_at: Some(5), ..s("v") });
    ks.insert(Bytes::from_static(b"x"), s("w"));
    assert_eq!(ks.purge_expired(10), 0);
    assert!(ks.get(b"x", 10).is_some());
}

#[test]
fn dump_and_load_roundtrip() {
    let mut ks = Keyspace::new();
    ks.insert(Bytes::from_static(b"a"), s("1"));
    ks.insert(Bytes::from_static(b"b"), Entry { expire_at: Some(77), ..s("2") });
    assert_eq!(ks.dump().len(), ks.dump_size(), "the dump is sized exactly");
    let back = Keyspace::load(&ks.dump()).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back.get(b"b", 0).unwrap().expire_at, Some(77));
    assert_eq!(back.volatile(), 1);
    assert!(Keyspace::load(&ks.dump()[..10]).is_err());
}

#[test]
fn a_model_held_in_parts_is_dumped_whole_and_loads_as_a_slice() {
    use tessera_backend::{Backend, LoadOptions};
    let parts = Blob::from_parts([Bytes::from(vec![1u8; 1000]), Bytes::from(vec![2u8; 3000])]);
    let def = ModelDef {
        backend: tessera_common::model::BackendKind::Onnx,
        device_name: "CPU".into(),
        device: tessera_common::model::Device::Cpu(None),
        tag: Bytes::from_static(b"t"),
        batchsize: 2,
        minbatchsize: 0,
        minbatchtimeout: 0,
        inputs: Vec::new(),
        outputs: Vec::new(),
        blob: parts.clone(),
    };
    let loaded = tessera_backend::mock::MockBackend.load(b"mock:rows", &LoadOptions::default()).unwrap();
    let mut ks = Keyspace::new();
    let model = Value::Model(crate::engine::model::StoredModel::with_loaded(def.clone(), loaded));
    ks.insert(Bytes::from_static(b"m"), Entry { value: model.clone(), expire_at: None });
    ks.insert(Bytes::from_static(b"s"), s("x"));
    let dump = Bytes::from(ks.dump());
    assert_eq!(dump.len(), ks.dump_size(), "the dump is sized exactly");
    let back = Keyspace::load_shared(dump.clone()).unwrap();
    let Some(Entry { value: Value::Model(m), .. }) = back.get(b"m", 0) else { panic!("no model") };
    assert_eq!(m.def, ModelDef { blob: Blob::default(), ..def });
    assert_eq!(m.blob(), parts);
    let at = m.blob().parts()[0].as_ptr() as usize;
    assert!((dump.as_ptr() as usize..dump.as_ptr() as usize + dump.len()).contains(&at), "not copied");
    assert_eq!(back.get(b"s", 0).unwrap().value, s("x").value);
    assert!(Keyspace::load(&dump[..dump.len() - 1]).is_err());
    // The format before (no version word, the count first) is refused
    // with a reason, not misread.
    let old = Keyspace::load(&dump[8..]).err().unwrap().to_string();
    assert!(old.contains("another format"), "{old}");
    // A string whose record is followed by raw bytes is corrupt.
    let mut one = Keyspace::new();
    one.insert(Bytes::from_static(b"s"), s("x"));
    let mut d = one.dump();
    let rec = u64::from_le_bytes(d[16..24].try_into().unwrap()) as usize;
    d[24 + rec..32 + rec].copy_from_slice(&1u64.to_le_bytes());
    d.push(0);
    assert!(Keyspace::load(&d).is_err());
    d[24 + rec..32 + rec].copy_from_slice(&0u64.to_le_bytes());
    d.pop();
    assert_eq!(Keyspace::load(&d).unwrap().len(), 1);
}

#[test]
fn flush_respects_scope() {
    let mut ks = Keyspace::new();
    for k in ["foo", "bar", "hello"] {
        ks.insert(Bytes::copy_from_slice(k.as_bytes()), s("v"));
    }
    let scope = SlotScope(vec![tessera_common::slot::SlotRange::new(0, 8191)]);
    assert_eq!(ks.flush(&scope), 2); // bar (5061), hello (866)
    assert_eq!(ks.len(), 1);
}
