//! Limits over real HTTP: per-consumer rates with plans, 429 with its headers, the body cap,
//! and slow clients (headers and bodies) cut off.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{Full, StreamBody};
use support::{TestGateway, Upstream, get, key_hash};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway(up: &Upstream) -> TestGateway {
    let toml = format!(
        r#"
[server]
max_body = "1KiB"
header_read_timeout = "500ms"
body_read_timeout = "500ms"

[auth.keys]
api_key = {{ header = "x-api-key" }}

[[consumers]]
id = "free-1"
tenant = "acme"
plan = "free"
api_keys_sha256 = ["{free1}"]
[[consumers]]
id = "free-2"
tenant = "acme"
plan = "free"
api_keys_sha256 = ["{free2}"]
[[consumers]]
id = "gold"
tenant = "globex"
plan = "gold"
api_keys_sha256 = ["{gold}"]

[limits.per_consumer]
key = "consumer"
rate = "2/m"
burst = 2
plans = {{ gold = "10/m" }}

[limits.per_ip]
key = "client_ip"
rate = "3/m"
burst = 3

[upstreams.u]
addresses = ["{up}"]

[[routes]]
name = "api"
prefix = "/api"
upstream = "u"
auth = "keys"
limit = "per_consumer"

[[routes]]
name = "open"
prefix = "/open"
upstream = "u"
limit = "per_ip"

[auth.maybe]
api_key = {{ header = "x-api-key" }}
optional = true

[[routes]]
name = "maybe"
prefix = "/maybe"
upstream = "u"
auth = "maybe"
limit = "per_consumer"

[limits.per_tenant]
key = "tenant"
rate = "2/m"

[limits.per_ip_authenticated]
key = "client_ip"
rate = "2/m"

[[routes]]
name = "tenant"
prefix = "/tenant"
upstream = "u"
auth = "keys"
limit = "per_tenant"

[[routes]]
name = "ip"
prefix = "/ip"
upstream = "u"
auth = "keys"
limit = "per_ip_authenticated"

[[routes]]
name = "upload"
prefix = "/upload"
upstream = "u"
"#,
        free1 = key_hash("k-free-1"),
        free2 = key_hash("k-free-2"),
        gold = key_hash("k-gold"),
        up = up.addr
    );
    TestGateway::start(&toml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_consumer_has_its_own_rate_and_plans_raise_it() {
    let up = Upstream::start().await;
    let gw = gateway(&up).await;
    let call = |key: &'static str| {
        let url = gw.url("/api/x");
        async move { get(&url, &[("x-api-key", key)]).await }
    };
    let first = call("k-free-1").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("ratelimit-limit"), Some("2"));
    assert_eq!(first.header("ratelimit-remaining"), Some("1"));
    assert_eq!(call("k-free-1").await.status, StatusCode::OK);
    let refused = call("k-free-1").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert_eq!(
        call("k-free-2").await.status,
        StatusCode::OK,
        "another consumer is not limited"
    );
    for i in 0..10 {
        assert_eq!(
            call("k-gold").await.status,
            StatusCode::OK,
            "gold request {i}"
        );
    }
    assert_eq!(call("k-gold").await.status, StatusCode::TOO_MANY_REQUESTS);
    // By client address on an anonymous route.
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/open/x"), &[]).await.status, StatusCode::OK);
    }
    assert_eq!(
        get(&gw.url("/open/x"), &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Optional auth: an anonymous caller is limited by its address, apart from consumers.
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/maybe/x"), &[]).await.status, StatusCode::OK);
    }
    let r = get(&gw.url("/maybe/x"), &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let r = get(&gw.url("/maybe/x"), &[("x-api-key", "k-free-2")]).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a consumer keeps its own budget (one left)"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_get_413_whether_announced_or_streamed() {
    let up = Upstream::start().await;
    let gw = gateway(&up).await;
    let client = support::client();
    let ok = support::send(
        &client,
        Request::post(gw.url("/upload"))
            .body(Full::from(vec![b'a'; 1024]))
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["body_len"], 1024);
    let big = support::send(
        &client,
        Request::post(gw.url("/upload"))
            .body(Full::from(vec![b'a'; 1025]))
            .unwrap(),
    )
    .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.body, "request body too large");
    // Chunked, no length announced: cut when the cap is passed.
    let chunks = (0..8)
        .map(|_| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'b'; 200]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let streamed =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<StreamBody<_>>()
            .request(Request::post(gw.url("/upload")).body(body).unwrap())
            .await
            .unwrap();
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.hits(), 1, "only the body within the cap went upstream");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_cannot_hold_a_connection() {
    let up = Upstream::start().await;
    let gw = gateway(&up).await;
    // Headers sent a byte every 50 ms, never finished: the connection is closed once the
    // header read timeout (500 ms) passes, however steadily the bytes come.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let header = b"GET /upload HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for byte in header {
        if slow.write_all(&[*byte]).await.is_err() || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the gateway closed the connection");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Meanwhile others were served.
    assert_eq!(get(&gw.url("/upload"), &[]).await.status, StatusCode::OK);

    // A body announced and never sent, without a credential: 401 at once, the body unread.
    let mut anonymous = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    anonymous
        .write_all(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let early = Instant::now();
    let mut answer = vec![0; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), anonymous.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        early.elapsed() < Duration::from_millis(400),
        "not after the body read timeout"
    );

    // A chunked body that breaks (a chunk size that is not hex): 400, not 413.
    let mut broken = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    broken
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        .await
        .unwrap();
    let mut answer = vec![0; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), broken.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    // A body announced and never sent: 408 once the body read timeout passes.
    let mut stalled = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let mut answer = vec![0; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(up.hits(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_shares_its_budget_and_so_does_an_address() {
    let up = Upstream::start().await;
    let gw = gateway(&up).await;
    let call = |path: &'static str, key: &'static str| {
        let url = gw.url(path);
        async move { get(&url, &[("x-api-key", key)]).await.status }
    };
    assert_eq!(call("/tenant/x", "k-free-1").await, StatusCode::OK);
    assert_eq!(call("/tenant/x", "k-free-2").await, StatusCode::OK);
    assert_eq!(
        call("/tenant/x", "k-free-1").await,
        StatusCode::TOO_MANY_REQUESTS,
        "acme's two consumers spent acme's budget"
    );
    assert_eq!(
        call("/tenant/x", "k-gold").await,
        StatusCode::OK,
        "globex has its own"
    );
    // Keyed by address on an authenticated route: every consumer from here shares one.
    assert_eq!(call("/ip/x", "k-free-1").await, StatusCode::OK);
    assert_eq!(call("/ip/x", "k-gold").await, StatusCode::OK);
    assert_eq!(
        call("/ip/x", "k-free-2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    gw.stop().await;
}
