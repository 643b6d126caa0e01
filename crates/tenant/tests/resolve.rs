//! Tenant resolution: every source, forged tokens, spoofed forwarded headers, conflicts.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use http::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use proptest::prelude::*;
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use tower_patterns_core::{http::ErrorResponseLayer, tenant::TenantId};
use tower_patterns_tenant::{
    ApiKeyHash, ClientIp, JwtVerifier, PeerAddr, Registry, StaticTenants, StoreError, TenancyLayer,
    TenantContext, TenantRecord, TenantStatus, TenantStore,
};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hs";
const RSA_PRIVATE: &[u8] = include_bytes!("keys/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("keys/rsa_public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("keys/ed25519_private.pem");
const ATTACKER_RSA: &[u8] = include_bytes!("keys/attacker_rsa_private.pem");
const JWKS: &str = include_str!("keys/jwks.json");

type Svc = BoxCloneService<Request<()>, Response<String>, Infallible>;

fn tenants() -> StaticTenants {
    StaticTenants::from_toml(
        r#"
        [[tenants]]
        id = "acme"
        plan = "gold"
        [[tenants]]
        id = "globex"
        [[tenants]]
        id = "initech"
        status = "suspended"
        "#,
    )
    .unwrap()
    .with(
        TenantRecord {
            id: TenantId::new("keyed").unwrap(),
            plan: "free".into(),
            status: TenantStatus::Active,
        },
        &["sk_live_keyed"],
    )
}

fn verifier() -> JwtVerifier {
    JwtVerifier::builder()
        .hs256("hs-1", SECRET)
        .jwks(JWKS)
        .audience("storefront")
        .issuer("https://auth.example")
        .build()
        .unwrap()
}

fn serve(layer: TenancyLayer<impl TenantStore>) -> Svc {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .layer(layer)
            .service(service_fn(|req: Request<()>| async move {
                let ctx = TenantContext::of(&req).expect("context");
                assert_eq!(TenantId::of(&req), Some(ctx.id()));
                let ip = req
                    .extensions()
                    .get::<ClientIp>()
                    .map(|ip| ip.to_string())
                    .unwrap_or_default();
                Ok::<_, Infallible>(Response::new(format!("{} {} {ip}", ctx.id(), ctx.plan())))
            })),
    )
}

/// Every source, verified and not; `open` opts in to tenancy by unverified sources alone.
fn every_source(open: bool) -> Svc {
    let builder = TenancyLayer::builder("test")
        .store(tenants())
        .header("x-tenant-id")
        .subdomain("shop.example")
        .path_prefix("/t/")
        .jwt(verifier())
        .api_key("x-api-key")
        .trusted_proxies(["10.0.0.0/8"]);
    let builder = if open {
        builder.allow_unverified()
    } else {
        builder
    };
    serve(builder.build().unwrap())
}

/// Every source, with `allow_unverified`: what each source resolves on its own.
fn full() -> Svc {
    every_source(true)
}

/// Every source, closed (the default): a token or API key is required.
fn closed() -> Svc {
    every_source(false)
}

async fn send(svc: &Svc, req: Request<()>) -> (StatusCode, String) {
    let res = svc.clone().oneshot(req).await.unwrap();
    (res.status(), res.into_body())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: &str) -> serde_json::Value {
    serde_json::json!({
        "tenant": tenant, "aud": "storefront", "iss": "https://auth.example",
        "exp": now() + 600, "nbf": now() - 10, "sub": "user-1",
    })
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, key).unwrap()
}

/// A request carrying one header.
fn with_header(name: &str, value: &str) -> Request<()> {
    Request::builder().header(name, value).body(()).unwrap()
}

fn bearer(token: &str) -> Request<()> {
    with_header("authorization", &format!("Bearer {token}"))
}

#[tokio::test]
async fn every_source_resolves_and_agreeing_sources_pass() {
    let svc = full();
    let header = with_header("x-tenant-id", "acme");
    assert_eq!(
        send(&svc, header).await,
        (StatusCode::OK, "acme gold ".into())
    );
    let host = with_header("host", "globex.shop.example:443");
    assert_eq!(send(&svc, host).await.0, StatusCode::OK);
    let path = Request::builder().uri("/t/acme/orders").body(()).unwrap();
    assert_eq!(send(&svc, path).await.1, "acme gold ");
    let key = with_header("x-api-key", "sk_live_keyed");
    assert_eq!(send(&svc, key).await.1, "keyed free ");

    let hs = EncodingKey::from_secret(SECRET).unwrap();
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE).unwrap();
    for (alg, kid, key) in [
        (Algorithm::HS256, "hs-1", &hs),
        (Algorithm::RS256, "rsa-1", &rsa),
        (Algorithm::EdDSA, "ed-1", &ed),
    ] {
        let (status, body) = send(&svc, bearer(&token(alg, kid, key, &claims("acme")))).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "acme gold "),
            "{alg:?}"
        );
    }
    // All sources at once, agreeing.
    let all = Request::builder()
        .uri("/t/acme/x")
        .header("host", "acme.shop.example")
        .header("x-tenant-id", "acme")
        .header(
            "authorization",
            format!(
                "Bearer {}",
                token(Algorithm::EdDSA, "ed-1", &ed, &claims("acme"))
            ),
        )
        .body(())
        .unwrap();
    assert_eq!(send(&svc, all).await.0, StatusCode::OK);
}

#[tokio::test]
async fn forged_tokens_are_refused_with_401() {
    let svc = full();
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let b64 = |s: &str| tower_patterns_testkit::base64url(s.as_bytes());
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims("acme").to_string())
    );
    let attacker = EncodingKey::from_rsa_pem(ATTACKER_RSA).unwrap();
    let mut expired = claims("acme");
    expired["exp"] = (now() - 3600).into();
    let mut early = claims("acme");
    early["nbf"] = (now() + 3600).into();
    let mut other_aud = claims("acme");
    other_aud["aud"] = "billing".into();
    let mut other_iss = claims("acme");
    other_iss["iss"] = "https://evil.example".into();
    let mut no_exp = claims("acme");
    no_exp.as_object_mut().unwrap().remove("exp");
    // Algorithm confusion: HS256 "signed" with the RSA public key, naming the RSA key.
    let confused = token(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(RSA_PUBLIC).unwrap(),
        &claims("acme"),
    );
    let cases = [
        ("alg none", none),
        (
            "wrong key",
            token(Algorithm::RS256, "rsa-1", &attacker, &claims("acme")),
        ),
        ("expired", token(Algorithm::RS256, "rsa-1", &rsa, &expired)),
        (
            "not yet valid",
            token(Algorithm::RS256, "rsa-1", &rsa, &early),
        ),
        (
            "wrong audience",
            token(Algorithm::RS256, "rsa-1", &rsa, &other_aud),
        ),
        (
            "wrong issuer",
            token(Algorithm::RS256, "rsa-1", &rsa, &other_iss),
        ),
        ("no exp", token(Algorithm::RS256, "rsa-1", &rsa, &no_exp)),
        (
            "unknown kid",
            token(Algorithm::RS256, "rsa-9", &rsa, &claims("acme")),
        ),
        ("algorithm confusion", confused),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (what, token) in cases {
        let res = full().oneshot(bearer(&token)).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer", "{what}");
    }
    // A tampered payload with the original signature.
    let good = token(Algorithm::RS256, "rsa-1", &rsa, &claims("acme"));
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = b64(&claims("globex").to_string());
    parts[1] = &forged_payload;
    let res = svc.clone().oneshot(bearer(&parts.join("."))).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // A basic credential where a bearer is expected.
    let basic = with_header("authorization", "Basic YTpi");
    assert_eq!(send(&svc, basic).await.0, StatusCode::UNAUTHORIZED);
    // A bad API key.
    let key = with_header("x-api-key", "sk_guess");
    assert_eq!(send(&svc, key).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn conflicts_unknown_suspended_missing_and_malformed() {
    let svc = full();
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE).unwrap();
    let cases = [
        // The token says acme, the header says globex.
        (
            Request::builder()
                .header("x-tenant-id", "globex")
                .header(
                    "authorization",
                    format!(
                        "Bearer {}",
                        token(Algorithm::EdDSA, "ed-1", &ed, &claims("acme"))
                    ),
                )
                .body(())
                .unwrap(),
            StatusCode::FORBIDDEN,
        ),
        // The API key belongs to `keyed`, the path says acme.
        (
            Request::builder()
                .uri("/t/acme/")
                .header("x-api-key", "sk_live_keyed")
                .body(())
                .unwrap(),
            StatusCode::FORBIDDEN,
        ),
        (
            with_header("x-tenant-id", "umbrella"),
            StatusCode::FORBIDDEN,
        ),
        (with_header("x-tenant-id", "initech"), StatusCode::FORBIDDEN),
        (Request::new(()), StatusCode::UNAUTHORIZED),
        (
            with_header("x-tenant-id", "acme corp"),
            StatusCode::BAD_REQUEST,
        ),
        (
            Request::builder()
                .header("x-tenant-id", "acme")
                .header("x-tenant-id", "globex")
                .body(())
                .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Request::builder()
                .header("x-tenant-id", &[0xffu8, 0xfe][..])
                .body(())
                .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (i, (req, expected)) in cases.into_iter().enumerate() {
        let (status, body) = send(&svc, req).await;
        assert_eq!(status, expected, "case {i}: {body}");
        assert!(
            !body.contains("acme") && !body.contains("globex"),
            "no ids in bodies"
        );
    }
}

#[tokio::test]
async fn unverified_sources_alone_choose_no_tenant_unless_allowed() {
    let svc = closed();
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE).unwrap();
    let jwt = |tenant: &str| {
        format!(
            "Bearer {}",
            token(Algorithm::EdDSA, "ed-1", &ed, &claims(tenant))
        )
    };
    // A header, a host or a path alone: any client could send them, so 401.
    for req in [
        with_header("x-tenant-id", "acme"),
        with_header("host", "acme.shop.example"),
        Request::builder().uri("/t/acme/orders").body(()).unwrap(),
        Request::builder()
            .uri("/t/acme/orders")
            .header("host", "acme.shop.example")
            .header("x-tenant-id", "acme")
            .body(())
            .unwrap(),
    ] {
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        assert_eq!(res.into_body(), "missing tenant or credentials");
    }
    // A verified credential alone, or with unverified sources that agree: served.
    assert_eq!(
        send(&svc, with_header("authorization", &jwt("acme"))).await,
        (StatusCode::OK, "acme gold ".into())
    );
    let agreeing = Request::builder()
        .uri("/t/acme/orders")
        .header("host", "acme.shop.example")
        .header("x-tenant-id", "acme")
        .header("authorization", jwt("acme"))
        .body(())
        .unwrap();
    assert_eq!(send(&svc, agreeing).await.0, StatusCode::OK);
    // The key's owner is looked up in the registry (first request), then cached (second).
    for _ in 0..2 {
        assert_eq!(
            send(&svc, with_header("x-api-key", "sk_live_keyed")).await,
            (StatusCode::OK, "keyed free ".into())
        );
        let agreeing = Request::builder()
            .header("x-tenant-id", "keyed")
            .header("x-api-key", "sk_live_keyed")
            .body(())
            .unwrap();
        assert_eq!(send(&svc, agreeing).await.0, StatusCode::OK);
        // An unverified source that disagrees with the verified one: 403, never its tenant.
        let header_disagrees = Request::builder()
            .header("x-tenant-id", "acme")
            .header("x-api-key", "sk_live_keyed")
            .body(())
            .unwrap();
        assert_eq!(send(&svc, header_disagrees).await.0, StatusCode::FORBIDDEN);
    }
    for (name, value) in [("x-tenant-id", "globex"), ("host", "globex.shop.example")] {
        let disagrees = Request::builder()
            .header(name, value)
            .header("authorization", jwt("acme"))
            .body(())
            .unwrap();
        assert_eq!(
            send(&svc, disagrees).await.0,
            StatusCode::FORBIDDEN,
            "{name}"
        );
    }
    // A credential that fails verification does not fall back to the header: 401.
    let bad_key = Request::builder()
        .header("x-tenant-id", "acme")
        .header("x-api-key", "sk_guess")
        .body(())
        .unwrap();
    assert_eq!(send(&svc, bad_key).await.0, StatusCode::UNAUTHORIZED);

    // With the opt-in, the header alone is believed; a present credential still wins.
    let open = full();
    assert_eq!(
        send(&open, with_header("x-tenant-id", "acme")).await.0,
        StatusCode::OK
    );
    let disagrees = Request::builder()
        .header("x-tenant-id", "globex")
        .header("authorization", jwt("acme"))
        .body(())
        .unwrap();
    assert_eq!(send(&open, disagrees).await.0, StatusCode::FORBIDDEN);
}

#[test]
fn a_layer_of_unverified_sources_needs_the_explicit_opt_in() {
    for builder in [
        TenancyLayer::builder("test")
            .store(tenants())
            .header("x-tenant-id"),
        TenancyLayer::builder("test")
            .store(tenants())
            .subdomain("shop.example"),
        TenancyLayer::builder("test")
            .store(tenants())
            .path_prefix("/t/")
            .header("x-tenant-id"),
    ] {
        let err = builder.build().unwrap_err();
        assert!(err.to_string().contains("allow_unverified"), "{err}");
    }
    let open = TenancyLayer::builder("test")
        .store(tenants())
        .header("x-tenant-id")
        .allow_unverified()
        .build();
    assert!(open.is_ok());
    assert!(format!("{:?}", open.unwrap()).contains("allow_unverified: true"));
    for verified in [
        TenancyLayer::builder("test")
            .store(tenants())
            .api_key("x-api-key"),
        TenancyLayer::builder("test")
            .store(tenants())
            .header("x-tenant-id")
            .jwt(verifier()),
    ] {
        assert!(verified.build().is_ok());
    }
}

#[tokio::test]
async fn unknown_and_suspended_tenants_get_one_answer() {
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE).unwrap();
    let answer = |svc: Svc, req: Request<()>| async move {
        let res = svc.oneshot(req).await.unwrap();
        let headers = format!("{:?}", res.headers());
        (res.status(), headers, res.into_body())
    };
    // By header (opted in) and by a valid token naming the tenant (closed); first from the
    // store, then from the registry's cache.
    for round in 0..2 {
        let (open, closed) = (full(), closed());
        let by_header = |t: &str| with_header("x-tenant-id", t);
        let by_token = |t: &str| bearer(&token(Algorithm::EdDSA, "ed-1", &ed, &claims(t)));
        let unknown = answer(open.clone(), by_header("umbrella")).await;
        let suspended = answer(open, by_header("initech")).await;
        assert_eq!(unknown.0, StatusCode::FORBIDDEN);
        assert_eq!(unknown, suspended, "header, round {round}");
        let unknown = answer(closed.clone(), by_token("umbrella")).await;
        let suspended = answer(closed, by_token("initech")).await;
        assert_eq!(unknown.0, StatusCode::FORBIDDEN);
        assert_eq!(unknown, suspended, "token, round {round}");
    }
}

#[tokio::test]
async fn errors_name_the_sources_that_disagreed_for_the_logs() {
    let layer = TenancyLayer::builder("test")
        .store(tenants())
        .header("x-tenant-id")
        .subdomain("shop.example")
        .path_prefix("/t/")
        .jwt(verifier())
        .api_key("x-api-key")
        .build()
        .unwrap();
    assert!(format!("{layer:?}").contains("allow_unverified: false"));
    let bare = || {
        tower::ServiceBuilder::new()
            .layer(layer.clone())
            .service(service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            }))
    };
    let svc = bare();
    assert!(format!("{svc:?}").starts_with("Tenancy"));
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE).unwrap();
    let jwt = format!(
        "Bearer {}",
        token(Algorithm::EdDSA, "ed-1", &ed, &claims("acme"))
    );
    let detail = |req: Request<()>| async {
        let fut = bare().oneshot(req);
        fut.await.unwrap_err().to_string()
    };
    for (name, value, source) in [
        ("x-tenant-id", "globex", "header"),
        ("host", "globex.shop.example", "subdomain"),
    ] {
        let req = Request::builder()
            .header(name, value)
            .header("authorization", &jwt)
            .body(())
            .unwrap();
        assert_eq!(
            detail(req).await,
            format!("conflicting tenant sources: {source} names globex, token names acme")
        );
    }
    let req = Request::builder()
        .uri("/t/globex/orders")
        .header("authorization", &jwt)
        .body(())
        .unwrap();
    assert_eq!(
        detail(req).await,
        "conflicting tenant sources: path names globex, token names acme"
    );
    // The key's owner, looked up, then cached.
    let keyed = || {
        Request::builder()
            .header("authorization", &jwt)
            .header("x-api-key", "sk_live_keyed")
            .body(())
            .unwrap()
    };
    assert_eq!(
        detail(keyed()).await,
        "conflicting tenant sources: API key belongs to keyed, another source names acme"
    );
    assert_eq!(
        detail(keyed()).await,
        "conflicting tenant sources: token names acme, API key names keyed"
    );
    assert_eq!(
        detail(with_header("x-tenant-id", "acme")).await,
        "missing tenant or credentials: only the unverified header names a tenant; a token or API key is required"
    );
    let builder = TenancyLayer::builder("test")
        .store(tenants())
        .header("x-tenant-id");
    assert!(format!("{builder:?}").contains("Header(\"x-tenant-id\")"));
    let mut svc = svc;
    let fut = tower::Service::call(&mut svc, Request::new(()));
    assert!(format!("{fut:?}").starts_with("ResponseFuture"));
}

fn from_peer(peer: &str, req: http::request::Builder) -> Request<()> {
    let mut req = req.body(()).unwrap();
    req.extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
    req
}

#[tokio::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let svc = full();
    // Through the proxy at 10.0.0.5: its forwarded host and client address are believed.
    let proxied = from_peer(
        "10.0.0.5:4000",
        Request::builder()
            .header("host", "internal-lb")
            .header("x-forwarded-host", "acme.shop.example")
            .header("x-forwarded-for", "203.0.113.9, 10.0.0.7"),
    );
    assert_eq!(
        send(&svc, proxied).await,
        (StatusCode::OK, "acme gold 203.0.113.9".into())
    );
    let forwarded = from_peer(
        "10.1.1.1:4000",
        Request::builder().header("host", "internal-lb").header(
            "forwarded",
            "for=198.51.100.1;host=\"globex.shop.example\";proto=https",
        ),
    );
    assert_eq!(send(&svc, forwarded).await.1, "globex free 10.1.1.1");

    // From an untrusted peer, a forwarded host that differs from Host is a spoof: 403.
    let spoof = from_peer(
        "198.51.100.7:5000",
        Request::builder()
            .header("host", "globex.shop.example")
            .header("x-forwarded-host", "acme.shop.example"),
    );
    assert_eq!(send(&svc, spoof).await.0, StatusCode::FORBIDDEN);
    // ...and X-Forwarded-For from it is ignored: the client is the peer.
    let xff = from_peer(
        "198.51.100.7:5000",
        Request::builder()
            .header("host", "globex.shop.example")
            .header("x-forwarded-for", "10.0.0.1"),
    );
    assert_eq!(send(&svc, xff).await.1, "globex free 198.51.100.7");
    // From an untrusted peer, a forwarded host that agrees with Host (in any case) is fine.
    let agreeing = from_peer(
        "198.51.100.7:5000",
        Request::builder()
            .header("host", "globex.shop.example")
            .header("x-forwarded-host", "GLOBEX.shop.example"),
    );
    assert_eq!(send(&svc, agreeing).await.1, "globex free 198.51.100.7");
    // Through a trusted proxy, X-Forwarded-For is walked from the right past every trusted
    // hop; an unparsable hop stops the walk at the last good one.
    let chain = from_peer(
        "10.0.0.5:4000",
        Request::builder()
            .header("host", "acme.shop.example")
            .header(
                "x-forwarded-for",
                "198.51.100.1, 203.0.113.9, 10.2.0.1, 10.0.0.7",
            ),
    );
    assert_eq!(send(&svc, chain).await.1, "acme gold 203.0.113.9");
    let garbled = from_peer(
        "10.0.0.5:4000",
        Request::builder()
            .header("host", "acme.shop.example")
            .header("x-forwarded-for", "198.51.100.1, not-an-ip, 10.0.0.7"),
    );
    assert_eq!(send(&svc, garbled).await.1, "acme gold 10.0.0.7");
    // With no peer address known, nothing is trusted either.
    let unknown_peer = Request::builder()
        .header("host", "globex.shop.example")
        .header("x-forwarded-host", "acme.shop.example")
        .body(())
        .unwrap();
    assert_eq!(send(&svc, unknown_peer).await.0, StatusCode::FORBIDDEN);
}

/// An inner service that is not ready, then fails its readiness, counting the polls.
#[derive(Clone, Default)]
struct Unready {
    polls: Arc<AtomicUsize>,
}

impl tower::Service<Request<()>> for Unready {
    type Response = Response<String>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Response<String>, std::io::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.polls.fetch_add(1, Ordering::SeqCst) {
            0 => std::task::Poll::Pending,
            _ => std::task::Poll::Ready(Err(std::io::Error::other("inner failed"))),
        }
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(String::new())))
    }
}

#[test]
fn readiness_is_the_inner_services() {
    use tower::{Layer, Service};
    let inner = Unready::default();
    let mut svc = TenancyLayer::builder("test")
        .store(tenants())
        .header("x-tenant-id")
        .allow_unverified()
        .build()
        .unwrap()
        .layer(inner.clone());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_pending());
    match svc.poll_ready(&mut cx) {
        std::task::Poll::Ready(Err(err)) => assert_eq!(err.to_string(), "inner failed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(inner.polls.load(Ordering::SeqCst), 2);
    assert_eq!(svc.get_ref().polls.load(Ordering::SeqCst), 2);
    assert_eq!(svc.get_mut().polls.load(Ordering::SeqCst), 2);
    assert_eq!(svc.into_inner().polls.load(Ordering::SeqCst), 2);
}

/// A store that counts its lookups and can be made to fail.
#[derive(Clone, Default)]
struct Counting {
    lookups: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl TenantStore for Counting {
    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError("connection refused".into()));
        }
        Ok((id.as_str() == "acme").then(|| TenantRecord {
            id: id.clone(),
            plan: "gold".into(),
            status: TenantStatus::Active,
        }))
    }

    async fn tenant_by_api_key(&self, _: &ApiKeyHash) -> Result<Option<TenantId>, StoreError> {
        Ok(None)
    }
}

#[tokio::test]
async fn the_registry_caches_tenants_and_unknown_ids_and_reports_outages() {
    let store = Counting::default();
    let layer = TenancyLayer::builder("test")
        .registry(Registry::new(store.clone()))
        .header("x-tenant-id")
        .allow_unverified()
        .build()
        .unwrap();
    let svc = serve(layer);
    let req = |t: &str| with_header("x-tenant-id", t);
    for _ in 0..5 {
        assert_eq!(send(&svc, req("acme")).await.0, StatusCode::OK);
        assert_eq!(send(&svc, req("nobody")).await.0, StatusCode::FORBIDDEN);
    }
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        2,
        "one lookup per id, unknowns included"
    );

    store.down.store(true, Ordering::SeqCst);
    // The detail, for the logs, says what the store said.
    let err = Registry::new(store.clone())
        .get(&TenantId::new("new-co").unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant registry unavailable: tenant registry: connection refused"
    );
    assert_eq!(
        send(&svc, req("acme")).await.0,
        StatusCode::OK,
        "served from the cache"
    );
    assert_eq!(
        send(&svc, req("new-co")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        send(&svc, req("new-co")).await.0,
        StatusCode::FORBIDDEN,
        "failures are not cached"
    );
}

/// A store whose keys can be revoked and whose tenants can change; its tenant lookups can be
/// held at a gate, to invalidate while one is under way.
#[derive(Clone, Default)]
struct Changing {
    keys: Arc<std::sync::Mutex<std::collections::HashMap<ApiKeyHash, TenantId>>>,
    plan: Arc<std::sync::Mutex<&'static str>>,
    lookups: Arc<AtomicUsize>,
    gate: Option<Arc<(tokio::sync::Notify, tokio::sync::Semaphore)>>,
}

impl TenantStore for Changing {
    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let plan = *self.plan.lock().unwrap();
        if let Some(gate) = &self.gate {
            gate.0.notify_one(); // entered, with the answer read
            gate.1.acquire().await.unwrap().forget();
        }
        Ok(Some(TenantRecord {
            id: id.clone(),
            plan: plan.into(),
            status: TenantStatus::Active,
        }))
    }

    async fn tenant_by_api_key(&self, hash: &ApiKeyHash) -> Result<Option<TenantId>, StoreError> {
        Ok(self.keys.lock().unwrap().get(hash).cloned())
    }
}

#[tokio::test]
async fn a_revoked_key_stops_working_once_the_registry_handle_invalidates_it() {
    let store = Changing::default();
    *store.plan.lock().unwrap() = "gold";
    let key = tower_patterns_tenant::hash_api_key("sk_acme");
    let acme = TenantId::new("acme").unwrap();
    store.keys.lock().unwrap().insert(key, acme.clone());
    let layer = TenancyLayer::builder("test")
        .registry(Registry::new(store.clone()))
        .api_key("x-api-key")
        .build()
        .unwrap();
    let registry = layer.registry().clone();
    let svc = serve(layer);
    let req = || with_header("x-api-key", "sk_acme");
    assert_eq!(
        send(&svc, req()).await,
        (StatusCode::OK, "acme gold ".into())
    );

    // Revoked in the store: the cache still answers, for up to its lifetime...
    store.keys.lock().unwrap().clear();
    assert_eq!(send(&svc, req()).await.0, StatusCode::OK);
    // ...until the registry handle (any clone of it) invalidates the key: at once.
    registry.invalidate_api_key(&key);
    assert_eq!(send(&svc, req()).await.0, StatusCode::UNAUTHORIZED);
    // The unknown key is cached too; a key issued again shows once invalidated.
    store.keys.lock().unwrap().insert(key, acme.clone());
    assert_eq!(send(&svc, req()).await.0, StatusCode::UNAUTHORIZED);
    registry.invalidate_api_key(&key);
    assert_eq!(send(&svc, req()).await.0, StatusCode::OK);

    // A plan change shows once the tenant is invalidated; invalidate_all drops everything.
    *store.plan.lock().unwrap() = "platinum";
    assert_eq!(send(&svc, req()).await.1, "acme gold ");
    registry.invalidate(&acme);
    assert_eq!(send(&svc, req()).await.1, "acme platinum ");
    store.keys.lock().unwrap().clear();
    *store.plan.lock().unwrap() = "free";
    registry.invalidate_all();
    assert_eq!(send(&svc, req()).await.0, StatusCode::UNAUTHORIZED);
    store.keys.lock().unwrap().insert(key, acme);
    registry.invalidate_all();
    assert_eq!(send(&svc, req()).await.1, "acme free ");
}

#[tokio::test]
async fn a_lookup_under_way_during_an_invalidation_does_not_cache_its_older_answer() {
    let gate = Arc::new((tokio::sync::Notify::new(), tokio::sync::Semaphore::new(0)));
    let store = Changing {
        gate: Some(gate.clone()),
        ..Changing::default()
    };
    *store.plan.lock().unwrap() = "gold";
    let registry = Registry::new(store.clone());
    let acme = TenantId::new("acme").unwrap();
    let lookup = tokio::spawn({
        let (registry, acme) = (registry.clone(), acme.clone());
        async move { registry.get(&acme).await }
    });
    gate.0.notified().await; // the lookup has read "gold" and waits at the gate
    *store.plan.lock().unwrap() = "platinum";
    registry.invalidate(&acme); // announced while the older answer is in flight
    gate.1.add_permits(1);
    let old = lookup.await.unwrap().unwrap().unwrap();
    assert_eq!(&*old.plan, "gold", "the lookup answers what it read");
    assert!(registry.cached(&acme).is_none(), "but does not cache it");
    gate.1.add_permits(1);
    assert_eq!(
        &*registry.get(&acme).await.unwrap().unwrap().plan,
        "platinum"
    );
    assert_eq!(store.lookups.load(Ordering::SeqCst), 2);
    // Without an invalidation the answer is cached: no third lookup (were there one, the
    // gate lets it through, so the count below fails rather than the test hanging).
    gate.1.add_permits(1);
    assert_eq!(
        &*registry.get(&acme).await.unwrap().unwrap().plan,
        "platinum"
    );
    assert_eq!(store.lookups.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn registry_files_hold_key_hashes_in_hex() {
    let key = tower_patterns_tenant::hash_api_key("sk_live_file");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let toml = format!(
        "[[tenants]]\nid = \"acme\"\napi_key_sha256 = [\"{hex}\"]\n\
         [[tenants]]\nid = \"globex\"\napi_key_sha256 = [\"{}\"]",
        hex.replace(&hex[..2], "00").to_uppercase()
    );
    let tenants = StaticTenants::from_toml(&toml).unwrap();
    assert_eq!(tenants.len(), 2);
    assert!(!tenants.is_empty());
    assert!(StaticTenants::default().is_empty());
    let registry = Registry::new(tenants);
    let acme = TenantId::new("acme").unwrap();
    assert_eq!(registry.by_api_key(&key).await.unwrap(), Some(acme.clone()));
    let mut upper = [0u8; 32];
    for (i, pair) in hex
        .replace(&hex[..2], "00")
        .as_bytes()
        .chunks(2)
        .enumerate()
    {
        upper[i] = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
    }
    assert_eq!(
        registry.by_api_key(&upper).await.unwrap(),
        Some(TenantId::new("globex").unwrap()),
        "upper-case hex reads the same"
    );
    assert_eq!(registry.cached_key(&key), Some(Some(acme.clone())));
    assert_eq!(registry.store().len(), 2);
    assert!(format!("{registry:?}").starts_with("Registry"));
    for bad in ["0".repeat(63), "g".repeat(64), format!("{hex}00")] {
        let toml = format!("[[tenants]]\nid = \"a\"\napi_key_sha256 = [\"{bad}\"]");
        assert!(StaticTenants::from_toml(&toml).is_err(), "{bad}");
    }
    // A file on disk reads the same; a missing file is a typed error naming it.
    let path = std::env::temp_dir().join(format!("tp-tenants-{}.toml", std::process::id()));
    std::fs::write(&path, &toml).unwrap();
    assert_eq!(StaticTenants::from_file(&path).unwrap().len(), 2);
    std::fs::remove_file(&path).unwrap();
    let err = StaticTenants::from_file(&path).unwrap_err();
    assert!(err.to_string().contains("tp-tenants-"), "{err}");
}

#[test]
fn corrupt_registry_files_and_bad_configs_are_typed_errors() {
    for bad in [
        "[[tenants]]\nid = \"acme\"\n[[tenants]]\nid = \"acme\"",
        "[[tenants]]\nid = \"a\"\napi_key_sha256 = [\"zz\"]",
        "[[tenants]]\nid = \"a\"\nstatus = \"deleted\"",
        "[[tenants]]\nid = \"a\"\ncolour = \"red\"",
        "not toml at all [",
    ] {
        assert!(StaticTenants::from_toml(bad).is_err(), "{bad}");
    }
    assert!(
        JwtVerifier::builder()
            .hs256("k", b"short")
            .audience("a")
            .build()
            .is_err()
    );
    assert!(
        JwtVerifier::builder()
            .jwks("{")
            .audience("a")
            .build()
            .is_err()
    );
    assert!(
        JwtVerifier::builder()
            .rs256_pem("k", b"not a pem")
            .audience("a")
            .build()
            .is_err()
    );
    assert!(
        JwtVerifier::builder().hs256("k", SECRET).build().is_err(),
        "no audience"
    );
    assert!(
        TenancyLayer::builder("test")
            .store(tenants())
            .trusted_proxies(["10.0.0.0/99"])
            .header("x")
            .build()
            .is_err()
    );
    assert!(
        TenancyLayer::builder("test")
            .store(tenants())
            .build()
            .is_err(),
        "no source"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    /// Closed (the default), no combination of unverified sources, from any peer, selects a
    /// tenant, even one that exists and is active.
    #[test]
    fn without_a_credential_no_unverified_source_selects_a_tenant(
        tenant in prop::sample::select(vec!["acme", "globex", "keyed", "initech", "nobody"]),
        header in any::<bool>(),
        host in any::<bool>(),
        forwarded in any::<bool>(),
        path in any::<bool>(),
        proxy in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut req = Request::builder();
        if header { req = req.header("x-tenant-id", tenant); }
        if host { req = req.header("host", format!("{tenant}.shop.example")); }
        if forwarded { req = req.header("x-forwarded-host", format!("{tenant}.shop.example")); }
        if path { req = req.uri(format!("/t/{tenant}/orders")); }
        let req = from_peer(if proxy { "10.0.0.1:1" } else { "198.51.100.1:1" }, req);
        let status = rt.block_on(closed().oneshot(req)).unwrap().status();
        prop_assert_ne!(status, StatusCode::OK);
        prop_assert!(status.is_client_error(), "{status}");
    }

    #[test]
    fn resolvers_never_panic_on_arbitrary_bytes(
        tenant in proptest::collection::vec(any::<u8>(), 0..80),
        host in proptest::collection::vec(any::<u8>(), 0..80),
        fwd in proptest::collection::vec(any::<u8>(), 0..80),
        token in ".{0,200}",
        dots in "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}",
        path in "/[a-z/]{0,20}",
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let svc = full();
        for auth in [token.as_str(), dots.as_str()] {
            let mut req = Request::builder().uri(path.as_str());
            for (name, value) in [("x-tenant-id", &tenant), ("host", &host), ("x-forwarded-host", &fwd), ("forwarded", &fwd), ("x-api-key", &tenant)] {
                if let Ok(v) = http::HeaderValue::from_bytes(value) {
                    req = req.header(name, v);
                }
            }
            if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {auth}")) {
                req = req.header("authorization", v);
            }
            let req = from_peer("10.0.0.1:1", req);
            let status = rt.block_on(svc.clone().oneshot(req)).unwrap().status();
            prop_assert!(status.is_client_error() || status == StatusCode::OK, "{status}");
        }
    }
}
