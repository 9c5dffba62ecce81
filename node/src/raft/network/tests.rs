use super::split_by_bytes;

#[test]
fn appends_are_split_by_bytes() {
    let v: Vec<Vec<u8>> = vec![vec![0; 10], vec![0; 10], vec![0; 100], vec![0; 5]];
    let runs: Vec<usize> = split_by_bytes(v, 30).iter().map(|(e, _)| e.len()).collect();
    assert_eq!(runs, [2, 1, 1], "an oversized entry goes alone");
    assert_eq!(split_by_bytes(Vec::<Vec<u8>>::new(), 30).len(), 1, "a heartbeat is one empty request");
}
