//! Bearer tokens for the storefront: the verifier the tenant layer checks them with (HS256,
//! audience `storefront`, the tenant in the `tenant` claim, the customer in `sub`), and the
//! demo tokens it prints at start.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tower_patterns::{BoxError, tenant::JwtVerifier};

/// The audience every storefront token names.
pub(crate) const AUDIENCE: &str = "storefront";
/// The key id of the signing secret.
const KID: &str = "storefront-1";

/// The verifier for tokens signed with `secret`.
pub(crate) fn verifier(secret: &str) -> Result<JwtVerifier, BoxError> {
    Ok(JwtVerifier::builder()
        .hs256(KID, secret.as_bytes())
        .audience(AUDIENCE)
        .build()?)
}

/// A token for customer `sub` of `tenant`, valid for `ttl`, signed with `secret`.
pub(crate) fn mint(
    secret: &str,
    tenant: &str,
    sub: &str,
    ttl: Duration,
) -> Result<String, BoxError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({
        "tenant": tenant, "sub": sub, "aud": AUDIENCE,
        "iat": now, "exp": now + ttl.as_secs(),
    });
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(KID.to_owned());
    Ok(encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes())?,
    )?)
}

/// Who orders, within the tenant: the shard key of the orders.
#[derive(Clone, Debug)]
pub(crate) struct Customer(pub(crate) Arc<str>);

/// The header a tenant's own server (calling with the tenant's API key) names its customer in.
pub(crate) const CUSTOMER_HEADER: &str = "x-customer-id";

/// Sets [`Customer`] on the request, after the tenant layer: the verified token's `sub`; for a
/// caller with the tenant's API key, `x-customer-id`; else `guest`. A header that disagrees
/// with the token is a 403 (an unverified header never outranks a verified credential), a
/// malformed one a 400.
pub(crate) async fn customer(
    State(verifier): State<Arc<JwtVerifier>>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = match req.headers().get(CUSTOMER_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) if valid(v) => Some(v.to_owned()),
        Some(_) => return (StatusCode::BAD_REQUEST, "malformed customer id").into_response(),
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::trim);
    let from_token = match bearer.map(|t| verifier.verify_claims(t)) {
        None => None,
        Some(Ok(claims)) => match claims.get_str("sub") {
            Some(sub) if valid(sub) => Some(sub.to_owned()),
            _ => return (StatusCode::UNAUTHORIZED, "the token names no customer").into_response(),
        },
        // The tenant layer verified the token before this runs: only a token for another
        // verifier gets here, and it proves no customer.
        Some(Err(_)) => return (StatusCode::UNAUTHORIZED, "invalid credentials").into_response(),
    };
    let who = match (from_token, header) {
        (Some(sub), Some(h)) if sub != h => {
            return (
                StatusCode::FORBIDDEN,
                "the customer does not match the token",
            )
                .into_response();
        }
        (Some(sub), _) => sub,
        (None, Some(h)) => h,
        (None, None) => "guest".to_owned(),
    };
    req.extensions_mut().insert(Customer(who.into()));
    next.run(req).await
}

/// The token of an `Authorization` value with the Bearer scheme, whatever its case (as the
/// tenant layer reads it: a token it verified is the one read here).
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case("bearer ").then_some(token)
}

/// 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `@`.
fn valid(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}
