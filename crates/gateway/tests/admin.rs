//! The admin listener: health, readiness while draining, and `/metrics` behind its token.
#![cfg(feature = "prometheus")]

mod support;

use http::StatusCode;
use support::{Upstream, get, key_hash};
use tokio::{net::TcpListener, sync::watch};
use tower_patterns_gateway::Gateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_behind_the_token() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "an-admin-token-for-tests\n").unwrap();
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token_file = "admin.token"

[auth.keys]
api_key = {{ header = "x-api-key" }}
[[consumers]]
id = "c"
api_keys_sha256 = ["{key}"]
[limits.tight]
rate = "1/m"

[upstreams.u]
addresses = ["{up}"]
[[routes]]
name = "api"
prefix = "/api"
upstream = "u"
auth = "keys"
limit = "tight"

[[routes]]
name = "open"
prefix = "/open"
upstream = "u"
request = {{ strip_prefix = "/open" }}
"#,
        key = key_hash("k"),
        up = up.addr
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    let gateway = Gateway::builder("adm")
        .config_file(&path)
        .prometheus(prometheus)
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    let until = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let served = tokio::spawn(gateway.clone().serve(listener, until(rx)));
    let admin_served = tokio::spawn(gateway.clone().serve_admin(admin, until(admin_rx)));
    let url = |p: &str| format!("http://{admin_addr}{p}");
    let api = format!("http://{addr}/api/x");

    assert_eq!(get(&url("/healthz"), &[]).await.status, StatusCode::OK);
    assert_eq!(get(&url("/readyz"), &[]).await.status, StatusCode::OK);
    assert_eq!(
        get(&api, &[("x-api-key", "k")]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&api, &[("x-api-key", "k")]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    for bad in [
        vec![],
        vec![("authorization", "Bearer wrong-token-of-some-length")],
    ] {
        let r = get(&url("/metrics"), &bad).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(!String::from_utf8_lossy(&r.body).contains("tower_patterns"));
    }
    let r = get(
        &url("/metrics"),
        &[("authorization", "Bearer an-admin-token-for-tests")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    for line in [
        r#"tower_patterns_gateway_requests_total{name="adm",route="api",class="2xx"} 1"#,
        r#"tower_patterns_gateway_requests_total{name="adm",route="api",class="4xx"} 1"#,
        r#"tower_patterns_gateway_reloads_total{name="adm",outcome="refused"} 0"#,
        r#"tower_patterns_gateway_config_generation{name="adm"} 1"#,
        r#"tower_patterns_ratelimit_rejected_total{name="adm.tight",kind="rate_limited"} 1"#,
        r#"tower_patterns_breaker_rejected_total{name="adm.u"} 0"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert_eq!(
        get(&url("/nothing"), &[]).await.status,
        StatusCode::NOT_FOUND
    );

    // Draining: not ready, still healthy, the request in flight finishes.
    let before = up.hits();
    let in_flight = tokio::spawn(async move {
        get(&format!("http://{addr}/open/slow/1000"), &[])
            .await
            .status
    });
    support::eventually("the request reaches the upstream", || up.hits() > before).await;
    stop.send(true).unwrap();
    support::eventually("the gateway drains", || gateway.handle().draining()).await;
    assert_eq!(
        get(&url("/readyz"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&url("/healthz"), &[]).await.status, StatusCode::OK);
    assert_eq!(
        in_flight.await.unwrap(),
        StatusCode::OK,
        "answered, not dropped"
    );
    served.await.unwrap().unwrap();
    stop_admin.send(true).unwrap();
    admin_served.await.unwrap().unwrap();
}
