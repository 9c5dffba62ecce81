use super::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-logfile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn append_reopen_truncate_purge() {
    let d = tmpdir("basic");
    let p = d.join("log");
    let (mut log, recs) = LogFile::open(&p).unwrap();
    assert!(recs.is_empty());
    log.append((1..=5).map(|i| (i, &b"abc"[..]))).unwrap();
    log.truncate_from(4).unwrap();
    log.append([(4, &b"new"[..])]).unwrap();
    drop(log);
    let (mut log, recs) = LogFile::open(&p).unwrap();
    assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(recs[3].1, b"new");
    log.purge_upto(2).unwrap();
    log.append([(5, &b"five"[..])]).unwrap();
    drop(log);
    let (log, recs) = LogFile::open(&p).unwrap();
    assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(log.read(4).unwrap().unwrap(), b"new");
    assert_eq!(log.read(2).unwrap(), None);
}

#[test]
fn large_payloads_are_written_directly_and_read_back() {
    let d = tmpdir("large");
    let p = d.join("log");
    let (mut log, _) = LogFile::open(&p).unwrap();
    let big: Vec<u8> = (0..(DIRECT_WRITE * 3 + 7)).map(|i| (i % 251) as u8).collect();
    log.append([(1, &b"small"[..]), (2, &big[..]), (3, &b"tail"[..])]).unwrap();
    assert_eq!(log.read(2).unwrap().unwrap(), big);
    assert_eq!(log.read(3).unwrap().unwrap(), b"tail");
    drop(log);
    let (log, recs) = LogFile::open(&p).unwrap();
    assert_eq!(recs[1].1, big);
    assert_eq!(log.read(1).unwrap().unwrap(), b"small");
}

#[test]
fn torn_tail_is_dropped_and_corruption_refused() {
    let d = tmpdir("torn");
    let p = d.join("log");
    let (mut log, _) = LogFile::open(&p).unwrap();
    log.append((1..=3).map(|i| (i, &b"payload"[..]))).unwrap();
    let len = log.bytes();
    drop(log);
    // A crash mid-append leaves half a record.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 3).unwrap();
    let (_, recs) = LogFile::open(&p).unwrap();
    assert_eq!(recs.len(), 2);
    // A flipped byte inside a complete record is corruption.
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[HEADER + 2] ^= 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let err = LogFile::open(&p).err().expect("corruption detected");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn atomic_files_detect_corruption() {
    let d = tmpdir("atomic");
    let p = d.join("vote");
    assert!(read_atomic(&p).unwrap().is_none());
    write_atomic(&p, b"hello").unwrap();
    assert_eq!(read_atomic(&p).unwrap().unwrap(), b"hello");
    let mut b = std::fs::read(&p).unwrap();
    b[5] ^= 1;
    std::fs::write(&p, &b).unwrap();
    assert!(read_atomic(&p).is_err());
}
