//! Routing by each rule, transforms, request ids and aggregation, over real HTTP.

mod support;

use http::StatusCode;
use support::{TestGateway, Upstream, dead_address, get};

async fn three() -> (Upstream, Upstream, Upstream) {
    (
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_params_method_and_header() {
    let (a, b, c) = three().await;
    let toml = format!(
        r#"
[upstreams.a]
addresses = ["{a}"]
[upstreams.b]
addresses = ["{b}"]
[upstreams.c]
addresses = ["{c}"]

[[routes]]
name = "exact-host"
host = "api.example"
prefix = "/"
upstream = "a"

[[routes]]
name = "wildcard-host"
host = "*.tenants.example"
prefix = "/"
upstream = "b"

[[routes]]
name = "v2-by-header"
path = "/items/{{id}}"
headers = {{ x-api-version = "2" }}
upstream = "b"

[[routes]]
name = "items"
path = "/items/{{id}}"
methods = ["GET", "DELETE"]
upstream = "a"

[[routes]]
name = "static-beats-param"
path = "/items/special"
upstream = "c"

[[routes]]
name = "files"
prefix = "/files"
upstream = "c"
"#,
        a = a.addr,
        b = b.addr,
        c = c.addr
    );
    let gw = TestGateway::start(&toml).await;
    let port = |ans: &support::Answer| ans.json()["port"].as_u64().unwrap() as u16;

    let r = get(&gw.url("/anything"), &[("host", "api.example:8080")]).await;
    assert_eq!(
        (r.status, port(&r)),
        (StatusCode::OK, a.addr.port()),
        "exact host, port ignored"
    );
    let r = get(&gw.url("/x"), &[("host", "ACME.tenants.example")]).await;
    assert_eq!(port(&r), b.addr.port(), "wildcard host, case-insensitive");
    let r = get(&gw.url("/x"), &[("host", "tenants.example")]).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the bare suffix is not a subdomain"
    );
    let r = get(
        &gw.url("/x"),
        &[("host", "a-much-longer-host-name.example")],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "a host that does not end with the suffix"
    );

    let r = get(&gw.url("/items/42"), &[]).await;
    assert_eq!(port(&r), a.addr.port());
    assert_eq!(r.json()["uri"], "/items/42");
    let r = get(&gw.url("/items/42"), &[("x-api-version", "2")]).await;
    assert_eq!(
        port(&r),
        b.addr.port(),
        "the header rule wins while it matches"
    );
    let r = get(&gw.url("/items/special"), &[]).await;
    assert_eq!(
        port(&r),
        c.addr.port(),
        "a static segment is more specific than a parameter"
    );

    let post = support::send(
        &support::client(),
        http::Request::post(gw.url("/items/42"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.body, "method not allowed");

    for path in ["/files", "/files/", "/files/a/b.txt"] {
        let r = get(&gw.url(path), &[]).await;
        assert_eq!(
            (r.status, port(&r)),
            (StatusCode::OK, c.addr.port()),
            "{path}"
        );
    }
    let r = get(&gw.url("/filesystem"), &[]).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "a prefix matches whole segments"
    );
    assert_eq!(r.body, "no route");
    assert_eq!(
        gw.gateway.handle().route_counts("files"),
        Some([3, 0, 0, 0])
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_and_request_ids() {
    let up = Upstream::start().await;
    let toml = format!(
        r#"
[identity]
strip = ["x-internal-*"]

[upstreams.u]
addresses = ["{up}"]

[[routes]]
name = "users"
path = "/api/users/{{id}}"
upstream = "u"
request = {{ rewrite = "/v2/users/{{id}}", add_headers = {{ x-gw = "edge" }}, set_headers = {{ x-env = "test" }}, remove_headers = ["cookie"], rename_headers = {{ x-old = "x-new" }} }}
response = {{ remove_headers = ["server", "x-upstream-secret"], add_headers = {{ x-served-by = "gw" }} }}

[[routes]]
name = "api"
prefix = "/api"
upstream = "u"
request = {{ strip_prefix = "/api" }}
"#,
        up = up.addr
    );
    let gw = TestGateway::start(&toml).await;
    let r = get(
        &gw.url("/api/users/7?full=1"),
        &[
            ("cookie", "session=1"),
            ("x-old", "v"),
            ("x-env", "prod"),
            ("x-internal-role", "admin"),
            ("x-request-id", "abc-123"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = r.json();
    assert_eq!(seen["uri"], "/v2/users/7?full=1");
    assert_eq!(r.seen("x-gw").as_deref(), Some("edge"));
    assert_eq!(r.seen("x-env").as_deref(), Some("test"), "set replaces");
    assert_eq!(r.seen("cookie"), None);
    assert_eq!(
        (r.seen("x-old"), r.seen("x-new").as_deref()),
        (None, Some("v"))
    );
    assert_eq!(
        r.seen("x-internal-role"),
        None,
        "a configured prefix is stripped"
    );
    assert_eq!(
        r.seen("x-hop"),
        None,
        "a header named by Connection is hop-by-hop"
    );
    assert_eq!(
        r.seen("x-request-id").as_deref(),
        Some("abc-123"),
        "the client's id is kept"
    );
    assert_eq!(r.seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-upstream-secret"), None);
    assert_eq!(r.header("x-served-by"), Some("gw"));

    let r = get(
        &gw.url("/api/orders?x=1"),
        &[("x-request-id", "bad id with spaces")],
    )
    .await;
    assert_eq!(
        r.json()["uri"],
        "/orders?x=1",
        "prefix stripped, query kept"
    );
    let made = r.header("x-request-id").unwrap().to_owned();
    assert_ne!(made, "bad id with spaces", "an unusable id is replaced");
    assert_eq!(
        r.seen("x-request-id"),
        Some(made.clone()),
        "the new id goes upstream too"
    );
    let next = get(&gw.url("/api/orders"), &[]).await;
    let next = next.header("x-request-id").unwrap();
    // 32 hex digits: a per-process prefix, then a counter.
    assert_eq!(made.len(), 32);
    assert!(
        made.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{made}"
    );
    assert_eq!(next[..16], made[..16], "one process, one prefix");
    assert!(!made.starts_with("0000000000"), "a random prefix: {made}");
    // The counter is the process's: a request of another test in this binary may take the
    // number in between, so the next id's counter is larger, not necessarily by one.
    let counter = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
    assert!(
        counter(next) > counter(&made),
        "ids are unique and increase: {made} then {next}"
    );
    // A redirect is an answer of its own class.
    let r = get(&gw.url("/api/status/302"), &[]).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        gw.gateway.handle().route_counts("api").unwrap()[1],
        1,
        "one 3xx"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_merges_and_marks_partial_answers() {
    let users = Upstream::start().await;
    let orders = Upstream::start().await;
    let dead = dead_address().await;
    let toml = format!(
        r#"
[upstreams.users]
addresses = ["{users}"]
[upstreams.orders]
addresses = ["{orders}"]
[upstreams.dead]
addresses = ["{dead}"]
connect_timeout = "200ms"
[upstreams.slow]
addresses = ["{orders}"]

[[routes]]
name = "profile"
path = "/profile/{{id}}"
aggregate = {{ timeout = "2s", parts = [{{ name = "user", upstream = "users", path = "/users/{{id}}" }}, {{ name = "orders", upstream = "orders", path = "/orders?user={{id}}" }}] }}

[[routes]]
name = "partial"
path = "/partial/{{id}}"
aggregate = {{ timeout = "300ms", parts = [{{ name = "user", upstream = "users", path = "/users/{{id}}" }}, {{ name = "orders", upstream = "dead", path = "/orders" }}, {{ name = "slow", upstream = "slow", path = "/slow/2000" }}, {{ name = "broken", upstream = "users", path = "/status/500" }}] }}

[[routes]]
name = "both-slow"
path = "/both-slow"
aggregate = {{ timeout = "2s", parts = [{{ name = "a", upstream = "users", path = "/slow/300" }}, {{ name = "b", upstream = "orders", path = "/slow/300" }}] }}

[[routes]]
name = "all-fail"
path = "/none"
aggregate = {{ parts = [{{ name = "a", upstream = "dead", path = "/" }}, {{ name = "b", upstream = "users", path = "/status/503" }}] }}
"#,
        users = users.addr,
        orders = orders.addr,
    );
    let gw = TestGateway::start(&toml).await;
    let r = get(&gw.url("/profile/7"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert_eq!(doc["user"]["uri"], "/users/7");
    assert_eq!(doc["orders"]["uri"], "/orders?user=7");
    assert_eq!(doc["partial"], false);
    assert!(doc.get("errors").is_none());

    // Parts run at once: two parts of 300 ms each take about 300 ms, not 600.
    let started = std::time::Instant::now();
    let r = get(&gw.url("/both-slow"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["partial"], false);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(550),
        "the parts ran one after the other: {took:?}"
    );

    let r = get(&gw.url("/partial/7"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "still answers");
    let doc = r.json();
    assert_eq!(doc["user"]["uri"], "/users/7");
    assert_eq!(doc["partial"], true);
    assert!(doc["orders"].is_null() && doc["slow"].is_null() && doc["broken"].is_null());
    assert_eq!(doc["errors"]["orders"], "unavailable");
    assert_eq!(doc["errors"]["slow"], "timeout");
    assert_eq!(doc["errors"]["broken"], "upstream error");

    let r = get(&gw.url("/none"), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.body, "bad gateway");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_paths_and_injected_parameters_never_reach_an_upstream() {
    let up = Upstream::start().await;
    let toml = format!(
        r#"
[upstreams.u]
addresses = ["{up}"]

[[routes]]
name = "public"
prefix = "/public"
upstream = "u"

[[routes]]
name = "lookup"
path = "/lookup/{{id}}"
upstream = "u"
request = {{ rewrite = "/orders?user={{id}}" }}
"#,
        up = up.addr
    );
    let gw = TestGateway::start(&toml).await;
    for path in [
        "/public/../admin",
        "/public/./x",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "/public/a%2Fb",
        "/public/a%5cb",
        "/public//admin",
        "/public/..",
    ] {
        let r = get(&gw.url(path), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.body, "bad path", "{path}");
    }
    assert_eq!(up.hits(), 0);
    let r = get(&gw.url("/public/a.b/..c"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "dots inside a segment are fine");
    for path in ["/public/v2e5c", "/public/%41b", "/public/100%25"] {
        let r = get(&gw.url(path), &[]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{path}: other escapes and look-alikes pass"
        );
    }

    let r = get(&gw.url("/lookup/7&admin=1"), &[]).await;
    assert_eq!(
        r.json()["uri"],
        "/orders?user=7%26admin%3D1",
        "a parameter adds no query parameter"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_routed_on_is_the_host_sent_on_and_forwarding_headers_are_the_gateways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let toml = format!(
        r#"
[upstreams.a]
addresses = ["{a}"]
[upstreams.b]
addresses = ["{b}"]

[[routes]]
name = "api"
host = "api.example"
prefix = "/"
upstream = "a"

[[routes]]
name = "any"
prefix = "/"
upstream = "b"
"#,
        a = a.addr,
        b = b.addr
    );
    let gw = TestGateway::start(&toml).await;
    // An absolute-form target names one host and the Host header another.
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(
        b"GET http://api.example/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("\"port\":{}", a.addr.port())),
        "routed by the target's host: {answer}"
    );
    assert!(
        answer.contains(r#""host":"api.example""#),
        "and sent with it: {answer}"
    );

    let r = get(
        &gw.url("/x"),
        &[
            ("forwarded", "for=10.0.0.1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "admin.example"),
            ("x-real-ip", "10.0.0.1"),
            ("expect", "100-continue"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.seen("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "replaced"
    );
    for name in ["forwarded", "x-forwarded-host", "x-real-ip", "expect"] {
        assert_eq!(r.seen(name), None, "{name}");
    }
    gw.stop().await;
}
