//! Build script of oomguard-bench: compiles `workloads/alloc_loop.c` into OUT_DIR with the
//! system C compiler and exports its path as `OOMGUARD_ALLOC_LOOP` for `src/main.rs`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src = manifest.join("workloads").join("alloc_loop.c");
    let exe = out_dir.join("alloc_loop");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());

    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CC");

    let status = Command::new(&cc)
        .args(["-O2", "-pthread", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap_or_else(|e| panic!("could not run C compiler `{cc}`: {e}"));
    assert!(
        status.success(),
        "`{cc}` failed to compile {} ({status})",
        src.display()
    );
    println!("cargo:rustc-env=OOMGUARD_ALLOC_LOOP={}", exe.display());
}
