//! Two gateway instances share one budget per consumer through Redis (`TP_REDIS_URL`; skipped
//! with a printed reason without it, failed under the test command).
#![cfg(feature = "redis")]

mod support;

use http::StatusCode;
use support::{TestGateway, Upstream, get, key_hash};
use tower_patterns_testkit::servers::{Server, server_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget() {
    let Some(url) = server_url(Server::Redis) else {
        return;
    };
    let up = Upstream::start().await;
    // A limit name of its own per run: Redis keeps counts between runs.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let limit = format!("shared_{}_{nanos}", std::process::id());
    let toml = format!(
        r#"
[redis]
url = "{url}"
on_unavailable = "deny"

[auth.keys]
api_key = {{ header = "x-api-key" }}
[[consumers]]
id = "c1"
api_keys_sha256 = ["{k1}"]
[[consumers]]
id = "c2"
api_keys_sha256 = ["{k2}"]

[limits.{limit}]
key = "consumer"
rate = "4/m"
store = "redis"

[upstreams.u]
addresses = ["{up}"]

[[routes]]
name = "api"
prefix = "/"
upstream = "u"
auth = "keys"
limit = "{limit}"
"#,
        k1 = key_hash("key-1"),
        k2 = key_hash("key-2"),
        up = up.addr
    );
    let one = TestGateway::start(&toml).await;
    let two = TestGateway::start(&toml).await;
    for i in 0..4 {
        let gw = if i % 2 == 0 { &one } else { &two };
        let r = get(&gw.url("/x"), &[("x-api-key", "key-1")]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    for gw in [&one, &two] {
        let r = get(&gw.url("/x"), &[("x-api-key", "key-1")]).await;
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "the budget is spent across both"
        );
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(
        get(&two.url("/x"), &[("x-api-key", "key-2")]).await.status,
        StatusCode::OK
    );
    assert_eq!(up.hits(), 5);
    one.stop().await;
    two.stop().await;
}
