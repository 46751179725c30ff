//! What the container images are made of, built here without a registry: the one install script
//! both Dockerfiles run (`packaging/docker/install-into-image.sh`), run into scratch roots and
//! checked file by file, the artifact image's root run with `chroot` (nothing but its own files:
//! it must be able to copy the guard out), `/etc/ld.so.preload` written by the script loading the
//! guard in that root, and `oomguard install --to` copying a guard that loads.
//!
//! The images themselves are built and run with podman by `containers.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use oomguard_tests::{
    is_root, library_path, mode, oomguard_binary, plain, run_output, workspace_root,
};

/// coreutils' chroot (by path: the commands run with an empty environment).
const CHROOT: &str = "/usr/sbin/chroot";
const MULTIARCH_LIBRARY: &str = "usr/lib/x86_64-linux-gnu/oomguard/liboomguard.so";

fn script() -> PathBuf {
    workspace_root().join("packaging/docker/install-into-image.sh")
}

/// A directory holding what the Dockerfiles' build stage hands to the script.
fn sources() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    fs::copy(oomguard_binary(), src.path().join("oomguard")).unwrap();
    fs::copy(library_path(), src.path().join("liboomguard.so")).unwrap();
    fs::copy(
        workspace_root().join("packaging/config/oomguard.conf"),
        src.path().join("oomguard.conf"),
    )
    .unwrap();
    src
}

/// Runs the script (`sh`, as the Dockerfiles do) into `root`; returns its stdout.
fn install_into(root: &Path, what: &str, src: &Path) -> String {
    let (out, stdout, stderr) = run_output(
        Command::new("sh")
            .arg(script())
            .arg(what)
            .arg(src)
            .env("DESTDIR", root)
            .env_remove("OOMGUARD_MULTIARCH"),
    );
    assert!(
        out.status.success(),
        "install-into-image.sh {what}: {}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

fn assert_root() {
    assert!(
        Path::new(CHROOT).is_file(),
        "{CHROOT} (coreutils) is missing"
    );
    assert!(is_root(), "this test runs chroot and needs root");
}

/// Whether a process started with `LD_PRELOAD=library` maps it (read from its own maps).
fn loads(library: &Path) -> bool {
    let segments = tempfile::tempdir().unwrap();
    let (out, stdout, stderr) = run_output(
        plain(&mut Command::new("grep"))
            .arg("-c")
            .arg(library)
            .arg("/proc/self/maps")
            .env("LD_PRELOAD", library)
            .env("OOM_GUARD_DIR", segments.path()),
    );
    assert!(
        stderr.is_empty(),
        "the loader complained about {}: {stderr}",
        library.display()
    );
    out.status.success() && stdout.trim().parse::<u32>().unwrap_or(0) > 0
}

#[test]
fn the_postgres_image_tree_has_the_guard_the_preload_line_and_the_config() {
    let src = sources();
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    fs::create_dir_all(&etc).unwrap();
    // An image may list another preload already: it stays, first.
    fs::write(etc.join("ld.so.preload"), "/usr/lib/libother.so\n").unwrap();

    let said = install_into(root.path(), "postgres", src.path());
    let binary = root.path().join("usr/bin/oomguard");
    let library = root.path().join(MULTIARCH_LIBRARY);
    let conf = root.path().join("etc/oomguard/oomguard.conf");
    for (path, want) in [(&binary, 0o755), (&library, 0o644), (&conf, 0o644)] {
        assert_eq!(mode(path), want, "{}", path.display());
        assert!(said.contains(&path.display().to_string()), "{said}");
    }
    assert_eq!(
        fs::read(&library).unwrap(),
        fs::read(library_path()).unwrap()
    );
    assert_eq!(
        fs::read(&binary).unwrap(),
        fs::read(oomguard_binary()).unwrap()
    );
    let preload = etc.join("ld.so.preload");
    let want = format!("/usr/lib/libother.so\n/{MULTIARCH_LIBRARY}\n");
    assert_eq!(fs::read_to_string(&preload).unwrap(), want);
    assert_eq!(mode(&preload), 0o644);

    // Again, over an edited configuration: the line is not repeated, the configuration is kept,
    // and no temporary file is left anywhere.
    fs::write(&conf, "OOM_GUARD_LIMIT=3Gi\n").unwrap();
    let said = install_into(root.path(), "postgres", src.path());
    assert!(said.contains("already lists"), "{said}");
    assert_eq!(fs::read_to_string(&preload).unwrap(), want);
    assert_eq!(fs::read_to_string(&conf).unwrap(), "OOM_GUARD_LIMIT=3Gi\n");
    let leftovers = Command::new("find")
        .arg(root.path())
        .args(["-name", "*.tmp"])
        .output()
        .unwrap();
    assert!(leftovers.stdout.is_empty(), "{leftovers:?}");

    // What was installed works: the CLI runs, the library loads.
    let (out, stdout, stderr) = run_output(plain(&mut Command::new(&binary)).arg("--version"));
    assert!(
        out.status.success() && stdout.starts_with("oomguard "),
        "{stdout}{stderr}"
    );
    assert!(loads(&library), "{} does not load", library.display());
}

#[test]
fn the_script_refuses_missing_sources_and_unknown_kinds() {
    let root = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let (out, _, stderr) = run_output(
        Command::new("sh")
            .arg(script())
            .arg("postgres")
            .arg(empty.path())
            .env("DESTDIR", root.path()),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&empty.path().join("oomguard").display().to_string()),
        "{stderr}"
    );
    assert_eq!(
        fs::read_dir(root.path()).unwrap().count(),
        0,
        "nothing installed"
    );
    let (out, _, stderr) = run_output(
        Command::new("sh")
            .arg(script())
            .arg("kubernetes")
            .arg(empty.path()),
    );
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("usage"), "{stderr}");
}

#[test]
fn the_artifact_image_root_copies_the_guard_out_by_itself() {
    assert_root();
    let src = sources();
    let root = tempfile::tempdir().unwrap();
    install_into(root.path(), "artifact", src.path());
    assert_eq!(mode(root.path().join("oomguard")), 0o755);
    assert_eq!(mode(root.path().join("liboomguard.so")), 0o644);
    assert!(
        root.path().join("lib64/ld-linux-x86-64.so.2").is_file(),
        "the dynamic loader is in the image"
    );

    // The init container: nothing but the image's files (chroot, no /proc, no shell).
    let (out, stdout, stderr) = run_output(
        Command::new(CHROOT)
            .arg(root.path())
            .args(["/oomguard", "install", "--to", "/shared"])
            .env_clear(),
    );
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert_eq!(
        stdout.lines().last(),
        Some("LD_PRELOAD=/shared/liboomguard.so"),
        "{stdout}"
    );
    let shared = root.path().join("shared");
    assert_eq!(
        fs::read(shared.join("liboomguard.so")).unwrap(),
        fs::read(library_path()).unwrap()
    );
    assert_eq!(mode(shared.join("oomguard")), 0o755);
    assert_eq!(mode(shared.join("liboomguard.so")), 0o644);
    // The copy loads where it landed (the volume, seen from the PostgreSQL container).
    assert!(loads(&shared.join("liboomguard.so")));

    // /etc/ld.so.preload as the postgres image gets it, in a root whose loader reads it: every
    // process there loads the guard without LD_PRELOAD. The guard's segment in OOM_GUARD_DIR
    // shows it ran (there is no /proc in the chroot to read maps from).
    install_into(root.path(), "postgres", src.path());
    fs::create_dir_all(root.path().join("segments")).unwrap();
    let (out, _, stderr) = run_output(
        Command::new(CHROOT)
            .arg(root.path())
            .args(["/usr/bin/oomguard", "--version"])
            .env_clear()
            .env("OOM_GUARD_DIR", "/segments")
            .env("OOM_GUARD_MODE", "report"),
    );
    assert!(out.status.success(), "{stderr}");
    let segments: Vec<String> = fs::read_dir(root.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        segments.iter().any(|name| name.starts_with("oomguard-")),
        "no segment: the guard was not loaded through /etc/ld.so.preload ({segments:?}; {stderr})"
    );
}

#[test]
fn oomguard_install_copies_a_guard_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("volume");
    let (out, stdout, stderr) = run_output(
        plain(&mut Command::new(oomguard_binary()))
            .args(["install", "--to"])
            .arg(&to),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let to = to.canonicalize().unwrap();
    let library = to.join("liboomguard.so");
    assert_eq!(
        stdout.lines().last().unwrap(),
        format!("LD_PRELOAD={}", library.display())
    );
    assert!(
        stdout.contains(&library_path().display().to_string()),
        "says where it copied from: {stdout}"
    );
    assert_eq!(
        fs::read(&library).unwrap(),
        fs::read(library_path()).unwrap()
    );
    assert_eq!(
        fs::read(to.join("oomguard")).unwrap(),
        fs::read(oomguard_binary()).unwrap()
    );
    assert_eq!(mode(&library), 0o644);
    assert_eq!(mode(to.join("oomguard")), 0o755);
    assert!(loads(&library), "the copied library loads");

    // The copy is self-sufficient: the copied binary finds the copied library next to itself,
    // and can install over a running copy of itself.
    let again = dir.path().join("again");
    let (out, stdout, stderr) = run_output(
        plain(&mut Command::new(to.join("oomguard")))
            .args(["install", "--to"])
            .arg(&again)
            .env_remove("OOM_GUARD_LIBRARY"),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("(from {})", library.display())),
        "{stdout}"
    );
    let (out, stdout, stderr) = run_output(
        plain(&mut Command::new(to.join("oomguard")))
            .args(["install", "--to"])
            .arg(&to),
    );
    assert!(out.status.success(), "over itself: {stdout}{stderr}");

    // Errors name the path.
    let file = dir.path().join("a-file");
    fs::write(&file, "").unwrap();
    let (out, _, stderr) = run_output(
        plain(&mut Command::new(oomguard_binary()))
            .args(["install", "--to"])
            .arg(&file),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("not a directory"),
        "{stderr}"
    );
}
