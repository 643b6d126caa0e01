//! A rate limit per client: each client (the `x-client` header) gets 5 requests at once and 5
//! a second after that; a client past its limit gets 429 with `Retry-After` and the
//! `RateLimit-*` headers, and the others are not affected.
//!
//! ```text
//! cargo run --example rate_limit --features ratelimit
//! ```
#![allow(clippy::print_stdout, reason = "an example prints what it shows")]

use std::{convert::Infallible, io::Write, process::ExitCode, time::Duration};

use http::{HeaderName, Request, Response};
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns::{
    BoxError,
    http::ErrorResponseLayer,
    key::HeaderKey,
    ratelimit::{GcraLimiter, KeyedRateLimitLayer, Rate},
};

/// Runs the example with `args` (without the program name), writing to `out`.
pub(crate) async fn run(args: Vec<String>, out: &mut (impl Write + Send)) -> ExitCode {
    if !args.is_empty() {
        let _ = writeln!(out, "usage: rate_limit   (no arguments)");
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
    let limiter = GcraLimiter::builder("clients")
        .key(HeaderKey::new(HeaderName::from_static("x-client")))
        .rate(Rate::per_second(5).burst(5))
        .build()?;
    let handle = limiter.handle();
    let app = service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    // The limit answers 429 as an error; the error layer turns it into the response.
    let svc = ErrorResponseLayer::new().layer(KeyedRateLimitLayer::new(limiter).layer(app));
    let call = |client: &'static str| {
        let svc = svc.clone();
        async move {
            let req = Request::builder().header("x-client", client).body(())?;
            let res = svc.oneshot(req).await?;
            let header = |name: &str| {
                res.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            Ok::<_, BoxError>(format!(
                "{} remaining {} reset {} retry-after {}",
                res.status().as_u16(),
                header("ratelimit-remaining"),
                header("ratelimit-reset"),
                header("retry-after")
            ))
        }
    };
    writeln!(out, "client noisy sends 8 requests at once:")?;
    for i in 1..=8 {
        writeln!(out, "  noisy #{i}: {}", call("noisy").await?)?;
    }
    writeln!(out, "client calm is not affected:")?;
    writeln!(out, "  calm #1: {}", call("calm").await?)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    writeln!(out, "a second later, noisy has 5 more:")?;
    writeln!(out, "  noisy #9: {}", call("noisy").await?)?;
    let report = tower_patterns::observe::StateHandle::report(&handle);
    writeln!(
        out,
        "limiter: {} client(s), {} refused",
        report.value("keys").unwrap_or(0.0),
        report.value("rejected").unwrap_or(0.0)
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    run(std::env::args().skip(1).collect(), &mut std::io::stdout()).await
}
