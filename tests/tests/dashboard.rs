//! The broker's dashboard in a real headless Chromium (Debian's `chromium`, installed by
//! scripts/deps.sh): against a running cluster of two brokers, a worker started during the
//! test appears in the page rendered by the page's own script (from `/api/dashboard`), on its
//! broker as a worker row and on the other broker in the cluster's functions; a screenshot is
//! saved next to the test logs (`target/test-logs/dashboard-<pid>.png`).
//!
//! Chromium never reaches beyond this machine: every name resolves to nothing but 127.0.0.1,
//! everything else goes to a proxy that does not exist, and background services are off.
//! Without `chromium` the test says so and does nothing (it installs nothing itself).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http_support::get;
use mpreg_tests::{eventually, start_broker_cluster, start_node};

const WAIT: Duration = Duration::from_secs(30);
/// Wall-clock limit of one Chromium run.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(90);

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        let ok = Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| PathBuf::from(name))
    })
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=...`) and a
/// virtual time budget (the page polls once a second of virtual time; fetches to the broker
/// are real and pause virtual time while pending). Returns its stdout.
fn run_chromium(chromium: &Path, profile: &Path, url: &str, mode: &str) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-breakpad",
            "--no-pings",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            "--window-size=1400,1000",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let deadline = Instant::now() + CHROMIUM_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "chromium failed: {status:?}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {CHROMIUM_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

#[test]
fn a_worker_started_during_the_test_appears_on_the_dashboards() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED: no `chromium` on this machine (scripts/deps.sh installs Debian's package); \
             the dashboard was not tested in a browser"
        );
        return;
    };
    let pid = std::process::id();
    let brokers = start_broker_cluster("dash", 2, &[]);
    let [one, two] = [&brokers[0], &brokers[1]].map(|b| b.http.clone().expect("http endpoint"));
    eventually(WAIT, "both brokers see each other alive", || {
        [&one, &two].iter().all(|http| {
            let data: serde_json::Value =
                serde_json::from_str(&get(http, "/api/dashboard").body).unwrap();
            let members = data["members"].as_array().cloned().unwrap_or_default();
            members.len() == 2 && members.iter().all(|m| m["state"] == "alive")
        })
    });
    // The page loads nothing from elsewhere: no external URL in it at all.
    let page = get(&two, "/").body;
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"),
        "the dashboard must be self-contained"
    );

    let profile = std::env::temp_dir().join(format!("mpreg-chromium-{pid}"));
    let worker = format!("dash-worker-{pid}");
    let resource = format!("dash-res-{pid}");
    let before = run_chromium(&chromium, &profile, &format!("http://{two}/"), "--dump-dom");
    assert!(
        before.contains("live · updated"),
        "the page's script fetched /api/dashboard: {before}"
    );
    assert!(before.contains("data-member=\"dash-1\""), "{before}");
    assert!(!before.contains(&worker), "no such worker yet");
    assert!(before.contains("no worker registered"), "{before}");

    let _node = start_node(&brokers[1].worker, &worker, &[&resource], &[]);
    let after = run_chromium(&chromium, &profile, &format!("http://{two}/"), "--dump-dom");
    assert!(
        after.contains(&format!("data-worker=\"{worker}\"")),
        "the worker's row, made by the page's script: {after}"
    );
    assert!(
        after.contains(&format!(">{resource}<")),
        "its resource: {after}"
    );
    assert!(after.contains("0 / 64"), "its load: {after}");

    // The other broker learns it through the cluster: its functions show the resource set
    // served by broker 2 (gossip takes a moment).
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        seen = run_chromium(&chromium, &profile, &format!("http://{one}/"), "--dump-dom");
        if seen.contains(&format!(">{resource}<")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        seen.contains(&format!(">{resource}<")) && seen.contains(">dash-2<"),
        "broker 1's dashboard shows what broker 2's worker serves: {seen}"
    );
    assert!(
        !seen.contains(&format!("data-worker=\"{worker}\"")),
        "not its own worker"
    );

    let shot = mpreg_tests::bin_dir()
        .parent()
        .map_or_else(std::env::temp_dir, Path::to_path_buf)
        .join("test-logs")
        .join(format!("dashboard-{pid}.png"));
    let _ = std::fs::create_dir_all(shot.parent().unwrap());
    run_chromium(
        &chromium,
        &profile,
        &format!("http://{two}/"),
        &format!("--screenshot={}", shot.display()),
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real picture"
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    let _ = std::fs::remove_dir_all(&profile);
}
