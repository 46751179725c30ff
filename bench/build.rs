//! Build script of oomguard-bench: compiles the C sides of the benchmark into OUT_DIR with the
//! system C compiler (`$CC`, default `cc`) and exports their paths for `src/main.rs`:
//!
//! - `workloads/alloc_loop.c`, the workload program, as `OOMGUARD_ALLOC_LOOP`;
//! - `workloads/passthrough.c`, the floor (a pure pass-through `LD_PRELOAD` interposer), as the
//!   shared library `libpassthrough.so`, exported as `OOMGUARD_PASSTHROUGH`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let workloads = manifest.join("workloads");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    println!("cargo:rerun-if-env-changed=CC");

    let alloc_loop = out_dir.join("alloc_loop");
    compile(
        &cc,
        &workloads.join("alloc_loop.c"),
        &alloc_loop,
        &["-O2", "-pthread"],
        &["-ldl"],
    );
    println!(
        "cargo:rustc-env=OOMGUARD_ALLOC_LOOP={}",
        alloc_loop.display()
    );

    // -fno-plt: the forwarding jump goes through the GOT directly, as the Rust guard's calls to
    // `__libc_*` do, so the floor carries no PLT stub the guard does not have either.
    let passthrough = out_dir.join("libpassthrough.so");
    compile(
        &cc,
        &workloads.join("passthrough.c"),
        &passthrough,
        &["-O2", "-fPIC", "-shared", "-fno-plt"],
        &[],
    );
    println!(
        "cargo:rustc-env=OOMGUARD_PASSTHROUGH={}",
        passthrough.display()
    );
}

/// Compiles one C file with warnings as errors, or fails the build saying which file and why.
fn compile(cc: &str, src: &Path, out: &Path, flags: &[&str], libs: &[&str]) {
    println!("cargo:rerun-if-changed={}", src.display());
    let status = Command::new(cc)
        .args(flags)
        .args(["-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg(src)
        .args(libs)
        .status()
        .unwrap_or_else(|e| panic!("could not run C compiler `{cc}`: {e}"));
    assert!(
        status.success(),
        "`{cc}` failed to compile {} ({status})",
        src.display()
    );
}
