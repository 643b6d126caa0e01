//! Prints the delay before each retry for every backoff family, as a Markdown table (the one
//! in `docs/patterns/retry.md`): base 100 ms, cap 10 s, seeded; jittered families show the
//! mean of 10,000 draws.
//!
//! `cargo run --example retry_delays --features retry`

#![allow(
    clippy::print_stdout,
    reason = "its output is the table pasted into the docs"
)]

use std::{io::Write, process::ExitCode, time::Duration};

use tower_patterns::{retry::Backoff, rng::SplitMix64};

fn main() -> ExitCode {
    run(
        &std::env::args().skip(1).collect::<Vec<_>>(),
        &mut std::io::stdout(),
    )
}

/// Prints the table on `out`; `--draws N` sets the draws per jittered family (default 10,000).
pub(crate) fn run(args: &[String], out: &mut impl Write) -> ExitCode {
    let draws = match args {
        [] => 10_000,
        [flag, n] if flag == "--draws" => match n.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => return usage(out),
        },
        _ => return usage(out),
    };
    match table(draws, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn usage(out: &mut impl Write) -> ExitCode {
    let _ = writeln!(out, "usage: retry_delays [--draws N]");
    ExitCode::from(2)
}

fn table(jittered_draws: u32, out: &mut impl Write) -> std::io::Result<()> {
    let base = Duration::from_millis(100);
    let cap = Duration::from_secs(10);
    let families = [
        ("constant", Backoff::Constant(base), false),
        ("linear", Backoff::Linear { base }, false),
        (
            "exponential ×2",
            Backoff::Exponential {
                base,
                multiplier: 2.0,
            },
            false,
        ),
        ("full jitter (mean)", Backoff::FullJitter { base }, true),
        ("equal jitter (mean)", Backoff::EqualJitter { base }, true),
        ("decorrelated (mean)", Backoff::Decorrelated { base }, true),
        (
            "Polly v2 (mean)",
            Backoff::DecorrelatedV2 { median_first: base },
            true,
        ),
        (
            "gRPC ×1.6 ±20% (mean)",
            Backoff::Grpc {
                initial: base,
                multiplier: 1.6,
            },
            true,
        ),
    ];
    let retries = 1..=8u32;
    writeln!(
        out,
        "| family | {} |",
        retries
            .clone()
            .map(|n| format!("retry {n}"))
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    writeln!(
        out,
        "|---|{}",
        retries.clone().map(|_| "---:|").collect::<String>()
    )?;
    let mut rng = SplitMix64::new(1);
    for (name, backoff, jittered) in families {
        let draws = if jittered { jittered_draws } else { 1 };
        let mut sums = [0f64; 8];
        for _ in 0..draws {
            let mut previous = base;
            for n in retries.clone() {
                let d = backoff.delay(n, previous, cap, &mut rng);
                sums[n as usize - 1] += d.as_secs_f64();
                previous = d;
            }
        }
        let cells: Vec<String> = sums
            .iter()
            .map(|s| format!("{:.0} ms", s / f64::from(draws) * 1e3))
            .collect();
        writeln!(out, "| {name} | {} |", cells.join(" | "))?;
    }
    Ok(())
}
