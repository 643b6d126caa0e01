//! Crash safety of the SQLite store: a child process appending batches is killed with SIGKILL
//! mid-stream; after reopening, every batch is whole or absent, every acknowledged batch is
//! there, and global positions have no gaps.
#![cfg(all(feature = "sqlite", unix))]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use serde_json::json;
use tower_patterns_eventstore::{
    EventData, EventStore, ExpectedVersion, GlobalPosition, sqlite::SqliteStore,
};

const CHILD: &str = "TP_ES_CRASH_CHILD";
const BATCH: u64 = 10;

/// The child: appends batches forever, printing each acknowledgement. A no-op unless run as
/// the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_appends_until_killed() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let store = SqliteStore::open(&path).unwrap();
    let mut out = std::io::stdout().lock();
    for b in 0u64.. {
        let events = (0..BATCH)
            .map(|i| EventData::json("Item", &json!({ "batch": b, "i": i })).unwrap())
            .collect();
        store
            .append(&format!("crash-{}", b % 4), ExpectedVersion::Any, events)
            .await
            .unwrap();
        writeln!(out, "acked {b}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_leaves_whole_batches() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_appends_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(b) = line.strip_prefix("acked ") {
                acked.push(b.parse::<u64>().unwrap());
                if acked.len() >= 40 + round * 7 {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-append most likely
        child.wait().unwrap();

        let store = SqliteStore::open(&path).unwrap();
        let all = store
            .read_all(GlobalPosition::START, 1_000_000)
            .await
            .unwrap();
        let mut batches: BTreeMap<u64, u64> = BTreeMap::new();
        for e in &all {
            let v: serde_json::Value = e.decode().unwrap();
            *batches.entry(v["batch"].as_u64().unwrap()).or_default() += 1;
        }
        // Batch numbers restart in each round; count per (round-local) batch number across
        // rounds must be a multiple of BATCH.
        for (b, n) in &batches {
            assert_eq!(n % BATCH, 0, "batch {b} is torn: {n} events");
        }
        for b in &acked {
            assert!(
                batches.get(b).copied().unwrap_or(0) >= BATCH,
                "acknowledged batch {b} lost"
            );
        }
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, e)| e.position == GlobalPosition::new(0, i as u64 + 1)),
            "positions have no gaps"
        );
        drop(store);
    }
}
