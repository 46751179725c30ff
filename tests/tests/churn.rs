//! Accounting under connection churn and crashes: `pgbench -C` (a fork and a backend
//! start per transaction) against a guarded server while random backends are SIGKILLed, so the
//! postmaster resets every session several times. Afterwards the guard's books must balance: the
//! domain total is exactly the sum of the live slots plus dynamic shared memory, and once idle
//! it is back within the documented bound (256 KiB of unused reservation per live process) of
//! the idle baseline taken before the churn.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oomguard_cluster::GuardedCluster;
use oomguard_segment::Snapshot;
use oomguard_tests::sessions::start_guarded;

const KIB: i64 = 1 << 10;
const MIB: i64 = 1 << 20;
/// Documented bound: a thread holds at most 2 x 128 KiB of unused reservation.
const PER_PROCESS_SLACK: i64 = 256 * KIB;
/// Rounds of churn, each ending in a crash-restart of the server.
const ROUNDS: usize = 3;

/// `pgbench -C -S` for `seconds` against the cluster, as the server's user.
fn pgbench(guarded: &GuardedCluster, args: &[&str]) -> Command {
    let cluster = &guarded.cluster;
    let mut command = cluster.program("pgbench").expect("a pgbench command");
    command
        .args(["-h"])
        .arg(cluster.socket_dir())
        .args(["-p", &cluster.port().to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null());
    command
}

fn churn(guarded: &GuardedCluster, seconds: u32) -> Child {
    pgbench(
        guarded,
        &[
            "-C",
            "-S",
            "-n",
            "-c",
            "2",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start pgbench")
}

/// Waits (at most 60 s) until the server accepts connections again after a crash-restart.
fn wait_until_accepting(guarded: &GuardedCluster) -> postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut client) = guarded.cluster.connect() {
            if client.simple_query("SELECT 1").is_ok() {
                return client;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server did not accept connections again within 60 s:\n{}",
            guarded.cluster.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The postmaster's line once every session is gone after a crash, before it starts over.
const RESET_LINE: &str = "all server processes terminated; reinitializing";

/// How many resets the server's log shows.
fn resets(guarded: &GuardedCluster) -> usize {
    guarded
        .cluster
        .log_text()
        .unwrap()
        .matches(RESET_LINE)
        .count()
}

/// Waits until the log shows a reset beyond the first `before`.
fn wait_for_reset(guarded: &GuardedCluster, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while resets(guarded) <= before {
        assert!(
            Instant::now() < deadline,
            "no reset within 60 s of killing a backend:\n{}",
            guarded.cluster.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of client backends other than the caller's own.
fn other_backends(client: &mut postgres::Client) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The guard's numbers once the domain is idle: dead processes' slots reaped (as `oomguard
/// status` does) and the books checked. A snapshot reads the total and then the slots while the
/// server's processes run, so a process that reserves in between makes one reading disagree:
/// the books must balance in a reading taken within 5 s, not in every one.
fn settled(guarded: &GuardedCluster) -> Snapshot {
    let segment = guarded.segment().unwrap();
    segment.reap_dead().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snapshot = segment.snapshot().unwrap();
        let slots: i64 = snapshot.processes.iter().map(|p| p.bytes).sum();
        let accounted = slots + snapshot.unslotted_bytes + snapshot.dynamic_shared_bytes;
        if snapshot.total_bytes == accounted {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "the total {} is not the sum of the live slots and dynamic shared memory {accounted} \
             in any reading within 5 s: {snapshot:#?}",
            snapshot.total_bytes
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn books_balance_after_connection_churn_and_crash_restarts() {
    // No autovacuum: its workers would come and go while the books are read.
    let guarded = start_guarded(&[("OOM_GUARD_LIMIT", "1GiB")], &[("autovacuum", "off")]);
    let status = pgbench(&guarded, &["-i", "-s", "1", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run pgbench -i");
    assert!(
        status.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut client = wait_until_accepting(&guarded);
    let baseline = settled(&guarded);

    let mut kills = 0;
    for round in 0..ROUNDS {
        let mut load = churn(&guarded, 3);
        // Kill a backend in the middle of the churn: the postmaster resets every session.
        let deadline = Instant::now() + Duration::from_secs(10);
        let victim = loop {
            if let Some(&pid) = other_backends(&mut client).first() {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: pgbench opened no backend"
            );
        };
        let resets_before = resets(&guarded);
        // SAFETY: kill(2) with a pid read from pg_stat_activity just now; a backend that has
        // ended meanwhile makes it fail with ESRCH, which the loop below tolerates.
        if unsafe { libc::kill(victim, libc::SIGKILL) } == 0 {
            kills += 1;
            // The postmaster resets only once it has reaped the victim: a session opened before
            // that would be cut by the reset (and pgbench below with it).
            wait_for_reset(&guarded, resets_before);
        }
        let _ = load.wait();
        client = wait_until_accepting(&guarded);
        let during = settled(&guarded);
        assert!(
            during.reaped_slots > 0,
            "round {round}: the killed processes' slots were reaped: {during:#?}"
        );
    }
    assert!(kills >= 1, "no backend could be killed");
    let log = guarded.cluster.log_text().unwrap();
    let resets = log
        .matches("terminating any other active server processes")
        .count();
    assert!(resets >= 1, "the kills reset the server: {resets} resets");

    // One more burst of churn without kills, then idle again.
    let mut load = churn(&guarded, 2);
    assert!(load.wait().unwrap().success(), "pgbench after the crashes");
    let after = settled(&guarded);
    let bound = PER_PROCESS_SLACK * after.processes.len() as i64 + MIB;
    eprintln!(
        "{kills} kills, {resets} resets, {} slots reaped, {} bytes reclaimed; idle total {} \
         before, {} after ({} live processes, bound {bound})",
        after.reaped_slots,
        after.reclaimed_orphan_bytes,
        baseline.total_bytes,
        after.total_bytes,
        after.processes.len()
    );
    assert!(
        (after.total_bytes - baseline.total_bytes).abs() <= bound,
        "idle total after the churn {} vs before {} (bound {bound}):\nbefore {baseline:#?}\nafter \
         {after:#?}",
        after.total_bytes,
        baseline.total_bytes
    );
    assert!(
        after.reclaimed_orphan_bytes > 0,
        "the killed processes' bytes were reclaimed"
    );
    drop(client);
}
