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
const ROUND: &str = "TP_ES_CRASH_ROUND";
const BATCH: u64 = 10;

/// The child: appends batches forever, printing each acknowledgement. A no-op unless run as
/// the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_appends_until_killed() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let round: u64 = std::env::var(ROUND).unwrap().parse().unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let mut out = std::io::stdout().lock();
    for b in 0u64.. {
        let events = (0..BATCH)
            .map(|i| {
                EventData::json("Item", &json!({ "round": round, "batch": b, "i": i })).unwrap()
            })
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
    use std::os::unix::process::ExitStatusExt as _;

    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    // (round, batch) -> events stored, over every round so far.
    let mut batches: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for round in 0..3u64 {
        let err_path = dir.path().join(format!("child-{round}.stderr"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_appends_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &path)
            .env(ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        // What the child said on stderr, for every failure message.
        let stderr = || {
            format!(
                "\n--- child stderr (round {round}) ---\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            )
        };
        let kill_point = 40 + round * 7;
        let mut acked = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            // The harness may print its "test ... " on the first acknowledgement's line.
            if let Some((_, b)) = line.split_once("acked ") {
                acked.push(b.parse::<u64>().unwrap());
                if acked.len() as u64 >= kill_point {
                    break;
                }
            }
        }
        assert_eq!(
            acked,
            (0..kill_point).collect::<Vec<_>>(),
            "the child stopped before its kill point{}",
            stderr()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited by itself before the kill{}",
            stderr()
        );
        child.kill().unwrap(); // SIGKILL, mid-append most likely
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "the child died of SIGKILL ({status}){}",
            stderr()
        );

        let store = SqliteStore::open(&path).unwrap();
        let all = store
            .read_all(GlobalPosition::START, 1_000_000)
            .await
            .unwrap();
        batches.clear();
        for e in &all {
            let v: serde_json::Value = e.decode().unwrap();
            *batches
                .entry((v["round"].as_u64().unwrap(), v["batch"].as_u64().unwrap()))
                .or_default() += 1;
        }
        for (b, n) in &batches {
            assert_eq!(*n, BATCH, "batch {b:?} is torn: {n} events{}", stderr());
        }
        for r in 0..=round {
            // A round's batches are appended in order: those stored are 0..n, with n at least
            // the acknowledged ones.
            let stored: Vec<u64> = batches
                .keys()
                .filter(|(br, _)| *br == r)
                .map(|(_, b)| *b)
                .collect();
            assert_eq!(
                stored,
                (0..stored.len() as u64).collect::<Vec<_>>(),
                "round {r}'s batches have a hole{}",
                stderr()
            );
        }
        for b in &acked {
            assert!(
                batches.contains_key(&(round, *b)),
                "acknowledged batch {b} of round {round} lost{}",
                stderr()
            );
        }
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, e)| e.position == GlobalPosition::new(0, i as u64 + 1)),
            "positions have no gaps{}",
            stderr()
        );
        drop(store);
    }
}
