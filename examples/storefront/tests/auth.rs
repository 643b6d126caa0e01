//! Bearer tokens: a verified token names the tenant as an API key does; a forged, expired,
//! unsigned or foreign-audience token is a 401; a key and a token that disagree are refused.

use std::time::Duration;

use axum::http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use super::{exchange, request, shop};
use crate::auth::mint;

#[tokio::test(start_paused = true)]
async fn a_verified_token_names_the_tenant() {
    let shop = shop("jwt").await;
    let secret = shop.app.jwt_secret.clone();
    let call = |headers: Vec<(&'static str, String)>| {
        let router = shop.router.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            exchange(router, request(Method::GET, "/products", &headers)).await
        }
    };
    let bearer = |token: &str| vec![("authorization", format!("Bearer {token}"))];
    let hour = Duration::from_secs(3600);

    let acme = mint(&secret, "acme", "ada", hour).unwrap();
    let (status, body) = call(bearer(&acme)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tea"), "acme's catalog: {body}");
    let globex = mint(&secret, "globex", "bob", hour).unwrap();
    let (status, body) = call(bearer(&globex)).await;
    assert_eq!((status, body.contains("widget")), (200, true), "{body}");

    // Signed with another secret, expired, unsigned, for another audience: 401 each.
    let forged = mint(&"f".repeat(64), "acme", "ada", hour).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: serde_json::Value| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("storefront-1".into());
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let expired =
        sign(json!({"tenant": "acme", "sub": "ada", "aud": "storefront", "exp": now - 3600}));
    let elsewhere =
        sign(json!({"tenant": "acme", "sub": "ada", "aud": "billing", "exp": now + 3600}));
    let parts: Vec<&str> = acme.split('.').collect();
    let unsigned = format!("{}.{}.", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", parts[1]);
    for (what, token) in [
        ("forged", forged),
        ("expired", expired),
        ("audience", elsewhere),
        ("unsigned", unsigned),
    ] {
        let (status, body) = call(bearer(&token)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(
            !body.contains("acme") && !body.contains('{'),
            "{what}: no internals: {body}"
        );
    }
    // A key and a token of two tenants: refused, whichever comes first.
    let mut both = bearer(&globex);
    both.push(("x-api-key", "demo-key-acme".to_owned()));
    assert_eq!(call(both).await.0, 403);
    // Not a bearer token at all.
    assert_eq!(
        call(vec![("authorization", "Basic YTpi".to_owned())])
            .await
            .0,
        401
    );
}
