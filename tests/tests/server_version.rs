//! Which PostgreSQL the server tests run against. `tools/test-versions` runs the server tests
//! once per major (Debian 12's own, a Debian root of a newer release through `OOM_GUARD_PG_ROOT`,
//! unpacked binaries through `OOM_GUARD_PG_BINDIR`) and sets `OOMGUARD_EXPECT_PG_MAJOR`: this
//! test fails when the server that actually started is another major, so a wrong path cannot
//! make the whole matrix test one version.

use oomguard_tests::sessions::start_guarded;

#[test]
fn the_server_under_test_is_the_expected_major_and_is_guarded() {
    let guarded = start_guarded(&[("OOM_GUARD_MODE", "report")], &[]);
    let mut client = guarded.cluster.connect().unwrap();
    let version_num: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get(0);
    let version: String = client.query_one("SELECT version()", &[]).unwrap().get(0);
    let jit: String = client.query_one("SHOW jit", &[]).unwrap().get(0);
    eprintln!("server under test: {version}, jit {jit}");
    // OOM_GUARD_PG_JIT=on must really reach the server.
    if std::env::var(oomguard_cluster::JIT_ENV).is_ok_and(|value| value == "on") {
        assert_eq!(jit, "on");
    }
    // start_guarded (GuardedCluster::start) checked that the postmaster maps the library; a
    // backend must too.
    let pid = oomguard_cluster::backend_pid(&mut client).unwrap();
    assert!(oomguard_cluster::pid_maps_library(pid as u32, "liboomguard.so").unwrap());
    match std::env::var("OOMGUARD_EXPECT_PG_MAJOR") {
        Ok(expected) if !expected.is_empty() => {
            let expected: i32 = expected
                .parse()
                .expect("OOMGUARD_EXPECT_PG_MAJOR is a major version number such as 17");
            assert_eq!(version_num / 10000, expected, "{version}");
        }
        _ => assert!(version_num >= 150000, "{version}"),
    }
}
