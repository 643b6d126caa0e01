//! Multi-tenancy at the edge: the tenant from an API key or a verified JWT, looked up in a
//! registry; everything else is refused with a clear status: no credential (401), a forged
//! token (401), an unknown key (401), a suspended tenant (403), a header that disagrees with
//! the credential (403), a malformed id (400).
//!
//! ```text
//! cargo run --example tenancy --features tenant
//! ```
#![allow(clippy::print_stdout, reason = "an example prints what it shows")]

use std::{convert::Infallible, io::Write, process::ExitCode, time::SystemTime};

use http::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns::{
    BoxError,
    http::ErrorResponseLayer,
    tenant::{JwtVerifier, StaticTenants, TenancyLayer, TenantId, hash_api_key},
};

/// The registry: keys are stored as SHA-256 only (`KEY_HASH` is filled in with that of
/// `key-acme`).
const TENANTS: &str = r#"
[[tenants]]
id = "acme"
plan = "gold"
api_key_sha256 = ["KEY_HASH"]
[[tenants]]
id = "globex"
plan = "free"
[[tenants]]
id = "initech"
plan = "gold"
status = "suspended"
"#;

const SECRET: &str = "an example secret of thirty-two bytes or more";

/// Runs the example with `args` (without the program name), writing to `out`.
pub(crate) async fn run(args: Vec<String>, out: &mut (impl Write + Send)) -> ExitCode {
    if !args.is_empty() {
        let _ = writeln!(out, "usage: tenancy   (no arguments)");
        return ExitCode::from(2);
    }
    match show(out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(secret: &str, tenant: &str) -> Result<String, BoxError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({ "tenant": tenant, "sub": "ada", "aud": "shop", "exp": now + 300 });
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    Ok(encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes())?,
    )?)
}

async fn show(out: &mut (impl Write + Send)) -> Result<(), BoxError> {
    let hash: String = hash_api_key("key-acme")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tenants = StaticTenants::from_toml(&TENANTS.replace("KEY_HASH", &hash))?;
    let layer = TenancyLayer::builder("shop")
        .store(tenants)
        .header("x-tenant-id")
        .api_key("x-api-key")
        .jwt(
            JwtVerifier::builder()
                .hs256("k1", SECRET.as_bytes())
                .audience("shop")
                .build()?,
        )
        .build()?;
    let app = service_fn(|req: Request<()>| async move {
        let tenant = TenantId::of(&req)
            .map_or("none", TenantId::as_str)
            .to_owned();
        Ok::<_, Infallible>(Response::new(format!("hello, {tenant}")))
    });
    let svc = ErrorResponseLayer::new().layer(layer.layer(app));
    let good = token(SECRET, "globex")?;
    let forged = token("not the secret, but just as long as it", "globex")?;
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("an API key", vec![("x-api-key", "key-acme".into())]),
        ("a verified token", vec![("authorization", bearer(&good))]),
        ("nothing", vec![]),
        ("a header alone", vec![("x-tenant-id", "acme".into())]),
        ("a forged token", vec![("authorization", bearer(&forged))]),
        ("an unknown key", vec![("x-api-key", "key-nobody".into())]),
        (
            "a suspended tenant",
            vec![("authorization", bearer(&token(SECRET, "initech")?))],
        ),
        (
            "a key and a header that disagree",
            vec![
                ("x-api-key", "key-acme".into()),
                ("x-tenant-id", "globex".into()),
            ],
        ),
        (
            "a malformed id",
            vec![
                ("x-api-key", "key-acme".into()),
                ("x-tenant-id", "no spaces!".into()),
            ],
        ),
    ];
    for (what, headers) in cases {
        let mut req = Request::builder();
        for (name, value) in &headers {
            req = req.header(*name, value.as_str());
        }
        let res = svc.clone().oneshot(req.body(())?).await?;
        let status = res.status().as_u16();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await?
            .to_bytes();
        writeln!(out, "{what:34} {status} {}", String::from_utf8_lossy(&body))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    run(std::env::args().skip(1).collect(), &mut std::io::stdout()).await
}
