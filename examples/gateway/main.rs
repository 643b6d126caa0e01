//! The API gateway, run from a configuration file.
//!
//! ```text
//! cargo run --release --example gateway --features gateway -- --demo-upstreams
//! cargo run --release --example gateway --features gateway -- --config my.toml [--threads N]
//! ```
//!
//! With `--demo-upstreams` it starts three small services on loopback (users :9101, orders
//! :9102, echo :9103) that the sample configuration (`examples/gateway/gateway.toml`) routes
//! to, and prints curl lines to try, with an API key and demo tokens. Logs follow `RUST_LOG`
//! (default `info`); `/metrics`, `/healthz` and `/readyz` are on the admin listener. Edit the
//! file, or send SIGHUP, and the gateway reloads it (a bad file is refused and logged). Ctrl-C
//! or SIGTERM drains requests in flight and exits.
#![allow(
    clippy::print_stdout,
    reason = "the example tells the user what to try"
)]

mod demo;

/// mimalloc rather than the system allocator: a proxy allocates and frees a little for every
/// request (headers, buffers, futures), where glibc's malloc costs several percent of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{future::Future, io::Write, path::PathBuf, time::SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_patterns::{BoxError, gateway::Gateway};

/// The command line.
#[derive(Debug)]
pub(crate) struct Args {
    config: PathBuf,
    demo: bool,
    threads: Option<usize>,
}

/// Reads the command line (without the program name).
pub(crate) fn parse_args(args: Vec<String>) -> Result<Args, String> {
    let mut out = Args {
        config: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/gateway/gateway.toml"
        )),
        demo: false,
        threads: None,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" => out.config = it.next().ok_or("--config needs a path")?.into(),
            "--demo-upstreams" => out.demo = true,
            "--threads" => {
                let n = it.next().ok_or("--threads needs a number")?;
                out.threads = Some(
                    n.parse()
                        .map_err(|_| format!("--threads {n:?}: not a number"))?,
                );
            }
            "-h" | "--help" => {
                return Err(
                    "usage: gateway [--config PATH] [--demo-upstreams] [--threads N]".into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(out)
}

fn demo_tokens(dir: &std::path::Path) -> Result<(String, String), BoxError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({
        "sub": "web-checkout", "tenant": "acme", "aud": "storefront-api",
        "iss": "https://id.example", "exp": now + 3600, "iat": now,
    });
    let secret = std::fs::read_to_string(dir.join("demo-hs256.secret"))?;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("demo".into());
    let hs = encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.trim_end().as_bytes())?,
    )?;
    let pem = std::fs::read(dir.join("demo-rsa-private.pem"))?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let rs = encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem)?)?;
    Ok((hs, rs))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() {
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // One thread: Tokio's current-thread scheduler, as nginx's single worker runs one event
    // loop (no work stealing, no cross-thread wake-ups).
    let mut rt = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.worker_threads(n.max(1));
            rt
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let run = async {
        let prometheus =
            metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        run(args, &mut std::io::stdout(), shutdown_signal(), prometheus).await
    };
    if let Err(e) = rt.block_on(run) {
        eprintln!("gateway: {e}");
        std::process::exit(1);
    }
}

/// Runs the gateway (and the demo upstreams) until `shutdown`, telling the user what to try
/// on `out`.
pub(crate) async fn run(
    args: Args,
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()> + Send + 'static,
    prometheus: PrometheusHandle,
) -> Result<(), BoxError> {
    if args.demo {
        demo::start().await?;
    }
    let gateway = Gateway::builder("edge")
        .config_file(&args.config)
        .prometheus(prometheus)
        .build()?;
    let config = gateway.config();
    let listener = tokio::net::TcpListener::bind(config.listen())
        .await
        .map_err(|e| format!("cannot listen on {} (server.listen): {e}", config.listen()))?;
    let addr = listener.local_addr()?;
    let reloader = gateway.reloader();
    let _watch = reloader.spawn_watch();
    let _hup = reloader.spawn_sighup()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The admin listener outlives the gateway's drain, so `/readyz` says 503 while it drains.
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::watch::channel(false);
    if let Some(admin) = config.admin_listen() {
        let admin_listener = tokio::net::TcpListener::bind(admin)
            .await
            .map_err(|e| format!("cannot listen on {admin} (admin.listen): {e}"))?;
        let admin = admin_listener.local_addr()?;
        let mut stop = admin_stop_rx;
        tokio::spawn(gateway.clone().serve_admin(admin_listener, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        writeln!(out, "admin on http://{admin} (/metrics, /healthz, /readyz)")?;
    }
    writeln!(
        out,
        "gateway \"{}\" on http://{addr}, configuration {}",
        gateway.name(),
        args.config.display()
    )?;
    if args.demo {
        let dir = args.config.parent().map(PathBuf::from).unwrap_or_default();
        writeln!(out, "try:")?;
        writeln!(
            out,
            "  curl -si http://{addr}/api/users/7 -H 'x-api-key: demo-mobile-key'"
        )?;
        writeln!(
            out,
            "  curl -si http://{addr}/api/orders/o-1 -H 'x-api-key: demo-partner-key'"
        )?;
        writeln!(
            out,
            "  curl -si http://{addr}/echo/anything -H 'x-api-version: 2'"
        )?;
        if let Ok((hs, rs)) = demo_tokens(if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            &dir
        }) {
            writeln!(
                out,
                "  curl -s http://{addr}/api/profile/7 -H 'authorization: Bearer {hs}'"
            )?;
            writeln!(
                out,
                "  curl -s http://{addr}/api/users/7 -H 'authorization: Bearer {rs}'"
            )?;
        }
        writeln!(
            out,
            "  curl -si http://{addr}/api/users/7 -H 'x-consumer-id: admin'   # 401: no credential; the header is stripped"
        )?;
    }
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx;
    gateway
        .serve(listener, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
    let _ = admin_stop_tx.send(true);
    Ok(())
}
