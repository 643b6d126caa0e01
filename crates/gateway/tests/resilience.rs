//! Resilient upstreams over real HTTP: a dead upstream opens its breaker (and only its own),
//! idempotent requests are retried and others are not, slow upstreams time out, a failing
//! address is ejected from its group and taken back later.

mod support;

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::Full;
use support::{TestGateway, Upstream, dead_address, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_opens_its_breaker_and_other_routes_are_unaffected() {
    let up = Upstream::start().await;
    let dead = dead_address().await;
    let toml = format!(
        r#"
[upstreams.dead]
addresses = ["{dead}"]
connect_timeout = "200ms"
breaker = {{ window = 4, minimum_calls = 4, failure_rate = 0.5, open_for = "30s" }}

[upstreams.live]
addresses = ["{live}"]

[[routes]]
name = "dead"
prefix = "/dead"
upstream = "dead"

[[routes]]
name = "live"
prefix = "/live"
upstream = "live"
"#,
        live = up.addr
    );
    let gw = TestGateway::start(&toml).await;
    for i in 0..4 {
        let r = get(&gw.url("/dead/x"), &[]).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_GATEWAY,
            "call {i}: the connection is refused"
        );
        assert_eq!(r.body, "bad gateway", "no internals");
    }
    let started = Instant::now();
    let r = get(&gw.url("/dead/x"), &[]).await;
    let took = started.elapsed();
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the breaker is open"
    );
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert!(took < Duration::from_secs(1), "refused at once: {took:?}");
    let r = get(&gw.url("/live/x"), &[]).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "another group's breaker is closed"
    );
    let open = gw.handle("breaker", "test.dead");
    assert_eq!(open.report().state, "open");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_others_are_not_and_slow_calls_time_out() {
    let up = Upstream::start().await;
    let toml = format!(
        r#"
[upstreams.u]
addresses = ["{up}"]
timeout = "300ms"
retry = {{ attempts = 3, backoff = "1ms", budget_tokens = 100 }}

[[routes]]
name = "all"
prefix = "/"
upstream = "u"
"#,
        up = up.addr
    );
    let gw = TestGateway::start(&toml).await;
    let client = support::client();
    let r = get(&gw.url("/status/503"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 3, "a GET is tried three times");
    let post = |key: Option<&str>| {
        let mut req = Request::post(gw.url("/status/503"));
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        req.body(Full::from("order")).unwrap()
    };
    assert_eq!(
        support::send(&client, post(None)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(up.hits(), 4, "a POST is sent once");
    assert_eq!(
        support::send(&client, post(Some("k-1"))).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        up.hits(),
        7,
        "a POST with an idempotency key is retried, body and all"
    );
    let r = get(&gw.url("/status/404"), &[]).await;
    assert_eq!(
        (r.status, up.hits()),
        (StatusCode::NOT_FOUND, 8),
        "a 404 is an answer, not a failure"
    );

    let started = Instant::now();
    let r = get(&gw.url("/slow/5000"), &[]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.body, "request timed out");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "three attempts of 300 ms at most"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_address_is_ejected_then_taken_back() {
    let bad = Upstream::start().await;
    let good = Upstream::start().await;
    let toml = format!(
        r#"
[upstreams.pair]
addresses = ["{bad}", "{good}"]
breaker = {{ window = 100, minimum_calls = 100 }}
outlier = {{ consecutive_failures = 2, base_ejection = "2s", max_ejected_percent = 50 }}

[[routes]]
name = "all"
prefix = "/"
upstream = "pair"
"#,
        bad = bad.addr,
        good = good.addr
    );
    let gw = TestGateway::start(&toml).await;
    bad.fail_with(500);
    let mut failures = 0;
    for _ in 0..30 {
        if get(&gw.url("/x"), &[]).await.status != StatusCode::OK {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "two failures in a row eject the address");
    assert_eq!(bad.hits(), 2);
    assert_eq!(good.hits(), 28);
    let group = gw.handle("gateway", "test.pair");
    let report = group.report();
    assert_eq!(report.value("ejected"), Some(1.0));
    assert_eq!(report.value("requests"), Some(30.0));
    assert_eq!(report.value("failures"), Some(2.0));
    assert_eq!(report.value("ejections"), Some(1.0));
    // A request in flight is counted while it is.
    let slow = tokio::spawn({
        let url = gw.url("/slow/1500");
        async move { get(&url, &[]).await.status }
    });
    support::eventually("the slow request is counted in flight", || {
        group.report().value("in_flight") == Some(1.0)
    })
    .await;
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(group.report().value("in_flight"), Some(0.0));
    // The ejection ends and the address, healthy again, takes requests.
    bad.fail_with(0);
    support::eventually("the ejection ends", || {
        group.report().value("ejected") == Some(0.0)
    })
    .await;
    for _ in 0..30 {
        assert_eq!(get(&gw.url("/x"), &[]).await.status, StatusCode::OK);
    }
    assert!(bad.hits() > 2, "taken back: {}", bad.hits());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_never_answers_is_ejected_and_a_full_bulkhead_does_not_open_the_breaker() {
    let hole = support::black_hole().await;
    let good = Upstream::start().await;
    let toml = format!(
        r#"
[upstreams.pair]
addresses = ["{hole}", "{good}"]
timeout = "400ms"
breaker = {{ window = 100, minimum_calls = 100 }}
outlier = {{ consecutive_failures = 2, base_ejection = "30s" }}

[upstreams.narrow]
addresses = ["{good}"]
bulkhead = {{ max_concurrent = 1 }}
breaker = {{ window = 2, minimum_calls = 2, failure_rate = 0.5 }}

[[routes]]
name = "pair"
prefix = "/pair"
upstream = "pair"
request = {{ strip_prefix = "/pair" }}

[[routes]]
name = "narrow"
prefix = "/narrow"
upstream = "narrow"
request = {{ strip_prefix = "/narrow" }}
"#,
        good = good.addr
    );
    let gw = TestGateway::start(&toml).await;
    let mut timeouts = 0;
    for _ in 0..20 {
        match get(&gw.url("/pair/x"), &[]).await.status {
            StatusCode::OK => {}
            StatusCode::GATEWAY_TIMEOUT => timeouts += 1,
            other => panic!("{other}"),
        }
    }
    assert_eq!(
        timeouts, 2,
        "two timeouts in a row eject the silent address"
    );

    let before = good.hits();
    let slow = tokio::spawn({
        let url = gw.url("/narrow/slow/2000");
        async move { get(&url, &[]).await.status }
    });
    // Once the upstream has it, the slow request holds the bulkhead's one place.
    support::eventually("the slow request reaches the upstream", || {
        good.hits() > before
    })
    .await;
    for _ in 0..4 {
        let r = get(&gw.url("/narrow/x"), &[]).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "the bulkhead is full"
        );
    }
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    let breaker = gw.handle("breaker", "test.narrow");
    assert_eq!(
        breaker.report().state,
        "closed",
        "rejections from the bulkhead are not the upstream's failures"
    );
    assert_eq!(get(&gw.url("/narrow/x"), &[]).await.status, StatusCode::OK);
    gw.stop().await;
}
