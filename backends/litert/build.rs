//! Marks a build without RedisAI's test data (see `tests/build/testdata.rs`).
include!("../../tests/build/testdata.rs");

fn main() {
    testdata_cfg();
}
