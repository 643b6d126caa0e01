//! The small examples run as a user runs them, their output checked: cache-aside, the rate
//! limit, the bulkhead, multi-tenancy, the retry delays and the shard moves (the tables the
//! guides quote), the payment client with fallback and the error mapping (their curl lines,
//! in process). (The storefront, the gateway, the sagas and the CQRS
//! examples have test files of their own.)

use std::process::ExitCode;

macro_rules! example {
    ($name:ident, $path:literal) => {
        #[allow(dead_code, reason = "the example's `main`: the test calls `run`")]
        #[path = $path]
        mod $name;
    };
}

example!(cache_aside, "../examples/cache_aside.rs");
example!(rate_limit, "../examples/rate_limit.rs");
example!(bulkhead, "../examples/bulkhead.rs");
example!(tenancy, "../examples/tenancy.rs");
example!(retry_delays, "../examples/retry_delays.rs");
example!(shard_moves, "../examples/shard_moves.rs");
example!(payment_gateway, "../examples/payment_gateway.rs");
example!(error_mapping, "../examples/error_mapping.rs");
example!(social_shards, "../examples/social_shards.rs");
example!(grpc, "../examples/grpc.rs");

/// Sends `method uri` to `router` and reads the status, the `Retry-After` and the body.
async fn call(router: axum::Router, method: &str, uri: &str) -> (u16, String, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let res = router.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let after = res
        .headers()
        .get("retry-after")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, after, String::from_utf8_lossy(&body).into_owned())
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test(start_paused = true)]
async fn cache_aside_makes_one_load_for_a_stampede() {
    let mut out = Vec::new();
    assert_eq!(
        cache_aside::run(args("--readers 50"), &mut out).await,
        ExitCode::SUCCESS
    );
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains(
            "50 readers at once on a 200 ms database: 1 load, 49 waited for it, 50 answered"
        ),
        "{out}"
    );
    assert!(out.contains("a repeat: 1 hit(s), still 1 load"), "{out}");
    assert!(out.contains(r#"stale while revalidating: "product 7, version 1" in 0 ms; then "product 7, version 2""#), "{out}");
    assert!(
        out.contains(
            r#"invalidated: the next read loads again: "product 7, version 3" (3 loads in all)"#
        ),
        "{out}"
    );
    let mut out = Vec::new();
    assert_eq!(
        cache_aside::run(args("--readers 0"), &mut out).await,
        ExitCode::from(2)
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_refuses_one_client_only() {
    let mut out = Vec::new();
    assert_eq!(rate_limit::run(vec![], &mut out).await, ExitCode::SUCCESS);
    let out = String::from_utf8(out).unwrap();
    for i in 1..=5 {
        assert!(
            out.contains(&format!("noisy #{i}: 200 remaining {}", 5 - i)),
            "{out}"
        );
    }
    for i in 6..=8 {
        assert!(
            out.contains(&format!("noisy #{i}: 429 remaining 0")),
            "{out}"
        );
    }
    assert!(out.contains("calm #1: 200 remaining 4"), "{out}");
    assert!(out.contains("noisy #9: 200"), "{out}");
    assert!(out.contains("limiter: 2 client(s), 3 refused"), "{out}");
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_refuses_a_fifth_call_to_a_and_serves_b() {
    let mut out = Vec::new();
    assert_eq!(bulkhead::run(vec![], &mut out).await, ExitCode::SUCCESS);
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("A's pool: 4 of 4 in flight"), "{out}");
    assert!(
        out.contains(r#"A #5: refused at once: bulkhead full (503 "bulkhead full")"#),
        "{out}"
    );
    assert!(out.contains("B meanwhile: B answered"), "{out}");
    assert!(out.contains("A's four slow calls: 4 answered"), "{out}");
}

#[tokio::test]
async fn tenancy_answers_each_credential_clearly() {
    let mut out = Vec::new();
    assert_eq!(tenancy::run(vec![], &mut out).await, ExitCode::SUCCESS);
    let out = String::from_utf8(out).unwrap();
    let status = |what: &str| {
        out.lines()
            .find(|l| l.starts_with(what))
            .and_then(|l| l[34..].split_whitespace().next())
            .unwrap_or_else(|| panic!("no line for {what}:\n{out}"))
            .to_owned()
    };
    assert_eq!(status("an API key"), "200", "{out}");
    assert!(
        out.contains("hello, acme") && out.contains("hello, globex"),
        "{out}"
    );
    assert_eq!(status("a verified token"), "200");
    assert_eq!(status("nothing"), "401");
    assert_eq!(status("a header alone"), "401");
    assert_eq!(status("a forged token"), "401");
    assert_eq!(status("an unknown key"), "401");
    assert_eq!(status("a suspended tenant"), "403");
    assert_eq!(status("a key and a header that disagree"), "403");
    assert_eq!(status("a malformed id"), "400");
}

#[test]
fn retry_delays_prints_a_row_per_family() {
    let mut out = Vec::new();
    assert_eq!(
        retry_delays::run(&args("--draws 1000"), &mut out),
        ExitCode::SUCCESS
    );
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "a header, a rule and 8 families:\n{out}");
    assert!(
        lines[0].starts_with("| family | retry 1 |") && lines[0].ends_with("retry 8 |"),
        "{out}"
    );
    assert!(out.contains("| constant | 100 ms | 100 ms |"), "{out}");
    assert!(out.contains("| exponential ×2 | 100 ms | 200 ms | 400 ms | 800 ms | 1600 ms | 3200 ms | 6400 ms | 10000 ms |"), "{out}");
    let mut out = Vec::new();
    assert_eq!(
        retry_delays::run(&args("--draws nope"), &mut out),
        ExitCode::from(2)
    );
}

#[test]
fn shard_moves_shows_jump_moving_a_seventeenth() {
    let mut out = Vec::new();
    assert_eq!(
        shard_moves::run(&args("--keys 10000"), &mut out),
        ExitCode::SUCCESS
    );
    let out = String::from_utf8(out).unwrap();
    let moved = |strategy: &str| -> f64 {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("| {strategy} |")))
            .unwrap_or_else(|| panic!("{out}"));
        line.split(" | ")
            .nth(1)
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    assert!((90.0..97.0).contains(&moved("modulo")), "{out}");
    assert!((4.5..7.5).contains(&moved("jump")), "{out}");
    assert!((4.5..7.5).contains(&moved("rendezvous")), "{out}");
    assert_eq!(out.lines().count(), 7, "{out}");
}

#[tokio::test(start_paused = true)]
async fn the_payment_client_falls_back_as_its_curl_lines_say() {
    let router = payment_gateway::router();
    let charge = |path: &'static str| call(router.clone(), "POST", path);
    assert_eq!(charge("/charge/alice/100").await.2, "CHARGED alice 100\n");
    charge("/gateway/down").await;
    // A gateway failure: alice's previous charge of that amount stands in (while bob, below,
    // has none and fails).
    assert_eq!(
        charge("/charge/alice/100").await,
        (200, String::new(), "CHARGED alice 100\n".into())
    );
    // bob has none: 502 until the breaker opens (five failures in a row), then queued.
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(charge("/charge/bob/5").await.0);
    }
    assert_eq!(
        answers.iter().filter(|s| **s == 502).count(),
        4,
        "{answers:?}"
    );
    let (status, _, body) = charge("/charge/bob/5").await;
    assert_eq!((status, body.as_str()), (200, "QUEUED bob 5\n"));
    let (_, _, health) = call(router.clone(), "GET", "/health").await;
    assert!(health.contains("payment-gateway: open"), "{health}");
}

#[tokio::test(start_paused = true)]
async fn error_mapping_answers_each_failure_with_its_status() {
    let router = error_mapping::router();
    assert_eq!(
        call(router.clone(), "GET", "/").await,
        (200, String::new(), "hello\n".into())
    );
    let (status, _, body) = call(router.clone(), "GET", "/slow").await;
    assert_eq!(status, 504, "{body}");
    let (status, after, _) = call(router.clone(), "GET", "/limited").await;
    assert_eq!((status, after.as_str()), (429, "2"));
    let (status, after, _) = call(router.clone(), "GET", "/shed").await;
    assert_eq!((status, after.as_str()), (503, "30"));
}

#[tokio::test]
async fn social_shards_places_searches_and_grows() {
    let mut out = Vec::new();
    let code = social_shards::run(&args("--users 3000"), &mut out).await;
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.starts_with("3000 users over 16 shards by region"),
        "{out}"
    );
    // Each region's shards hold its share of the users (a quarter, a half, a quarter), and
    // every shard about the same.
    for (region, share) in [("eu", 750u64), ("us", 1500), ("ap", 750)] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{region}:")))
            .unwrap();
        let counts: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect();
        let total: u64 = counts.iter().sum();
        assert!(total.abs_diff(share) < share / 8, "{region}: {line}");
        assert!(
            counts.iter().all(|c| c.abs_diff(3000 / 16) < 60),
            "{region}: {line}"
        );
    }
    assert!(
        out.contains("the name index") && out.contains("same answer: yes"),
        "{out}"
    );
    let moved: f64 = out
        .split("moves ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((4.5..7.5).contains(&moved), "{out}");
    let mut out = Vec::new();
    assert_eq!(
        social_shards::run(&args("--users 5"), &mut out).await,
        ExitCode::from(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_retries_unavailable_and_maps_refusals_to_statuses() {
    let mut out = Vec::new();
    let code = grpc::run(&args("--calls 20"), &mut out).await;
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(
        out.contains("first reply: ch_o0_100 for tenant acme"),
        "{out}"
    );
    // Every UNAVAILABLE was retried under the call's idempotency key.
    assert!(
        out.contains("20 of 20 charged; the server answered UNAVAILABLE"),
        "{out}"
    );
    assert!(
        !out.contains("UNAVAILABLE 0 times"),
        "chaos injected nothing: {out}"
    );
    assert!(out.contains("breaker closed"), "{out}");
    assert!(
        out.contains(r#"no credential: Unauthenticated "missing tenant or credentials""#),
        "{out}"
    );
    assert!(
        out.contains(r#"an unknown key: Unauthenticated "invalid credentials""#),
        "{out}"
    );
    assert!(
        out.contains(r#"a tenant that disagrees: PermissionDenied "conflicting tenant sources""#),
        "{out}"
    );
    assert!(
        out.contains(r#"a malformed tenant: InvalidArgument "malformed tenant or credentials""#),
        "{out}"
    );

    // A server that always answers UNAVAILABLE: the breaker, reading grpc-status, opens and
    // then refuses calls itself.
    let mut out = Vec::new();
    let code = grpc::run(&args("--calls 15 --unavailable 1"), &mut out).await;
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("0 of 15 charged"), "{out}");
    assert!(out.contains("breaker open,"), "{out}");
    assert!(!out.contains(", 0 call(s) refused by it"), "{out}");
    let mut out = Vec::new();
    assert_eq!(
        grpc::run(&args("--calls 0"), &mut out).await,
        ExitCode::from(2)
    );
}
