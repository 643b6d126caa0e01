//! Prints the fraction of 100,000 keys each strategy moves when a 17th shard joins 16, and
//! the largest shard's load over the mean (the table in `docs/patterns/sharding.md`).
//!
//! `cargo run --example shard_moves --features shard`

#![allow(
    clippy::print_stdout,
    reason = "its output is the table pasted into the docs"
)]

use tower_patterns::shard::{Directory, Jump, Modulo, Rendezvous, Ring, Strategy, plan_moves};

fn balance<P: Strategy>(s: &P, keys: &[String]) -> f64 {
    let mut counts = vec![0u64; s.shards()];
    for k in keys {
        counts[s.route(k.as_str()).shard()] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0);
    max as f64 / (keys.len() as f64 / s.shards() as f64)
}

fn main() -> std::process::ExitCode {
    run(
        &std::env::args().skip(1).collect::<Vec<_>>(),
        &mut std::io::stdout(),
    )
}

/// Prints the table on `out`; `--keys N` sets the number of keys (default 100,000).
pub(crate) fn run(args: &[String], out: &mut impl std::io::Write) -> std::process::ExitCode {
    let n = match args {
        [] => 100_000,
        [flag, n] if flag == "--keys" => match n.parse::<u32>() {
            Ok(n) if n >= 100 => n,
            _ => return usage(out),
        },
        _ => return usage(out),
    };
    let keys: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
    let mut lines = vec![
        "| strategy | keys moved, 16 → 17 | ideal | max/mean load, 16 shards |".to_owned(),
        "|---|---:|---:|---:|".to_owned(),
    ];
    let mut row = |name: &str, moved: f64, ideal: f64, load: f64| {
        lines.push(format!(
            "| {name} | {:.2}% | {:.2}% | {load:.3} |",
            moved * 100.0,
            ideal * 100.0
        ));
    };
    let min = 1.0 / 17.0;
    row(
        "modulo",
        plan_moves(&Modulo::new(16), &Modulo::new(17), &keys).fraction(),
        16.0 / 17.0,
        balance(&Modulo::new(16), &keys),
    );
    row(
        "jump",
        plan_moves(&Jump::new(16), &Jump::new(17), &keys).fraction(),
        min,
        balance(&Jump::new(16), &keys),
    );
    row(
        "rendezvous",
        plan_moves(&Rendezvous::new(16), &Rendezvous::new(17), &keys).fraction(),
        min,
        balance(&Rendezvous::new(16), &keys),
    );
    let (Ok(r16), Ok(r17), Ok(dir)) = (Ring::new(16, 160), Ring::new(17, 160), Directory::new(16))
    else {
        return std::process::ExitCode::FAILURE;
    };
    row(
        "ring, 160 vnodes",
        plan_moves(&r16, &r17, &keys).fraction(),
        min,
        balance(&r16, &keys),
    );
    let slots = dir.plan_resize(17).len() as f64 / 16_384.0;
    row("directory (slots)", slots, min, balance(&dir, &keys));
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}

fn usage(out: &mut impl std::io::Write) -> std::process::ExitCode {
    let _ = writeln!(out, "usage: shard_moves [--keys N]   (N at least 100)");
    std::process::ExitCode::from(2)
}
