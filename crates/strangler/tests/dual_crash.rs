//! A dual write killed with SIGKILL: a child process writes through it and prints each
//! acknowledged key; after 50 (delivered) it locks the secondary, writes 100 more and is
//! killed. A fresh dual write on the same files then delivers every acknowledged write.
#![cfg(all(feature = "sqlite", unix))]
#![allow(
    clippy::print_stdout,
    reason = "the child process speaks to its parent on stdout"
)]

mod support;

use std::{path::Path, time::Duration};

use rusqlite::Connection;
use support::{every_row, outbox_len};
use tower::ServiceExt;
use tower_patterns_core::backoff::Backoff;
use tower_patterns_strangler::dual::{DualWrite, SqliteRows, Write};
use tower_patterns_testkit::process::ChildTest;

const WAIT: Duration = Duration::from_secs(20);
const CRASH_DIR: &str = "TP_DUAL_CRASH_DIR";

/// The dual write from `monolith.db` to `users.db` in `dir`.
fn dual(dir: &Path) -> DualWrite<SqliteRows> {
    let primary = SqliteRows::open(dir.join("monolith.db"), "users").unwrap();
    let secondary = SqliteRows::open(dir.join("users.db"), "users")
        .unwrap()
        .with_busy_timeout(Duration::ZERO)
        .unwrap();
    DualWrite::builder("users")
        .primary(primary)
        .secondary(secondary)
        .backoff(
            Backoff::Constant(Duration::from_millis(5)),
            Duration::from_millis(20),
        )
        .missed_after(2)
        .poll(Duration::from_millis(5))
        .build()
        .unwrap()
}

/// The child: writes through a dual write until killed, printing each acknowledged key.
/// After 50 writes it waits for their delivery, then locks the secondary, so the writes
/// after that stay in the outbox until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_writes_until_killed() {
    let Ok(dir) = std::env::var(CRASH_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let dual = dual(dir);
    let mut held = None;
    for i in 0.. {
        let key = format!("user:{i:06}");
        dual.clone()
            .oneshot(Write::put(key.clone(), format!("value {i}")))
            .await
            .unwrap();
        println!("acked {key}");
        if i == 49 {
            assert!(dual.handle().wait_idle(WAIT).await);
            let lock = Connection::open(dir.join("users.db")).unwrap();
            lock.busy_timeout(Duration::from_secs(5)).unwrap();
            lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
            held = Some(lock);
            println!("locked");
        }
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_a_fresh_dual_write_delivers_every_acknowledged_write() {
    if std::env::var(CRASH_DIR).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (primary, secondary) = (dir.join("monolith.db"), dir.join("users.db"));
    let mut child = ChildTest::spawn(
        "child_writes_until_killed",
        &[(CRASH_DIR, dir.to_str().unwrap())],
    );
    let mut acked = Vec::new();
    while acked.len() < 50 {
        acked.push(child.wait_for("acked ", WAIT).await);
    }
    // The first 50 are delivered; the child locks the secondary and goes on writing.
    child.wait_for("locked", WAIT).await;
    while acked.len() < 150 {
        acked.push(child.wait_for("acked ", WAIT).await);
    }
    child.kill9();
    assert!(
        outbox_len(&primary) >= 100,
        "the kill left the writes after the lock undelivered"
    );
    assert_eq!(every_row(&secondary).len(), 50);
    let dual = dual(dir);
    assert!(dual.handle().wait_idle(WAIT).await);
    let (p, s) = (every_row(&primary), every_row(&secondary));
    assert_eq!(s, p, "every committed write reached the secondary");
    for key in &acked {
        let i: usize = key.trim_start_matches("user:").parse().unwrap();
        let (value, _) = &s[key];
        assert_eq!(
            value.as_deref(),
            Some(format!("value {i}").as_bytes()),
            "{key}"
        );
    }
}
