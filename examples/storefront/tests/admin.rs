//! The admin routes: the token, the reports, the chaos switch, and `/metrics` as Prometheus
//! text carrying each pattern's series.

use std::{collections::BTreeSet, sync::OnceLock};

use axum::http::Method;
use metrics_exporter_prometheus::PrometheusHandle;

use super::{TOKEN, admin, data_dir, exchange, named, open_shop, reports, request, send, shop};
use crate::{TENANTS, config};

#[tokio::test(start_paused = true)]
async fn admin_routes_need_the_token() {
    let shop = shop("admin-token").await;
    for (uri, headers) in [
        ("/admin/patterns", vec![]),
        (
            "/admin/patterns",
            vec![("authorization", "Bearer wrong-token-0123456789")],
        ),
        (
            "/admin/patterns",
            vec![("authorization", &*format!("Basic {TOKEN}"))],
        ),
        ("/admin/patterns?token=wrong", vec![]),
        ("/admin/patterns?token=", vec![]),
        ("/metrics", vec![]),
        ("/admin/provider/down", vec![("x-api-key", "demo-key-acme")]),
    ] {
        let method = if uri.contains("provider") {
            Method::POST
        } else {
            Method::GET
        };
        let (status, body) = exchange(shop.router.clone(), request(method, uri, &headers)).await;
        assert_eq!(
            (status, body.as_str()),
            (401, "admin token required"),
            "{uri} {headers:?}"
        );
    }
    let (status, _) = exchange(
        shop.router.clone(),
        request(
            Method::GET,
            &format!("/admin/patterns?a=1&token={TOKEN}"),
            &[],
        ),
    )
    .await;
    assert_eq!(status, 200, "the token in the query, for the status page");
}

#[tokio::test(start_paused = true)]
async fn every_pattern_reports_itself() {
    let shop = shop("admin-patterns").await;
    assert_eq!(
        send(&shop, Method::GET, "/products", Some("acme")).await.0,
        200
    );
    let reports = reports(&shop).await;
    let seen: BTreeSet<(String, String)> = reports
        .iter()
        .map(|r| {
            (
                r["pattern"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (pattern, name) in [
        ("bulkhead", "edge"),
        ("bulkhead", "tenant"),
        ("tenant", "storefront"),
        ("ratelimit", "tenant"),
        ("cache", "catalog"),
        ("breaker", "payments"),
        ("chaos", "payment-provider"),
    ] {
        assert!(
            seen.contains(&(pattern.to_owned(), name.to_owned())),
            "{pattern}/{name} in {seen:?}"
        );
    }
    let breaker = reports.iter().find(|r| r["pattern"] == "breaker").unwrap();
    assert_eq!(breaker["state"], "closed");
    assert_eq!(breaker["values"]["open_remaining_seconds"], 0.0);
}

#[tokio::test(start_paused = true)]
async fn the_chaos_switch_takes_a_checked_plan() {
    let shop = shop("admin-chaos").await;
    let post = |uri: &str, body: &str, json: bool| {
        let mut req = request(
            Method::POST,
            uri,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        );
        if json {
            req.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
        }
        *req.body_mut() = axum::body::Body::from(body.to_owned());
        exchange(shop.router.clone(), req)
    };
    let uri = "/admin/chaos/payment-provider";
    assert_eq!(
        post(uri, r#"{"faults":[{"kind":"status","status":503}]}"#, true).await,
        (200, "chaos payment-provider: 1 fault(s), on\n".to_owned())
    );
    // Every charge now fails: the order is cancelled, the breaker counts it.
    assert_eq!(
        send(&shop, Method::POST, "/orders/tea/1", Some("acme"))
            .await
            .0,
        502
    );
    assert!(
        shop.app
            .provider
            .injected(tower_patterns::chaos::FaultKind::Status)
            >= 1
    );
    for (body, json, want) in [
        ("{", true, (400, "malformed JSON")),
        (
            r#"{"faults":[{"kind":"melt"}]}"#,
            true,
            (
                400,
                "a fault is {kind: latency|status|error|hang|abort, rate, ms, status}",
            ),
        ),
        (
            r#"{"faults":[{"kind":"status","status":200}]}"#,
            true,
            (
                400,
                "a fault is {kind: latency|status|error|hang|abort, rate, ms, status}",
            ),
        ),
        (
            r#"{"faults":[{"kind":"latency"}]}"#,
            true,
            (
                400,
                "a fault is {kind: latency|status|error|hang|abort, rate, ms, status}",
            ),
        ),
        (
            r#"{"faults":[{"kind":"hang","rate":0.6},{"kind":"abort","rate":0.6}]}"#,
            true,
            (400, "rates must be 0 to 1 and add up to at most 1"),
        ),
        (r#"{"faults":[],"extra":1}"#, true, (400, "malformed JSON")),
        (
            r#"{"faults":[]}"#,
            false,
            (415, "expected content-type: application/json"),
        ),
    ] {
        let (status, text) = post(uri, body, json).await;
        assert_eq!((status, text.as_str()), want, "{body}");
    }
    assert!(
        shop.app.provider.is_active(),
        "a refused plan changes nothing"
    );
    assert_eq!(
        post("/admin/chaos/nope", "{}", true).await,
        (404, "no such chaos layer".to_owned())
    );
    assert_eq!(
        post(
            "/admin/chaos/orders-projection",
            r#"{"faults":[{"kind":"hang"}]}"#,
            true
        )
        .await,
        (
            400,
            "the projection's reads take latency faults only".to_owned()
        )
    );
    let huge = format!(
        r#"{{"faults":[],"pad":"{}"}}"#,
        "x".repeat(crate::edge::BODY_LIMIT)
    );
    let req = {
        let mut req = request(
            Method::POST,
            uri,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        );
        req.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        *req.body_mut() = axum::body::Body::from(huge);
        req
    };
    let limited = shop
        .router
        .clone()
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::edge::BODY_LIMIT,
        ));
    let (status, text) = exchange(limited, req).await;
    assert_eq!((status, text.as_str()), (413, "request body too large"));
    assert_eq!(
        post(uri, r#"{"faults":[]}"#, true).await.1,
        "chaos payment-provider: 0 fault(s), off\n"
    );
    assert_eq!(
        send(&shop, Method::POST, "/orders/tea/1", Some("acme"))
            .await
            .0,
        201
    );
}

/// One Prometheus recorder for this test binary, installed before the shop that reads it is
/// built (layers register their metrics when they are built).
pub(crate) fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .unwrap()
        })
        .clone()
}

/// Checks the Prometheus text format strictly enough to catch a broken exposition: every
/// sample belongs to a family announced by `# TYPE`, its labels are `name="value"` pairs and its
/// value parses. Returns the sample names.
fn parse_prometheus(text: &str) -> BTreeSet<String> {
    let mut typed = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "an unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                labels.strip_suffix('}').unwrap_or_else(|| panic!("{line}")),
            ),
            None => (series, ""),
        };
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "{line}"
        );
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
            assert!(
                key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{line}"
            );
            assert!(!value.contains('\n'), "{line}");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no # TYPE line");
        samples.insert(name.to_owned());
    }
    samples
}

#[tokio::test(start_paused = true)]
async fn metrics_are_prometheus_text_with_each_patterns_series() {
    // A recorder of this shop's own, the default on this test's one thread (where its layers
    // are built and its requests run), so that other shops' series cannot answer for it.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let shop = open_shop(data_dir("metrics"), &[], TENANTS, Some(prometheus)).await;
    send(&shop, Method::GET, "/products", Some("acme")).await;
    send(&shop, Method::GET, "/products", Some("nobody")).await;
    // An order: the shard router, the saga, the projection, the consistency token, the retry.
    assert_eq!(
        send(&shop, Method::POST, "/orders/tea/1", Some("acme"))
            .await
            .0,
        201
    );
    let (status, text) = admin(&shop, Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_prometheus(&text);
    for prefix in [
        "tower_patterns_breaker_",
        "tower_patterns_bulkhead_",
        "tower_patterns_ratelimit_",
        "tower_patterns_cache_",
        "tower_patterns_tenant_",
        "tower_patterns_chaos_",
        "tower_patterns_shard_",
        "tower_patterns_cqrs_",
        "tower_patterns_consistency_",
        "tower_patterns_saga_",
        "tower_patterns_retry_",
        "storefront_payment_queue",
    ] {
        assert!(
            samples.iter().any(|s| s.starts_with(prefix)),
            "no {prefix}* in {samples:?}"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let lines = super::Out::default();
    let writer = lines.clone();
    let subscriber = crate::logs(
        config::LogFormat::Json,
        tracing_subscriber::EnvFilter::new("info"),
        move || writer.clone(),
    );
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(tenant = "acme", "first");
        tracing::debug!("filtered out");
        tracing::warn!(status = 503, "second\nwith a newline");
    });
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let objects: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(objects.len(), 2, "{text}");
    assert_eq!(objects[0]["fields"]["message"], "first");
    assert_eq!(objects[0]["fields"]["tenant"], "acme");
    assert_eq!(objects[1]["level"], "WARN");
    assert_eq!(objects[1]["fields"]["message"], "second\nwith a newline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_the_limits_are_counted_there() {
    use tower_patterns_testkit::servers::{Server, server_url};
    let Some(url) = server_url(Server::Redis) else {
        return;
    };
    let shop = open_shop(data_dir("redis"), &["--redis", &url], TENANTS, None).await;
    // globex is on the free plan (5 at once, 5 a second): a burst of 20 is refused in part.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(
            send(&shop, Method::GET, "/products", Some("globex"))
                .await
                .0,
        );
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
    let limiter = shop
        .app
        .handles
        .iter()
        .find(|h| h.pattern() == "ratelimit")
        .unwrap()
        .report();
    // The Redis limiter's report: connected, and the refusals counted there.
    assert_eq!(limiter.state, "connected", "{limiter:?}");
    assert_eq!(limiter.value("unavailable"), Some(0.0), "{limiter:?}");
    assert!(
        limiter.value("rejected").unwrap_or(0.0) > 0.0,
        "{limiter:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_every_order_event_is_published() {
    use tower_patterns::shard::{Jump, Route, Strategy};
    use tower_patterns_testkit::servers::{Server, server_url};
    let Some(url) = server_url(Server::Nats) else {
        return;
    };
    let _turn = super::REAL_TIME.lock().await;
    let shop = open_shop(data_dir("nats"), &["--nats", &url], TENANTS, None).await;
    let (status, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    assert_eq!(status, 201, "{body}");
    let order = body.split_whitespace().nth(2).unwrap().to_owned();
    // Placed, then Paid: both published by the relay of the customer's shard.
    let published = || shop.app.relays.iter().map(|r| r.published()).sum::<u64>();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while published() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(published() >= 2, "{} published", published());
    let Route::To(shard) = Jump::new(shop.app.shards.all.len()).route("guest") else {
        panic!("no shard")
    };
    let client = async_nats::connect(url).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream(crate::bus::STREAM)
        .await
        .unwrap();
    for event in ["Placed", "Paid"] {
        let subject = format!("storefront.orders.{shard}.{event}");
        let message = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap();
        let headers = format!("{:?}", message.headers);
        assert!(headers.contains(&order), "{subject}: {headers}");
    }
    shop.app.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_the_events_outlive_the_data_directory() {
    let Some(url) = tower_patterns_testkit::servers::fresh_postgres("storefront").await else {
        return;
    };
    let _turn = super::REAL_TIME.lock().await;
    let shop_on = |name: &str, url: &str| {
        let dir = data_dir(name);
        let url = url.to_owned();
        async move { open_shop(dir, &["--postgres", &url], TENANTS, None).await }
    };
    // One storefront writes: an order and a product.
    let first = shop_on("pg-a", &url).await;
    let (status, body) = send(&first, Method::POST, "/orders/tea/2", Some("acme")).await;
    assert_eq!(status, 201, "{body}");
    let order = body.split_whitespace().nth(2).unwrap().to_owned();
    let mut req = super::request(
        Method::POST,
        "/products/matcha",
        &[
            ("x-api-key", "demo-key-acme"),
            ("content-type", "application/json"),
        ],
    );
    *req.body_mut() = axum::body::Body::from(r#"{"name":"Matcha tea","price":9}"#);
    assert_eq!(exchange(first.router.clone(), req).await.0, 201);
    first.app.shutdown();
    drop(first);

    // Another, with a data directory of its own (no events in it), reads them: its read
    // models follow the events in PostgreSQL.
    let second = shop_on("pg-b", &url).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let path = format!("/orders/{order}");
    let found = loop {
        let answer = send(&second, Method::GET, &path, Some("acme")).await;
        if answer.0 == 200 || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        (found.0, found.1.split_whitespace().next()),
        (200, Some("PAID")),
        "{found:?}"
    );
    assert_eq!(
        send(&second, Method::GET, "/products", Some("acme")).await,
        (200, "coffee 5\nmatcha 9\ntea 4\n".to_owned())
    );
    // The demo products were created once, by the first storefront: the second found them.
    let (_, patterns) = super::admin(&second, Method::GET, "/admin/patterns").await;
    assert!(
        patterns.contains(r#""name":"checkout","pattern":"saga""#),
        "{patterns}"
    );
    second.app.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_replicas_their_lag_is_reported() {
    use tower_patterns::consistency::replica::{ReplicaSetHandle, ReplicaStatus};
    let Some(replicas) = tower_patterns_testkit::postgres_replicas() else {
        return;
    };
    let Some(url) = tower_patterns_testkit::servers::fresh_postgres("storefront_replicas").await
    else {
        return;
    };
    let _turn = super::REAL_TIME.lock().await;
    let real = replicas.len();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    // Beside the real replicas, one nobody listens on: reported down, and the shop runs on.
    let listed = format!(
        "{},postgres://postgres@127.0.0.1:1/postgres",
        urls.join(",")
    );
    let shop = open_shop(
        data_dir("pg-replicas"),
        &["--postgres", &url, "--postgres-replicas", &listed],
        TENANTS,
        None,
    )
    .await;
    let handle = shop.app.replicas.as_ref().expect("a replica set").handle();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Probes every node now, until `done` holds of the replicas (or the deadline passes).
    async fn probe_until(
        handle: &ReplicaSetHandle,
        deadline: std::time::Instant,
        done: impl Fn(&[ReplicaStatus]) -> bool,
    ) -> Vec<ReplicaStatus> {
        loop {
            handle.refresh().await;
            let status = handle.replicas();
            if done(&status) || std::time::Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let status = probe_until(&handle, deadline, |s| s[..real].iter().all(|r| r.up)).await;
    assert!(status[..real].iter().all(|r| r.up), "{status:?}");
    assert_eq!(status[real].name.as_ref(), format!("replica-{}", real + 1));
    assert!(!status[real].up, "a probe reached port 1: {status:?}");

    // The first replica stops replaying; an order is written on the primary.
    let paused = replicas[0].pause_replay();
    let (code, body) = send(&shop, Method::POST, "/orders/tea/1", Some("acme")).await;
    assert_eq!(code, 201, "{body}");
    handle.refresh().await;
    let written = handle.primary_lsn().expect("the primary's position");
    let status = handle.replicas();
    assert!(status[0].replay < written, "{status:?} against {written:?}");
    assert!(status[0].lag_bytes > 0, "{status:?}");
    // Each replica has a card of its own on the status page: the paused one shows its lag.
    let patterns = reports(&shop).await;
    let first = named(&patterns, "storefront-db/replica-1");
    assert_eq!(first["pattern"], "consistency", "{first}");
    assert!(
        first["values"]["lag_bytes"].as_f64().unwrap() > 0.0,
        "{first}"
    );
    let down = named(&patterns, &format!("storefront-db/replica-{}", real + 1));
    assert_eq!(
        (&down["state"], &down["health"]),
        (&"down".into(), &"degraded".into())
    );
    let set = named(&patterns, "storefront-db");
    assert_eq!(set["health"], "degraded", "one replica is down: {set}");
    assert_eq!(set["values"]["replicas"], (real + 1) as f64, "{set}");
    assert!(
        set["values"]["max_lag_bytes"].as_f64().unwrap() > 0.0,
        "{set}"
    );

    // Resumed, every real replica replays past the order.
    drop(paused);
    let status = probe_until(
        &handle,
        std::time::Instant::now() + std::time::Duration::from_secs(20),
        |s| s[..real].iter().all(|r| r.replay >= written),
    )
    .await;
    assert!(
        status[..real].iter().all(|r| r.replay >= written),
        "{status:?} against {written:?}"
    );
    shop.app.shutdown();
}
