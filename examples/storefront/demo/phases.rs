//! The tour's phases: each makes one or two patterns act and returns the report's rows.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use futures::future::join_all;
use http::Method;

use super::{Row, Tour, p99};

/// The phases, in order, with what the progress bar says during each.
pub(crate) const PHASES: &[(&str, &str)] = &[
    ("normal", "normal traffic: orders over the shards"),
    (
        "breaker",
        "the payment provider fails: the breaker opens, payments queue, then drain",
    ),
    (
        "hang",
        "the provider hangs: timeouts fire, the bulkhead fills, other routes stay fast",
    ),
    (
        "noisy",
        "a noisy tenant is limited; the others are not slowed",
    ),
    (
        "stampede",
        "a cache stampede on a slow database makes one load",
    ),
    ("compensate", "an order out of stock: the saga undoes it"),
    ("lag", "the read model lags: read-your-writes still holds"),
];

const ACME: (&str, &str) = ("x-api-key", "demo-key-acme");
const GLOBEX: (&str, &str) = ("x-api-key", "demo-key-globex");

pub(super) async fn run(name: &str, t: &Tour) -> Vec<Row> {
    match name {
        "normal" => normal(t).await,
        "breaker" => breaker(t).await,
        "hang" => hang(t).await,
        "noisy" => noisy(t).await,
        "stampede" => stampede(t).await,
        "compensate" => compensate(t).await,
        "lag" => lag(t).await,
        _ => Vec::new(),
    }
}

/// An order of one `sku` by `customer` of acme.
async fn order(t: &Tour, customer: &str, sku: &str) -> super::Answer {
    let path = format!("/orders/{sku}/1");
    t.send(
        Method::POST,
        &path,
        &[ACME, ("x-customer-id", customer)],
        "",
    )
    .await
}

fn first_word(body: &str) -> &str {
    body.split_whitespace().next().unwrap_or("")
}

async fn normal(t: &Tour) -> Vec<Row> {
    let customers: Vec<String> = (0..8).map(|i| format!("customer-{i}")).collect();
    let mut paid = 0;
    for round in 0..2 {
        let answers = join_all(
            customers
                .iter()
                .map(|c| order(t, c, if round == 0 { "tea" } else { "coffee" })),
        )
        .await;
        paid += answers.iter().filter(|a| a.status == 201).count();
    }
    let shards = t.app.shards.all.len();
    let used = (0..shards)
        .filter(|i| t.value("consistency", &format!("orders-{i}"), "tokens_issued") > 0.0)
        .count();
    let completed = t.value("saga", "checkout", "completed");
    vec![
        Row {
            pattern: "shard",
            did: format!("16 orders from 8 customers landed on {used} of {shards} shards"),
            expected: "more than one shard",
            ok: used > 1,
        },
        Row {
            pattern: "saga",
            did: format!("{paid} of 16 checkouts paid ({completed} sagas completed)"),
            expected: "all 16 paid",
            ok: paid == 16,
        },
    ]
}

async fn breaker(t: &Tour) -> Vec<Row> {
    t.admin("/admin/provider/down", "").await;
    let mut answers = Vec::new();
    for i in 0..6 {
        answers.push(order(t, &format!("down-{i}"), "tea").await);
    }
    let cancelled = answers.iter().filter(|a| a.status == 502).count();
    let queued = answers.iter().filter(|a| a.status == 202).count();
    let opened = t.app.breaker.state() == tower_patterns::breaker::State::Open;
    t.pause("breaker-open").await;
    t.admin("/admin/provider/up", "").await;
    let drained = t
        .until(Duration::from_secs(15), |t| {
            t.app.queue.queued() == 0
                && t.app.breaker.state() == tower_patterns::breaker::State::Closed
        })
        .await;
    let seen: Vec<String> = t
        .app
        .transitions
        .list()
        .iter()
        .map(|e| e["to"].as_str().unwrap_or("?").to_owned())
        .collect();
    let path = format!("closed → {}", seen.join(" → "));
    let cycled = seen
        .windows(3)
        .any(|w| w == ["open", "half_open", "closed"]);
    vec![
        Row {
            pattern: "circuit breaker",
            did: format!("{cancelled} order(s) failed, then it opened; {path}"),
            expected: "closed → open → half_open → closed",
            ok: opened && cycled,
        },
        Row {
            pattern: "fallback + queue",
            did: format!(
                "{queued} payments queued while open; {} drained once closed",
                t.app.queue.drained()
            ),
            expected: "queued > 0, queue back to 0",
            ok: queued > 0 && drained,
        },
    ]
}

async fn hang(t: &Tour) -> Vec<Row> {
    let rejected_before = t.metric(
        "tower_patterns_bulkhead_rejected_total",
        "name=\"payments\"",
    );
    let timeouts_before = t.app.payment_timeouts.load(Ordering::Relaxed);
    t.admin(
        "/admin/chaos/payment-provider",
        r#"{"faults":[{"kind":"hang"}]}"#,
    )
    .await;
    let orders =
        join_all((0..8).map(|i| async move { order(t, &format!("hang-{i}"), "tea").await }));
    let reads = async {
        // Meanwhile, the catalog: its own pool, its own route.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut took = Vec::new();
        for _ in 0..20 {
            took.push(t.send(Method::GET, "/products", &[ACME], "").await.took);
        }
        took
    };
    let (answers, mut took) = tokio::join!(orders, reads);
    t.admin("/admin/chaos/payment-provider", r#"{"faults":[]}"#)
        .await;
    // Counted where the timeout's error passes on its way up, not from the hangs injected.
    let timeouts = t.app.payment_timeouts.load(Ordering::Relaxed) - timeouts_before;
    let rejected = match (
        rejected_before,
        t.metric(
            "tower_patterns_bulkhead_rejected_total",
            "name=\"payments\"",
        ),
    ) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let answered = answers
        .iter()
        .filter(|a| matches!(a.status, 201 | 202 | 502))
        .count();
    let p99 = p99(&mut took);
    let recovered = t
        .until(Duration::from_secs(15), |t| {
            t.app.queue.queued() == 0
                && t.app.breaker.state() == tower_patterns::breaker::State::Closed
        })
        .await;
    vec![
        Row {
            pattern: "timeout",
            did: format!(
                "{timeouts} hung charges cut after 300 ms; {answered} of 8 orders answered"
            ),
            expected: "> 0 cut, every order answered",
            ok: timeouts > 0 && answered == 8,
        },
        Row {
            pattern: "bulkhead",
            did: match rejected {
                Some(r) => format!(
                    "{r} charges refused by the pool of 4 (and queued); /products p99 {p99:.0} ms"
                ),
                None => format!("no metrics recorder to count refusals; /products p99 {p99:.0} ms"),
            },
            expected: "> 0 refused, p99 < 250 ms",
            ok: rejected.is_some_and(|r| r > 0.0) && p99 < 250.0 && recovered,
        },
    ]
}

async fn noisy(t: &Tour) -> Vec<Row> {
    let flood = join_all((0..60).map(|_| t.send(Method::GET, "/products", &[GLOBEX], "")));
    let calm = async {
        let mut took = Vec::new();
        let mut ok = 0;
        for _ in 0..30 {
            let a = t.send(Method::GET, "/products", &[ACME], "").await;
            ok += usize::from(a.status == 200);
            took.push(a.took);
        }
        (ok, took)
    };
    let (flood, (ok, mut took)) = tokio::join!(flood, calm);
    let limited = flood.iter().filter(|a| a.status == 429).count();
    let p99 = p99(&mut took);
    vec![Row {
        pattern: "rate limit",
        did: format!(
            "globex (free, 5/s): {limited} of 60 refused with 429; acme: {ok} of 30 served, p99 {p99:.0} ms"
        ),
        expected: "globex limited, acme all 200 < 250 ms",
        ok: limited > 0 && ok == 30 && p99 < 250.0,
    }]
}

async fn stampede(t: &Tour) -> Vec<Row> {
    t.admin(
        "/admin/chaos/catalog-db",
        r#"{"faults":[{"kind":"latency","ms":300}]}"#,
    )
    .await;
    t.admin("/admin/cache/catalog/invalidate", "").await;
    let loads = t
        .app
        .catalog_loads
        .load(std::sync::atomic::Ordering::Relaxed);
    let coalesced = t.value("cache", "catalog", "coalesced");
    let answers = join_all((0..24).map(|_| t.send(Method::GET, "/products", &[ACME], ""))).await;
    t.admin("/admin/chaos/catalog-db", r#"{"faults":[]}"#).await;
    let served = answers.iter().filter(|a| a.status == 200).count();
    let loads = t
        .app
        .catalog_loads
        .load(std::sync::atomic::Ordering::Relaxed)
        - loads;
    let coalesced = t.value("cache", "catalog", "coalesced") - coalesced;
    vec![Row {
        pattern: "cache-aside",
        did: format!(
            "24 reads at once on a 300 ms database: {loads} load, {coalesced} waited for it, {served} served"
        ),
        expected: "1 load, >= 20 coalesced",
        ok: loads == 1 && coalesced >= 20.0 && served == 24,
    }]
}

async fn compensate(t: &Tour) -> Vec<Row> {
    let set = |n: i64| {
        t.app.ledger.with(move |c| {
            c.execute(
                "UPDATE stock SET available = ?1 WHERE tenant = 'acme' AND sku = 'coffee'",
                [n],
            )
        })
    };
    let _ = set(0).await;
    let (refunds, _) = t.app.ledger.undone().await.unwrap_or_default();
    let a = order(t, "unlucky", "coffee").await;
    let _ = set(crate::ledger::INITIAL_STOCK).await;
    let (after, _) = t.app.ledger.undone().await.unwrap_or_default();
    let compensated = t.value("saga", "checkout", "compensated");
    vec![Row {
        pattern: "saga compensation",
        did: format!(
            "out of stock: {} {}; {} refund(s); {compensated} saga(s) compensated",
            a.status,
            first_word(&a.body),
            after - refunds
        ),
        expected: "409 CANCELLED, 1 refund",
        ok: a.status == 409 && first_word(&a.body) == "CANCELLED" && after - refunds == 1,
    }]
}

async fn lag(t: &Tour) -> Vec<Row> {
    t.admin(
        "/admin/chaos/orders-projection",
        r#"{"faults":[{"kind":"latency","ms":800}]}"#,
    )
    .await;
    let a = order(t, "patient", "tea").await;
    let id = a.body.split_whitespace().nth(2).unwrap_or("").to_owned();
    let path = format!("/orders/{id}");
    let headers = [ACME, ("x-customer-id", "patient")];
    let stale = t.send(Method::GET, &path, &headers, "").await;
    let token = a.token.clone().unwrap_or_default();
    let start = Instant::now();
    let fresh = t
        .send(
            Method::GET,
            &path,
            &[
                ACME,
                ("x-customer-id", "patient"),
                ("tp-consistency", &token),
            ],
            "",
        )
        .await;
    let waited = start.elapsed();
    t.admin("/admin/chaos/orders-projection", r#"{"faults":[]}"#)
        .await;
    vec![
        Row {
            pattern: "read-your-writes",
            did: format!(
                "without the token: {} (stale); with it: {} {} after {} ms",
                stale.status,
                fresh.status,
                first_word(&fresh.body),
                waited.as_millis()
            ),
            expected: "stale 404, then 200 PAID",
            ok: a.status == 201
                && stale.status == 404
                && fresh.status == 200
                && first_word(&fresh.body) == "PAID",
        },
        chaos(t),
    ]
}

/// What the chaos layers did over the whole tour.
fn chaos(t: &Tour) -> Row {
    let kinds = [
        "injected_latency",
        "injected_error",
        "injected_hang",
        "injected_status",
        "injected_abort",
    ];
    let layers: Vec<String> = t
        .app
        .handles
        .iter()
        .filter(|h| h.pattern() == "chaos")
        .map(|h| {
            let r = h.report();
            let n: f64 = kinds.iter().filter_map(|k| r.value(k)).sum();
            format!("{} {n}", h.name())
        })
        .collect();
    let reports: Vec<_> = t
        .app
        .handles
        .iter()
        .filter(|h| h.pattern() == "chaos")
        .map(|h| h.report())
        .collect();
    let off = reports.iter().all(|r| r.state == "off");
    let each = reports
        .iter()
        .all(|r| kinds.iter().filter_map(|k| r.value(k)).sum::<f64>() > 0.0);
    Row {
        pattern: "chaos",
        did: format!("faults injected: {}; all off again", layers.join(", ")),
        expected: "each layer injected, then off",
        ok: off && each && reports.len() == 3,
    }
}
