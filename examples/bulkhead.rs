//! A bulkhead per downstream service: "A 4, B 2". While A is slow and its pool is full, the
//! next call to A is refused at once (503) and B is served as usual.
//!
//! ```text
//! cargo run --example bulkhead --features bulkhead
//! ```
#![allow(clippy::print_stdout, reason = "an example prints what it shows")]

use std::{io::Write, process::ExitCode, time::Duration};

use futures::future::join_all;
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns::{
    BoxError, KeyError, Rejected, bulkhead::KeyedBulkheadLayer, http::classify_error, key::key_fn,
};

/// A call to a downstream service.
#[derive(Clone, Debug)]
struct Call {
    service: &'static str,
}

/// Runs the example with `args` (without the program name), writing to `out`.
pub(crate) async fn run(args: Vec<String>, out: &mut (impl Write + Send)) -> ExitCode {
    if !args.is_empty() {
        let _ = writeln!(out, "usage: bulkhead   (no arguments)");
        return ExitCode::from(2);
    }
    match show(out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn show(out: &mut (impl Write + Send)) -> Result<(), BoxError> {
    let layer = KeyedBulkheadLayer::builder("downstream")
        .key(key_fn(|c: &Call| Ok::<_, KeyError>(c.service)))
        .partition("A", 4)
        .partition("B", 2)
        .build()?;
    let handle = layer.handle();
    // A takes a second (it is having a bad day); B answers at once.
    let downstream = layer.layer(service_fn(|c: Call| async move {
        if c.service == "A" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok::<_, BoxError>(format!("{} answered", c.service))
    }));
    let a = || downstream.clone().oneshot(Call { service: "A" });
    // Four slow calls fill A's pool...
    let slow = tokio::spawn(join_all((0..4).map(|_| a())));
    tokio::time::sleep(Duration::from_millis(10)).await;
    writeln!(
        out,
        "A's pool: {} of 4 in flight",
        handle.get("A").map_or(0, |p| p.in_flight())
    )?;
    // ...so the fifth is refused at once, with what the HTTP mapping makes of it.
    let err = a().await.expect_err("A's pool is full");
    let mapping = classify_error(&*err);
    writeln!(
        out,
        "A #5: refused at once: {} ({} {:?})",
        Rejected::find(&*err).map_or("?", |r| r.kind().as_str()),
        mapping.status.as_u16(),
        mapping.message
    )?;
    // B has its own pool: not affected.
    let b = downstream.clone().oneshot(Call { service: "B" }).await?;
    writeln!(out, "B meanwhile: {b}")?;
    let done = slow.await?;
    writeln!(
        out,
        "A's four slow calls: {} answered",
        done.iter().filter(|r| r.is_ok()).count()
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    run(std::env::args().skip(1).collect(), &mut std::io::stdout()).await
}
