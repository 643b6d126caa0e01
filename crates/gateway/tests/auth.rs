//! Authentication over real HTTP: verified JWTs (HS256, RS256 and EdDSA from a JWKS file),
//! API keys, forged tokens, spoofed identity headers, key rotation by a reload.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::{TestGateway, Upstream, get, key_hash};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tenant/tests/keys");
const SECRET: &str = "a shared secret of thirty-two bytes or more";

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({
        "sub": sub, "tenant": "acme", "aud": "api", "iss": "https://id.example",
        "exp": now() + 600, "nbf": now() - 10,
    })
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_file("rsa_private.pem")).unwrap()
}

fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(&key_file("ed25519_private.pem")).unwrap()
}

fn hs() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes()).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    tower_patterns_testkit::base64url(bytes)
}

async fn gateway(up: &Upstream) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key_file("jwks.json")).unwrap();
    std::fs::write(dir.path().join("hs.secret"), SECRET).unwrap();
    let toml = format!(
        r#"
[reload]
poll_interval = "0s"

[auth.partners]
api_key = {{ header = "x-api-key" }}
jwt = {{ audiences = ["api"], issuers = ["https://id.example"], jwks_file = "jwks.json", hs256 = [{{ kid = "hs-1", secret_file = "hs.secret" }}] }}

[[consumers]]
id = "mobile"
tenant = "globex"
plan = "gold"
api_keys_sha256 = ["{key}"]

[upstreams.u]
addresses = ["{up}"]

[[routes]]
name = "private"
prefix = "/private"
upstream = "u"
auth = "partners"

[[routes]]
name = "public"
prefix = "/public"
upstream = "u"
"#,
        key = key_hash("sk-mobile-1"),
        up = up.addr
    );
    TestGateway::start_in(dir, &toml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_credentials_name_the_consumer_upstream() {
    let up = Upstream::start().await;
    let gw = gateway(&up).await;
    let url = gw.url("/private/me");
    let spoof = ("x-consumer-id", "admin");
    for (what, auth) in [
        (
            "HS256",
            token(Algorithm::HS256, "hs-1", &hs(), &claims("web")),
        ),
        (
            "RS256 from the JWKS file",
            token(Algorithm::RS256, "rsa-1", &rsa(), &claims("web")),
        ),
        (
            "EdDSA from the JWKS file",
            token(Algorithm::EdDSA, "ed-1", &ed(), &claims("web")),
        ),
    ] {
        let bearer = format!("Bearer {auth}");
        let r = get(
            &url,
            &[("authorization", &bearer), spoof, ("x-tenant-id", "evil")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{what}");
        assert_eq!(
            r.seen("x-consumer-id").as_deref(),
            Some("web"),
            "{what}: the token's subject, not the spoofed header"
        );
        assert_eq!(r.seen("x-tenant-id").as_deref(), Some("acme"), "{what}");
    }
    let r = get(&url, &[("x-api-key", "sk-mobile-1"), spoof]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.seen("x-consumer-id").as_deref(), Some("mobile"));
    assert_eq!(r.seen("x-tenant-id").as_deref(), Some("globex"));
    // A token whose subject equals an API-key consumer's id takes nothing from that consumer:
    // its identity is the token's own claims.
    let mut claims_of_mobile = claims("mobile");
    claims_of_mobile["plan"] = json!("free");
    let bearer = format!(
        "Bearer {}",
        token(Algorithm::HS256, "hs-1", &hs(), &claims_of_mobile)
    );
    let r = get(&url, &[("authorization", &bearer)]).await;
    assert_eq!(r.seen("x-consumer-id").as_deref(), Some("mobile"));
    assert_eq!(
        r.seen("x-tenant-id").as_deref(),
        Some("acme"),
        "the token's tenant, not globex"
    );

    // An anonymous route: the identity headers a client sends never reach the upstream.
    let r = get(&gw.url("/public/x"), &[spoof, ("x-tenant-id", "acme")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.seen("x-consumer-id"), r.seen("x-tenant-id")),
        (None, None)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_stale_credentials_get_401_and_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = gateway(&up).await;
    let attacker = EncodingKey::from_rsa_pem(&key_file("attacker_rsa_private.pem")).unwrap();
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        b64(claims("web").to_string().as_bytes())
    );
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("web");
        f(&mut c);
        token(Algorithm::RS256, "rsa-1", &rsa(), &c)
    };
    // The RSA public key used as an HS256 secret, naming the RSA key (algorithm confusion).
    let confused = token(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(&key_file("rsa_public.pem")).unwrap(),
        &claims("web"),
    );
    let good = token(Algorithm::RS256, "rsa-1", &rsa(), &claims("web"));
    let mut tampered: Vec<String> = good.split('.').map(str::to_owned).collect();
    tampered[1] = b64(claims("root").to_string().as_bytes());
    let cases: Vec<(&str, String)> = vec![
        ("alg none", format!("Bearer {none}")),
        (
            "wrong key",
            format!(
                "Bearer {}",
                token(Algorithm::RS256, "rsa-1", &attacker, &claims("web"))
            ),
        ),
        (
            "RS256 public key as an HS256 secret",
            format!("Bearer {confused}"),
        ),
        (
            "expired",
            format!("Bearer {}", with(&|c| c["exp"] = json!(now() - 3600))),
        ),
        (
            "not yet valid",
            format!("Bearer {}", with(&|c| c["nbf"] = json!(now() + 3600))),
        ),
        (
            "wrong audience",
            format!("Bearer {}", with(&|c| c["aud"] = json!("billing"))),
        ),
        (
            "wrong issuer",
            format!(
                "Bearer {}",
                with(&|c| c["iss"] = json!("https://evil.example"))
            ),
        ),
        (
            "no exp",
            format!(
                "Bearer {}",
                with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))
            ),
        ),
        (
            "no subject",
            format!(
                "Bearer {}",
                with(&|c| drop(c.as_object_mut().unwrap().remove("sub")))
            ),
        ),
        (
            "an empty subject",
            format!("Bearer {}", with(&|c| c["sub"] = json!(""))),
        ),
        (
            "a subject that is no header value",
            format!(
                "Bearer {}",
                with(&|c| c["sub"] = json!("web\r\nx-admin: 1"))
            ),
        ),
        (
            "unknown kid",
            format!(
                "Bearer {}",
                token(Algorithm::RS256, "rsa-9", &rsa(), &claims("web"))
            ),
        ),
        ("tampered payload", format!("Bearer {}", tampered.join("."))),
        ("garbage", "Bearer a.b.c".to_owned()),
        ("basic", "Basic YTpi".to_owned()),
    ];
    for (what, value) in &cases {
        let r = get(&gw.url("/private/x"), &[("authorization", value)]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("rsa"),
            "{what}: no internals in the body"
        );
    }
    // A bad token beside a valid API key: the token decides.
    let r = get(
        &gw.url("/private/x"),
        &[("authorization", &cases[0].1), ("x-api-key", "sk-mobile-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for (what, headers) in [
        ("unknown API key", vec![("x-api-key", "sk-guess")]),
        (
            "no credential, a spoofed consumer",
            vec![("x-consumer-id", "mobile")],
        ),
    ] {
        let r = get(&gw.url("/private/x"), &headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
    }
    assert_eq!(up.hits(), 0, "nothing forged reached the upstream");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwks_file_takes_effect_on_reload() {
    let up = Upstream::start().await;
    let gw = gateway(&up).await;
    let rs = format!(
        "Bearer {}",
        token(Algorithm::RS256, "rsa-1", &rsa(), &claims("web"))
    );
    let ed_token = format!(
        "Bearer {}",
        token(Algorithm::EdDSA, "ed-1", &ed(), &claims("web"))
    );
    assert_eq!(
        get(&gw.url("/private/x"), &[("authorization", &rs)])
            .await
            .status,
        StatusCode::OK
    );
    // The RSA key is retired: the JWKS file now holds only the Ed25519 key.
    let mut jwks: Value = serde_json::from_slice(&key_file("jwks.json")).unwrap();
    jwks["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kid"] == "ed-1");
    std::fs::write(gw.dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    assert_eq!(gw.gateway.reloader().reload_now().unwrap(), 2);
    assert_eq!(
        get(&gw.url("/private/x"), &[("authorization", &rs)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&gw.url("/private/x"), &[("authorization", &ed_token)])
            .await
            .status,
        StatusCode::OK
    );
    // A broken JWKS file is refused and the keys in force stay.
    std::fs::write(gw.dir.path().join("jwks.json"), "{ not json").unwrap();
    let err = gw.gateway.reloader().reload_now().unwrap_err();
    assert!(err.to_string().contains("auth.partners"), "{err}");
    assert_eq!(gw.gateway.generation(), 2);
    assert_eq!(
        get(&gw.url("/private/x"), &[("authorization", &ed_token)])
            .await
            .status,
        StatusCode::OK
    );
    gw.stop().await;
}
