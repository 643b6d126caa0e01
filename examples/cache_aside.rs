//! Cache-aside in front of a slow database: a stampede of readers makes one load, a repeat is
//! a hit, stale-while-revalidate answers at once while one refresh runs, and an invalidation
//! makes the next read load again.
//!
//! ```text
//! cargo run --example cache_aside --features cache -- [--readers 100]
//! ```
#![allow(clippy::print_stdout, reason = "an example prints what it shows")]

use std::{
    convert::Infallible,
    io::Write,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns::{
    BoxError, KeyError,
    cache::{CacheLayer, store::QuickCacheStore},
    key::key_fn,
};

/// How long the database takes to answer.
const SLOW: Duration = Duration::from_millis(200);

/// Runs the example with `args` (without the program name), writing to `out`.
pub(crate) async fn run(args: Vec<String>, out: &mut (impl Write + Send)) -> ExitCode {
    let readers = match args.as_slice() {
        [] => 100,
        [flag, n] if flag == "--readers" => match n.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => return usage(out),
        },
        _ => return usage(out),
    };
    match show(readers, out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(out: &mut impl Write) -> ExitCode {
    let _ = writeln!(
        out,
        "usage: cache_aside [--readers N]   (N from 1 to 10000)"
    );
    ExitCode::from(2)
}

async fn show(readers: usize, out: &mut (impl Write + Send)) -> Result<(), BoxError> {
    let loads = Arc::new(AtomicU32::new(0));
    let counted = loads.clone();
    // The database: slow, and it counts what reaches it.
    let db = service_fn(move |id: u64| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(SLOW).await;
            Ok::<_, Infallible>(format!("product {id}, version {n}"))
        }
    });
    let layer = CacheLayer::builder("products")
        .store(
            QuickCacheStore::<u64, String>::builder()
                .max_entries(10_000)
                .build(),
        )
        .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
        .unscoped()
        .ttl(Duration::from_secs(60))
        .stale_while_revalidate(Duration::from_secs(600))
        .build()?;
    let handle = layer.handle();
    let products = layer.layer(db);

    let answers = join_all((0..readers).map(|_| products.clone().oneshot(7))).await;
    let stats = handle.stats();
    writeln!(
        out,
        "{readers} readers at once on a {} ms database: {} load, {} waited for it, {} answered",
        SLOW.as_millis(),
        loads.load(Ordering::SeqCst),
        stats.coalesced,
        answers.iter().filter(|a| a.is_ok()).count()
    )?;

    products.clone().oneshot(7).await?;
    writeln!(
        out,
        "a repeat: {} hit(s), still {} load",
        handle.stats().hits,
        loads.load(Ordering::SeqCst)
    )?;

    // Past its time to live, the entry is stale: the reader gets it at once and one refresh
    // runs behind it.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let start = tokio::time::Instant::now();
    let stale = products.clone().oneshot(7).await?;
    let took = start.elapsed();
    tokio::time::sleep(SLOW * 2).await;
    let fresh = products.clone().oneshot(7).await?;
    writeln!(
        out,
        "stale while revalidating: {stale:?} in {} ms; then {fresh:?}",
        took.as_millis()
    )?;

    handle.invalidate(None, 7).await?;
    let after = products.clone().oneshot(7).await?;
    writeln!(
        out,
        "invalidated: the next read loads again: {after:?} ({} loads in all)",
        loads.load(Ordering::SeqCst)
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    run(std::env::args().skip(1).collect(), &mut std::io::stdout()).await
}
