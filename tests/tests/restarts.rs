//! Container restarts do not pile segments up. Each restart of a container starts a new PID
//! namespace, and the default domain name includes it: without clean-up, every restart would
//! leave a segment (641 KiB) behind, until a small segment directory (a 16 MiB emptyDir) was full
//! and the guard had to account privately, unseen by the exporter. A process that creates a
//! segment first removes this user's segments that no live process holds. Fifty "restarts" here
//! are fifty real PID namespaces (`unshare --pid`), every tenth ended by SIGKILL.

use std::path::Path;

use oomguard_tests::{is_root, Probe};

const RESTARTS: usize = 50;
/// The restart's own segment, and the one of the `unshare` that starts it: the wrapper runs under
/// the guard too, in this test's namespace, so its domain is the same every time.
const LIVE_DOMAINS: usize = 2;

fn segments(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("oomguard-"))
        .collect()
}

#[test]
fn fifty_restarts_leave_one_segment_not_fifty() {
    assert!(
        is_root(),
        "this test starts processes in PID namespaces of their own (unshare --pid): run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    for restart in 1..=RESTARTS {
        let mut probe = Probe::start_wrapped(
            &["unshare", "--pid", "--fork", "--kill-child"],
            "accounting",
            dir.path(),
            &["hold", "1048576", "1"],
            &[],
        );
        probe.expect("held");
        let present = segments(dir.path());
        assert!(
            present.len() <= LIVE_DOMAINS,
            "restart {restart}: the segments of earlier restarts are still there: {present:?}"
        );
        if restart % 10 == 0 {
            probe.kill();
        } else {
            probe.proceed();
            probe.expect("freed");
            probe.proceed();
            probe.finish();
        }
    }
    let left = segments(dir.path());
    assert!(left.len() <= LIVE_DOMAINS, "{left:?}");
}
