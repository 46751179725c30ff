//! Build script of oomguard-tests: compiles every `probes/*.c` into an executable of the same
//! stem in OUT_DIR (`cc -O1 -fno-builtin -pthread -rdynamic -Wall -Werror … -ldl`) and exports that directory as
//! `PROBE_DIR`, which `oomguard_tests::probe` uses.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let probes = manifest.join("probes");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());

    println!("cargo:rerun-if-changed={}", probes.display());
    println!("cargo:rerun-if-env-changed=CC");

    let mut sources: Vec<PathBuf> = fs::read_dir(&probes)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", probes.display()))
        .map(|entry| entry.expect("probe directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "c"))
        .collect();
    sources.sort();

    for src in &sources {
        // Directory mtime does not change when a file is edited in place: watch each file.
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src.file_stem().expect("probe file name");
        let exe = out_dir.join(stem);
        let status = Command::new(&cc)
            // -fno-builtin: gcc may delete a malloc whose block is never read, and the probes
            // allocate precisely to be counted.
            // -rdynamic: `fake_backend` exports PostgreSQL's globals for the guard's dlsym.
            .args([
                "-O1",
                "-fno-builtin",
                "-pthread",
                "-rdynamic",
                "-Wall",
                "-Werror",
                "-o",
            ])
            .arg(&exe)
            .arg(src)
            .arg("-ldl")
            .status()
            .unwrap_or_else(|e| panic!("could not run C compiler `{cc}`: {e}"));
        assert!(
            status.success(),
            "`{cc}` failed to compile {} ({status})",
            src.display()
        );
    }
    println!("cargo:rustc-env=PROBE_DIR={}", out_dir.display());
}
