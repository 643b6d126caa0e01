//! Latency percentiles a benchmark measures itself (criterion reports means): the run mode,
//! the command line's filter, nearest-rank percentiles, and the JSON file under
//! `target/perf/` that `scripts/perf-doc` reads.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

/// A full run passes `--bench`; `cargo bench -- --test` passes `--test` too, and `cargo test
/// --benches` neither. Outside a full run, latency rows take a few samples and write nothing.
pub fn full_run() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// The command line's filter (criterion's first free argument).
pub fn filter() -> Option<String> {
    std::env::args().skip(1).find(|a| !a.starts_with('-'))
}

/// Whether the command line's filter selects `id` (a part of it, as criterion's does).
pub fn selected(id: &str) -> bool {
    filter().is_none_or(|f| id.contains(&f))
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The rows of one benchmark's latency file, `target/perf/<file>`.
pub struct LatencyFile {
    file: &'static str,
    rows: Mutex<BTreeMap<String, serde_json::Value>>,
}

impl LatencyFile {
    /// The rows that go to `target/perf/<file>`.
    pub const fn new(file: &'static str) -> Self {
        Self {
            file,
            rows: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records the row `id` (`group/row`): prints its p50, p99 and max and, in a full run,
    /// rewrites the file with every row so far.
    pub fn report(&self, id: &str, mut samples: Vec<Duration>) {
        samples.sort_unstable();
        let (p50, p99, max) = (
            percentile(&samples, 50.0),
            percentile(&samples, 99.0),
            *samples.last().expect("samples"),
        );
        eprintln!(
            "{id}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} samples)",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6,
            samples.len()
        );
        if !full_run() {
            return;
        }
        let mut rows = self.rows.lock().expect("latency rows");
        rows.insert(
            id.to_owned(),
            serde_json::json!({
                "samples": samples.len(),
                "p50_ns": p50.as_nanos() as f64,
                "p99_ns": p99.as_nanos() as f64,
                "max_ns": max.as_nanos() as f64,
            }),
        );
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
            || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
            std::path::PathBuf::from,
        );
        let dir = target.join("perf");
        std::fs::create_dir_all(&dir).expect("target/perf");
        std::fs::write(
            dir.join(self.file),
            serde_json::to_string_pretty(&*rows).expect("json"),
        )
        .expect("write the latency rows");
    }
}
