//! End to end: the real `oomguard exporter` binary (target/release/oomguard) serving the segment of
//! a guarded PostgreSQL over loopback HTTP, scraped with a plain HTTP/1.0 GET. A hog query's
//! refusal shows up in `oomguard_denied_allocations_total`; the classic-format scrape passes
//! `promtool check metrics` (Debian package `prometheus`; the test fails without it); SIGTERM
//! stops the exporter with status 0. Also: an empty directory is `oomguard_up 0`, not a crash;
//! stale domains (their processes exited or were SIGKILLed) are counted in
//! `oomguard_stale_domains` and not exported; a bad `--listen` is a clear error. Refusals are
//! split by cause in `oomguard_refusals_total`: a guarded probe refused on its own budget counts
//! as `backend_budget`, one refused over its domain's limit as `domain_limit`.

use std::io::Write;
use std::process::{Command, Stdio};

use oomguard_cli::demo::HOG_QUERY;
use oomguard_cli::exporter::{LISTEN_ENV, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use oomguard_tests::sessions::{expect_out_of_memory, start_guarded};
use oomguard_tests::{http_get, oomguard_command, promtool, stale_and_live_domains, Exporter};

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Values of the samples named exactly `name` (any labels).
fn samples(body: &str, name: &str) -> Vec<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(|line| {
            let value = line.rsplit(' ').next().unwrap();
            value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"))
        })
        .collect()
}

/// The one sample named `name`.
fn sample(body: &str, name: &str) -> f64 {
    match samples(body, name).as_slice() {
        [value] => *value,
        other => panic!("expected one {name} sample, found {other:?} in\n{body}"),
    }
}

fn scrape_openmetrics(addr: &str) -> String {
    let response = http_get(addr, "/metrics", Some(PROMETHEUS_ACCEPT));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some(OPENMETRICS_CONTENT_TYPE)
    );
    assert!(response.body.ends_with("# EOF\n"), "{}", response.body);
    response.body
}

/// Runs `promtool check metrics` on `text`; panics with its complaints unless it passes.
fn assert_promtool_passes(text: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "promtool check metrics failed ({}):\n{}{}\n--- input\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_refused_hog_shows_in_the_metrics_which_promtool_accepts_and_sigterm_exits_0() {
    promtool(); // fail before starting anything when it is missing
    let guarded = start_guarded(
        &[("OOM_GUARD_LIMIT", "256Mi"), ("OOM_GUARD_MODE", "enforce")],
        &[],
    );
    let exporter = Exporter::start(&guarded.segment_dir);
    let addr = exporter.addr.clone();

    let index = http_get(&addr, "/", None);
    assert_eq!(index.status, 200);
    assert!(index.body.contains("href=\"/metrics\""), "{}", index.body);
    assert_eq!(http_get(&addr, "/other", None).status, 404);

    let mut bystander = guarded.cluster.connect().unwrap();
    let mut hog = guarded.cluster.connect().unwrap();
    let before = scrape_openmetrics(&addr);
    assert_eq!(sample(&before, "oomguard_up"), 1.0, "{before}");
    assert_eq!(
        sample(&before, "oomguard_denied_allocations_total"),
        0.0,
        "{before}"
    );
    assert_eq!(
        sample(&before, "oomguard_limit_bytes"),
        (256u64 << 20) as f64
    );
    let domain = guarded.segment().unwrap();
    let domain = domain.path().file_name().unwrap().to_string_lossy();
    assert!(
        before.contains(&format!("oomguard_allocated_bytes{{domain=\"{domain}\"}} ")),
        "series are labelled with the segment's file name:\n{before}"
    );
    assert!(!before.contains("pid="), "no per-process series");

    expect_out_of_memory(&mut hog, &[HOG_QUERY]);

    let after = scrape_openmetrics(&addr);
    assert!(
        sample(&after, "oomguard_denied_allocations_total") >= 1.0,
        "{after}"
    );
    assert!(
        sample(&after, "oomguard_denied_bytes_total") > 0.0,
        "{after}"
    );
    assert!(
        sample(&after, "oomguard_tracked_processes") >= 5.0,
        "postmaster, auxiliaries and two client backends: {after}"
    );
    assert_eq!(sample(&after, "oomguard_exporter_read_errors_total"), 0.0);
    assert!(
        sample(&after, "oomguard_allocated_peak_bytes")
            >= sample(&after, "oomguard_allocated_bytes")
    );

    let classic = http_get(&addr, "/metrics", None);
    assert_eq!(classic.status, 200);
    assert_eq!(classic.header("content-type"), Some(TEXT_CONTENT_TYPE));
    assert!(sample(&classic.body, "oomguard_denied_allocations_total") >= 1.0);
    assert_promtool_passes(&classic.body);

    assert_eq!(
        bystander
            .query_one("SELECT 1", &[])
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    let stderr = exporter.stderr_so_far();
    assert!(stderr.is_empty(), "no read errors were logged: {stderr:#?}");
    let status = exporter.terminate();
    assert_eq!(status.code(), Some(0), "{status}");
    drop(hog);
    drop(bystander);
}

/// The value of `oomguard_refusals_total` for `domain` and `cause`.
fn refusals(body: &str, domain: &str, cause: &str) -> f64 {
    let series = format!("oomguard_refusals_total{{domain=\"{domain}\",cause=\"{cause}\"}} ");
    let values: Vec<f64> = body
        .lines()
        .filter_map(|line| line.strip_prefix(&series))
        .map(|value| value.parse().unwrap())
        .collect();
    match values.as_slice() {
        [value] => *value,
        other => panic!("expected one {series}sample, found {other:?} in\n{body}"),
    }
}

#[test]
fn a_budget_refusal_is_counted_under_its_cause_not_as_the_domain_short_of_memory() {
    promtool();
    let dir = tempfile::tempdir().unwrap();
    // One domain refused past its own budget, one past its limit.
    let (budget, full) = oomguard_tests::budget_and_full_domains(dir.path());
    let exporter = Exporter::start(dir.path());
    let body = scrape_openmetrics(&exporter.addr);
    assert_eq!(sample(&body, "oomguard_up"), 1.0, "{body}");
    assert!(body.contains("# TYPE oomguard_refusals counter"), "{body}");
    assert!(
        refusals(&body, "oomguard-budget", "backend_budget") >= 1.0,
        "{body}"
    );
    assert_eq!(
        refusals(&body, "oomguard-budget", "domain_limit"),
        0.0,
        "{body}"
    );
    assert_eq!(
        refusals(&body, "oomguard-budget", "kernel_tight"),
        0.0,
        "{body}"
    );
    assert!(
        refusals(&body, "oomguard-full", "domain_limit") >= 1.0,
        "{body}"
    );
    assert_eq!(
        refusals(&body, "oomguard-full", "backend_budget"),
        0.0,
        "{body}"
    );
    assert_eq!(
        refusals(&body, "oomguard-full", "kernel_tight"),
        0.0,
        "{body}"
    );
    for domain in ["oomguard-budget", "oomguard-full"] {
        let by_cause: f64 = ["domain_limit", "kernel_tight", "backend_budget"]
            .iter()
            .map(|cause| refusals(&body, domain, cause))
            .sum();
        let total = format!("oomguard_denied_allocations_total{{domain=\"{domain}\"}} {by_cause}");
        assert!(
            body.lines().any(|line| line == total),
            "the causes add up to the refusals ({total}):\n{body}"
        );
    }
    let classic = http_get(&exporter.addr, "/metrics", None);
    assert!(refusals(&classic.body, "oomguard-budget", "backend_budget") >= 1.0);
    assert!(
        classic.body.contains("# HELP oomguard_refusals_total "),
        "{}",
        classic.body
    );
    assert_promtool_passes(&classic.body);
    assert_eq!(exporter.terminate().code(), Some(0));
    for mut probe in [budget, full] {
        probe.proceed();
        probe.finish();
    }
}

#[test]
fn an_empty_directory_is_served_as_up_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut exporter = Exporter::start(dir.path());
    for _ in 0..2 {
        let body = scrape_openmetrics(&exporter.addr);
        assert_eq!(sample(&body, "oomguard_up"), 0.0, "{body}");
        assert!(sample(&body, "oomguard_exporter_read_errors_total") >= 1.0);
        assert!(samples(&body, "oomguard_allocated_bytes").is_empty());
    }
    let classic = http_get(&exporter.addr, "/metrics", Some("text/plain"));
    assert_eq!(classic.header("content-type"), Some(TEXT_CONTENT_TYPE));
    assert_promtool_passes(&classic.body);
    assert!(exporter.is_running(), "still serving");
    let stderr = exporter.stderr_so_far();
    assert!(
        stderr
            .iter()
            .any(|line| line.contains("no oomguard segment")),
        "the reason is logged: {stderr:#?}"
    );
    assert_eq!(exporter.terminate().code(), Some(0));
}

#[test]
fn stale_domains_are_counted_not_exported() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = stale_and_live_domains(dir.path());
    let exporter = Exporter::start(dir.path());

    let body = scrape_openmetrics(&exporter.addr);
    assert_eq!(sample(&body, "oomguard_up"), 1.0, "{body}");
    assert_eq!(sample(&body, "oomguard_stale_domains"), 1.0, "{body}");
    assert_eq!(sample(&body, "oomguard_exporter_read_errors_total"), 0.0);
    assert!(
        sample(&body, "oomguard_allocated_bytes") >= (8u64 << 20) as f64,
        "only the live domain: {body}"
    );
    assert!(
        body.contains("oomguard_allocated_bytes{domain=\"oomguard-live\"} "),
        "{body}"
    );
    assert!(!body.contains("oomguard-old"), "{body}");
    let classic = http_get(&exporter.addr, "/metrics", None);
    assert_eq!(sample(&classic.body, "oomguard_stale_domains"), 1.0);
    assert_promtool_passes(&classic.body);

    // The live domain's last process is SIGKILLed: its domain is stale too, and nothing is live.
    live.child.kill().unwrap();
    live.child.wait().unwrap();
    let body = scrape_openmetrics(&exporter.addr);
    assert_eq!(sample(&body, "oomguard_stale_domains"), 2.0, "{body}");
    assert_eq!(sample(&body, "oomguard_up"), 0.0, "{body}");
    assert!(
        samples(&body, "oomguard_allocated_bytes").is_empty(),
        "{body}"
    );
    let logged = exporter.wait_for_stderr(|line| {
        line.contains("no live oomguard segment") && line.contains("2 stale")
    });
    assert!(logged.is_ok(), "the reason is logged: {logged:#?}");
    assert_eq!(exporter.terminate().code(), Some(0));
}

#[test]
fn a_bad_listen_address_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let from_flag = oomguard_command()
        .env_remove(LISTEN_ENV)
        .args(["exporter", "--listen", "localhost", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let from_env = oomguard_command()
        .env(LISTEN_ENV, "127.0.0.1:notaport")
        .args(["exporter", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    for (out, value) in [(from_flag, "localhost"), (from_env, "127.0.0.1:notaport")] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {stderr}", out.status);
        assert!(
            stderr.contains("--listen") && stderr.contains(LISTEN_ENV) && stderr.contains(value),
            "{stderr}"
        );
    }
}

/// A tmpfs of `size` mounted on a fresh directory (root only), unmounted on drop.
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn mount(size: &str) -> SmallTmpfs {
        assert!(
            oomguard_tests::is_root(),
            "this test mounts a small tmpfs to fill it: run the tests as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=1777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs on {}",
            dir.path().display()
        );
        SmallTmpfs { dir }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_segment_directory_is_said_by_status_and_the_exporter() {
    // Room for one segment (641 KiB) and not for two.
    let tmpfs = SmallTmpfs::mount("700k");
    let dir = tmpfs.dir.path();
    let exporter = Exporter::start(dir);
    let room = http_get(&exporter.addr, "/metrics", None).body;
    assert_eq!(
        samples(&room, "oomguard_segment_directory_full"),
        [0.0],
        "{room}"
    );

    // The first domain's segment fits; the second domain's does not.
    let mut first = oomguard_tests::Probe::start(
        "accounting",
        dir,
        &["hold", "1048576", "1"],
        &[("OOM_GUARD_DOMAIN", "oomguard-first")],
    );
    assert_eq!(first.expect("held"), "held");
    let mut second = oomguard_tests::Probe::start(
        "accounting",
        dir,
        &["hold", "1048576", "1"],
        &[("OOM_GUARD_DOMAIN", "oomguard-second")],
    );
    assert_eq!(second.expect("held"), "held");
    second.proceed();
    second.expect("freed");
    second.proceed();
    let second_stderr = second.finish();
    assert!(
        second_stderr.contains("accounting this process and its children privately"),
        "{second_stderr}"
    );

    let status = oomguard_command()
        .args(["status", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{stdout}");
    let first_line = stdout.lines().next().unwrap_or_default();
    assert!(
        first_line.starts_with("WARNING  the segment directory")
            && first_line.contains("less than one segment")
            && first_line.contains("oomguard clean"),
        "{stdout}"
    );
    let csv = oomguard_command()
        .args(["status", "--csv", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(csv.status.success());
    assert!(String::from_utf8_lossy(&csv.stdout).starts_with("domain,"));
    assert!(String::from_utf8_lossy(&csv.stderr).contains("less than one segment"));

    let full = http_get(&exporter.addr, "/metrics", None).body;
    assert_eq!(
        samples(&full, "oomguard_segment_directory_full"),
        [1.0],
        "{full}"
    );
    let free = samples(&full, "oomguard_segment_directory_free_bytes");
    assert!(free.len() == 1 && free[0] < 525_312.0, "{full}");

    first.proceed();
    first.expect("freed");
    first.proceed();
    first.finish();
}
