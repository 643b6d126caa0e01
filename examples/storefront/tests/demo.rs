//! The demo as a new user runs it: every row of its report present and held, in well under a
//! minute; and the status page, loaded in headless Chromium while the demo runs, showing the
//! payment breaker that just turned open.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{Out, admin::prometheus};
use crate::{config, demo};

const ROWS: [&str; 11] = [
    "shard",
    "saga",
    "circuit breaker",
    "fallback + queue",
    "timeout",
    "bulkhead",
    "rate limit",
    "cache-aside",
    "saga compensation",
    "read-your-writes",
    "chaos",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_every_pattern_and_holds_its_expectations() {
    let _one = super::REAL_TIME.lock().await;
    let cfg = config::parse(vec!["--demo".into()], |_| None).unwrap();
    assert!(cfg.demo && !cfg.data_given);
    let mut out = Out::default();
    let start = Instant::now();
    let result = demo::run(cfg, &mut out, Some(prometheus()), None).await;
    let text = out.text();
    assert_eq!(result, Ok(()), "{text}");
    assert!(start.elapsed() < Duration::from_secs(60), "{text}");
    assert!(text.contains("every expectation held"), "{text}");
    for pattern in ROWS {
        let row = text
            .lines()
            .find(|l| l.split(" | ").next().map(str::trim) == Some(pattern))
            .unwrap_or_else(|| panic!("no {pattern} row in\n{text}"));
        assert!(row.ends_with("| yes"), "{row}");
    }
    // Numbers, not just verdicts.
    assert!(text.contains("16 of 16 checkouts paid"), "{text}");
    assert!(
        text.contains("closed → open → half_open → closed"),
        "{text}"
    );
    assert!(text.contains(": 1 load, "), "{text}");
}

#[test]
fn a_failed_expectation_fails_the_report() {
    let row = |ok| demo::Row {
        pattern: "p",
        did: "did".into(),
        expected: "e",
        ok,
    };
    let mut report = demo::Report {
        rows: vec![row(true), row(true)],
        elapsed: Duration::from_secs(3),
    };
    assert!(report.passed());
    assert!(
        report
            .table()
            .contains("every expectation held; the tour took 3.0 s")
    );
    report.rows.push(row(false));
    assert!(!report.passed());
    let table = report.table();
    assert!(
        table.contains("| NO") && table.contains("SOME EXPECTATIONS FAILED"),
        "{table}"
    );
    assert!(
        !demo::Report::default().passed(),
        "an empty report proves nothing"
    );
    let mut took = vec![Duration::from_millis(5); 99];
    took.push(Duration::from_millis(900));
    assert_eq!(demo::p99(&mut took), 5.0);
    took.push(Duration::from_millis(901));
    assert_eq!(demo::p99(&mut took), 900.0);
}

/// Debian's Chromium, where `scripts/test` installs it; `None` (and a printed reason) when it
/// is absent and the test command did not require it.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("TP_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("TP_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "scripts/test requires Chromium for the status page test, and {} is not there",
        path.display()
    );
    eprintln!(
        "skipped: no Chromium at {} (scripts/test installs it)",
        path.display()
    );
    None
}

/// Runs Chromium headless on `url` with `args`, killed if it takes over 60 s.
fn headless(chromium: &PathBuf, profile: &std::path::Path, args: &[String], url: &str) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium took over 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut dom = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut dom);
    }
    dom
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_breaker_turning_open() {
    let Some(chromium) = chromium() else { return };
    let _one = super::REAL_TIME.lock().await;
    // The page's DOM and its screenshot, taken by the hook.
    type Seen = Arc<Mutex<Option<(String, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let kept = seen.clone();
    let hook: demo::Hook = Arc::new(move |phase, addr, token| {
        let (chromium, kept) = (chromium.clone(), kept.clone());
        Box::pin(async move {
            if phase != "breaker-open" {
                return;
            }
            let url = format!("http://{addr}/admin?token={token}");
            let profile = std::env::temp_dir().join(format!("tp-chromium-{}", std::process::id()));
            let page = tokio::task::spawn_blocking(move || {
                let dom = headless(
                    &chromium,
                    &profile,
                    &["--virtual-time-budget=3000".into(), "--dump-dom".into()],
                    &url,
                );
                let png = profile.join("status-page.png");
                headless(
                    &chromium,
                    &profile,
                    &[
                        "--virtual-time-budget=3000".into(),
                        "--window-size=1280,1000".into(),
                        format!("--screenshot={}", png.display()),
                    ],
                    &url,
                );
                let shot = std::fs::read(&png).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&profile);
                (dom, shot)
            })
            .await
            .unwrap();
            *kept.lock().unwrap() = Some(page);
        })
    });
    let cfg = config::parse(vec!["--demo".into()], |_| None).unwrap();
    let mut out = Out::default();
    let result = demo::run(cfg, &mut out, Some(prometheus()), Some(hook)).await;
    assert_eq!(result, Ok(()), "{}", out.text());
    let (dom, png) = seen
        .lock()
        .unwrap()
        .take()
        .expect("the page was loaded while the breaker was open");
    // Rendered by the page's script from /admin/patterns: a card per pattern, and the
    // breaker's transitions, the open one among them.
    assert!(
        dom.contains(r#"data-pattern="breaker" data-name="payments""#),
        "{dom}"
    );
    assert!(dom.contains(r#"data-pattern="chaos""#), "{dom}");
    assert!(dom.contains("payments: closed → open"), "{dom}");
    assert!(dom.contains(r#"data-pattern="payment_queue""#), "{dom}");
    assert!(
        dom.contains(r#"<div id="updated">updated "#),
        "the page polled: {dom}"
    );
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    if std::env::var("TP_UPDATE_DOCS").as_deref() == Ok("1") {
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png");
        std::fs::write(docs, &png).unwrap();
    }
}
