//! The script benchmark links libtorch (through the torch backend crate,
//! which reports where it is): its binaries get an rpath to it, so they run
//! without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TESSERA_TORCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TESSERA_TORCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}");
    }
}
