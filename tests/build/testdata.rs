// Included by the build scripts of the crates whose tests read RedisAI's test
// models (`tessera_tests::testdata`): where that folder is absent (a clone
// without `../shared` beside it), they set `no_testdata`, and those tests
// are ignored, so the suite counts them as skipped rather than failing or
// passing without running.

/// Sets `cfg(no_testdata)` unless `TESSERA_TESTDATA` (or `../shared/testdata`
/// beside the checkout) holds `redisai/`.
fn testdata_cfg() {
    println!("cargo::rustc-check-cfg=cfg(no_testdata)");
    println!("cargo::rerun-if-env-changed=TESSERA_TESTDATA");
    let root = match std::env::var_os("TESSERA_TESTDATA") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            // `../shared/testdata` beside the checkout (whose root holds Cargo.lock).
            let manifest = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
            let root = manifest.ancestors().find(|d| d.join("Cargo.lock").is_file()).unwrap_or(&manifest);
            root.join("../shared/testdata")
        }
    };
    let dir = root.join("redisai");
    if dir.is_dir() {
        println!("cargo::rerun-if-changed={}", dir.display());
    } else {
        // (Not watched while absent: cargo counts a missing path as changed
        // and would run this, and rebuild the crate, on every build.)
        println!(
            "cargo::warning=no RedisAI test data at {}: the tests that need it are ignored (set TESSERA_TESTDATA to run them)",
            dir.display()
        );
        println!("cargo::rustc-cfg=no_testdata");
    }
}
