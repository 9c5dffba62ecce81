//! Marks a build without RedisAI's test data (see `build/testdata.rs`).
include!("build/testdata.rs");

fn main() {
    testdata_cfg();
}
