//! Compiles the small C++ shims (TorchScript `forward` schema; scripts) against the
//! libtorch tree torch-sys links, and gives binaries an rpath to it.
use std::path::PathBuf;

// Marks a build without RedisAI's test data (see `tests/build/testdata.rs`).
include!("../../tests/build/testdata.rs");

fn main() {
    testdata_cfg();
    // torch-sys (links = "tch") exports its library dir as DEP_TCH_LIBTORCH_LIB.
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB"));
    let root = lib.parent().expect("libtorch root").to_path_buf();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-changed=src/script.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/shim.cpp")
        .file("src/script.cpp")
        .compile("tessera_torch_shim");
    // torch-sys links torch_cpu/torch/c10 but leaves no rpath in binaries:
    // this crate's tests get one here, dependents' binaries via `links`.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:libtorch_lib={}", lib.display());
}
