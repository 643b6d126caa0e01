//! Bearer tokens for the storefront: the verifier the tenant layer checks them with (HS256,
//! audience `storefront`, the tenant in the `tenant` claim, the customer in `sub`), and the
//! demo tokens it prints at start.

use std::time::{Duration, SystemTime};

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
