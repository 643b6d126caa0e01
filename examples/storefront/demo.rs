//! `--demo`: a scripted tour of the storefront against itself, over HTTP on 127.0.0.1, that
//! makes each pattern act and ends with a table of what each did, in numbers. It exits 0 only
//! if every expectation held.
//!
//! The tour drives the server as clients would (orders, catalog reads, admin switches); it
//! reaches into the server's data only to set up a scenario (the stock of one product) and
//! reads its numbers from the same handles `/admin/patterns` shows.

use std::{
    future::Future,
    io::{IsTerminal, Write},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::{App, config::Config, payments::PaymentSettings};

mod phases;

/// Called after each phase with its name (and at `breaker-open`, while the payment breaker is
/// open), the server's address and the admin token: the status page test looks at the page
/// there.
pub(crate) type Hook = Arc<
    dyn Fn(&'static str, SocketAddr, Arc<str>) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// One line of the report.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) pattern: &'static str,
    pub(crate) did: String,
    pub(crate) expected: &'static str,
    pub(crate) ok: bool,
}

/// What the tour found.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) elapsed: Duration,
}

impl Report {
    /// Whether every expectation held.
    pub(crate) fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.ok)
    }

    /// The table, as printed.
    pub(crate) fn table(&self) -> String {
        let width = |f: &dyn Fn(&Row) -> usize, title: usize| {
            self.rows.iter().map(f).max().unwrap_or(0).max(title)
        };
        let (p, d, e) = (
            width(&|r| r.pattern.len(), 7),
            width(&|r| r.did.chars().count(), 11),
            width(&|r| r.expected.len(), 8),
        );
        let mut out = format!(
            "{:p$} | {:d$} | {:e$} | ok\n{}-+-{}-+-{}-+---\n",
            "pattern",
            "what it did",
            "expected",
            "-".repeat(p),
            "-".repeat(d),
            "-".repeat(e)
        );
        for r in &self.rows {
            let pad = d - r.did.chars().count();
            out.push_str(&format!(
                "{:p$} | {}{} | {:e$} | {}\n",
                r.pattern,
                r.did,
                " ".repeat(pad),
                r.expected,
                if r.ok { "yes" } else { "NO" }
            ));
        }
        let verdict = if self.passed() {
            "every expectation held"
        } else {
            "SOME EXPECTATIONS FAILED"
        };
        out.push_str(&format!(
            "\n{verdict}; the tour took {:.1} s\n",
            self.elapsed.as_secs_f64()
        ));
        out
    }
}

/// The client side of the tour.
pub(crate) struct Tour {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    bearer: String,
    pub(crate) app: App,
    prometheus: Option<PrometheusHandle>,
    hook: Option<Hook>,
    addr: SocketAddr,
    token: Arc<str>,
}

/// An answer: status, body, and the consistency token if any.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) token: Option<String>,
    pub(crate) took: Duration,
}

impl Tour {
    /// Sends one request.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let Ok(req) = req.body(Full::new(Bytes::from(body.to_owned()))) else {
            return Answer {
                status: 0,
                body: String::new(),
                token: None,
                took: Duration::ZERO,
            };
        };
        let start = Instant::now();
        match self.client.request(req).await {
            Ok(res) => {
                let status = res.status().as_u16();
                let token = res
                    .headers()
                    .get("tp-consistency")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = res
                    .into_body()
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                Answer {
                    status,
                    body,
                    token,
                    took: start.elapsed(),
                }
            }
            Err(e) => Answer {
                status: 0,
                body: e.to_string(),
                token: None,
                took: start.elapsed(),
            },
        }
    }

    /// Lets the hook, if any, look at the server now (`moment` names the moment).
    pub(crate) async fn pause(&self, moment: &'static str) {
        if let Some(hook) = &self.hook {
            hook(moment, self.addr, self.token.clone()).await;
        }
    }

    /// An admin call.
    pub(crate) async fn admin(&self, path: &str, body: &str) -> u16 {
        let bearer = self.bearer.clone();
        let headers = [
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ];
        self.send(Method::POST, path, &headers, body).await.status
    }

    /// A value from the report of the handle `pattern`/`name`.
    pub(crate) fn value(&self, pattern: &str, name: &str, what: &str) -> f64 {
        self.app
            .handles
            .iter()
            .find(|h| h.pattern() == pattern && h.name() == name)
            .and_then(|h| h.report().value(what))
            .unwrap_or(f64::NAN)
    }

    /// A counter from the Prometheus text: the sum of the series of `metric` whose labels
    /// include `label`.
    pub(crate) fn metric(&self, metric: &str, label: &str) -> Option<f64> {
        let text = self.prometheus.as_ref()?.render();
        let sum = text
            .lines()
            .filter(|l| {
                l.starts_with(metric) && l[metric.len()..].starts_with('{') && l.contains(label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Some(sum)
    }

    /// Waits until `done` holds, checking every 50 ms, for at most `within`.
    pub(crate) async fn until(
        &self,
        within: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done(self)
    }
}

/// The 99th percentile of `took`, in milliseconds.
pub(crate) fn p99(took: &mut [Duration]) -> f64 {
    if took.is_empty() {
        return f64::NAN;
    }
    took.sort();
    let at = ((took.len() as f64) * 0.99).ceil() as usize;
    took[at.clamp(1, took.len()) - 1].as_secs_f64() * 1000.0
}

/// Runs the tour against a storefront started for it, prints the report on `out`, and says
/// whether every expectation held. `hook`, if any, runs after each phase.
pub(crate) async fn run(
    mut cfg: Config,
    out: &mut (dyn Write + Send),
    prometheus: Option<PrometheusHandle>,
    hook: Option<Hook>,
) -> Result<(), String> {
    let started = Instant::now();
    // Short settings, so that each pattern acts within seconds.
    cfg.payments = PaymentSettings {
        open: Duration::from_secs(2),
        attempt_timeout: Duration::from_millis(300),
        max_concurrent: 4,
    };
    cfg.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let temp = (!cfg.data_given).then(|| {
        std::env::temp_dir().join(format!(
            "tower-patterns-demo-{}-{}",
            std::process::id(),
            crate::admin::random_token()
        ))
    });
    if let Some(dir) = &temp {
        cfg.data.clone_from(dir);
    }
    let result = tour(cfg, out, prometheus, hook, started).await;
    if let Some(dir) = temp {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

async fn tour(
    cfg: Config,
    out: &mut (dyn Write + Send),
    prometheus: Option<PrometheusHandle>,
    hook: Option<Hook>,
    started: Instant,
) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.data).map_err(|e| {
        format!(
            "storefront: --data {:?}: {e} (also TP_DATA)",
            cfg.data.display()
        )
    })?;
    let token: Arc<str> = crate::admin::random_token().into();
    let tenants = crate::tenants(&cfg)?;
    let (router, app) = crate::storefront(&cfg, tenants, token.clone(), prometheus.clone())
        .await
        .map_err(|e| format!("storefront: the demo cannot start: {e}"))?;
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| format!("storefront: the demo cannot listen on 127.0.0.1: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("storefront: {e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let (app, cfg) = (app.clone(), cfg.clone());
        tokio::spawn(async move {
            crate::edge::serve(listener, router, &app, &cfg, async {
                let _ = stopped.await;
            })
            .await
        })
    };
    let say = |out: &mut (dyn Write + Send), line: String| {
        writeln!(out, "{line}").map_err(|e| format!("storefront: cannot write: {e}"))
    };
    say(
        out,
        format!("storefront demo on http://{addr}; watch it at http://{addr}/admin?token={token}"),
    )?;
    let tour = Tour {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{addr}"),
        bearer: format!("Bearer {token}"),
        app: app.clone(),
        prometheus,
        hook,
        addr,
        token: token.clone(),
    };
    let bar = ProgressBar::new(phases::PHASES.len() as u64);
    bar.set_draw_target(if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:24}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut report = Report::default();
    for (name, about) in phases::PHASES {
        bar.set_message(*about);
        let rows = phases::run(name, &tour).await;
        report.rows.extend(rows);
        bar.inc(1);
        tour.pause(name).await;
    }
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    say(out, format!("\n{}", report.table()))?;
    let _ = stop.send(());
    app.shutdown();
    let _ = server.await;
    if report.passed() {
        Ok(())
    } else {
        Err("storefront: the demo's expectations did not all hold (see the table)".into())
    }
}
