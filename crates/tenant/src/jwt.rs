//! Verified JWTs: the tenant taken from a claim of a token whose signature, algorithm,
//! expiry, start and audience were all checked.

use std::{collections::HashMap, fmt, path::Path, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use tower_patterns_core::{
    ConfigError,
    tenant::{TenantError, TenantErrorKind, TenantId},
};

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens and reads the tenant from a claim; build it with
/// [`JwtVerifier::builder`].
///
/// Every key is bound to one algorithm (HS256, RS256 or EdDSA): a token is checked only with
/// the key its `kid` names (or the only key), and only if its `alg` is that key's algorithm.
/// So `alg: none` is refused, and so is algorithm confusion (an HS256 token "signed" with an
/// RSA public key as the secret). `exp` is required, `nbf` is checked when present, `aud` must
/// name one of the configured audiences, `iss` one of the issuers when any are configured.
///
/// ```
/// use tower_patterns_tenant::JwtVerifier;
///
/// let verifier = JwtVerifier::builder()
///     .hs256("k1", b"a secret of at least thirty-two bytes!!")
///     .audience("storefront")
///     .build()
///     .unwrap();
/// assert!(verifier.verify("not.a.token").is_err());
/// assert!(JwtVerifier::builder().build().is_err(), "no keys, no audience");
/// ```
pub struct JwtVerifier {
    keys: Vec<Key>,
    audiences: Vec<String>,
    issuers: Vec<String>,
    claim: String,
    leeway: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<_> = self
            .keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.alg))
            .collect();
        f.debug_struct("JwtVerifier")
            .field("keys", &kids)
            .field("audiences", &self.audiences)
            .field("issuers", &self.issuers)
            .field("claim", &self.claim)
            .finish()
    }
}

fn invalid(detail: impl Into<std::borrow::Cow<'static, str>>) -> TenantError {
    TenantError::new(TenantErrorKind::InvalidCredentials, detail)
}

impl JwtVerifier {
    /// A builder: add keys, an audience, and optionally issuers and the claim name.
    pub fn builder() -> JwtVerifierBuilder {
        JwtVerifierBuilder {
            keys: Vec::new(),
            audiences: Vec::new(),
            issuers: Vec::new(),
            claim: "tenant".to_owned(),
            leeway: Duration::from_secs(30),
            error: None,
        }
    }

    /// Verifies `token` and returns the tenant its claim names.
    ///
    /// # Errors
    ///
    /// A [`TenantError`] of kind `InvalidCredentials` for anything wrong with the token (its
    /// form, algorithm, key, signature, times, audience, issuer), `Malformed` when the claim
    /// is not a valid tenant id, `MissingCredentials` when the token has no such claim.
    pub fn verify(&self, token: &str) -> Result<TenantId, TenantError> {
        let claims = self.verify_claims(token)?;
        let claim = claims.get(&self.claim).ok_or_else(|| {
            TenantError::new(
                TenantErrorKind::MissingCredentials,
                format!("token has no {:?} claim", self.claim),
            )
        })?;
        let id = claim.as_str().ok_or_else(|| {
            TenantError::new(
                TenantErrorKind::Malformed,
                format!("claim {:?} is not a string", self.claim),
            )
        })?;
        TenantId::new(id).map_err(TenantError::from)
    }

    /// Verifies `token` (signature, algorithm, key, `exp`, `nbf`, `aud`, `iss`, as
    /// [`verify`](Self::verify) does) and returns all of its claims, for a caller that reads
    /// more than the tenant (the consumer in `sub`, a plan).
    ///
    /// # Errors
    ///
    /// A [`TenantError`] of kind `InvalidCredentials` for anything wrong with the token.
    pub fn verify_claims(&self, token: &str) -> Result<VerifiedClaims, TenantError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(format!("unreadable token header: {e}")))?;
        let key = match header.kid.as_deref() {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or_else(|| invalid(format!("unknown key id {kid:?}")))?,
            None => match self.keys.as_slice() {
                [only] => only,
                _ => {
                    return Err(invalid(
                        "token names no key id and several keys are configured",
                    ));
                }
            },
        };
        if header.alg != key.alg {
            return Err(invalid(format!(
                "token algorithm {:?} is not its key's {:?}",
                header.alg, key.alg
            )));
        }
        let mut validation = Validation::new(key.alg);
        validation.set_audience(&self.audiences);
        if !self.issuers.is_empty() {
            validation.set_issuer(&self.issuers);
        }
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(token, &key.key, &validation)
            .map(|data| VerifiedClaims(data.claims))
            .map_err(|e| invalid(format!("token rejected: {e}")))
    }
}

/// The claims of a verified token; see [`JwtVerifier::verify_claims`].
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedClaims(HashMap<String, serde_json::Value>);

impl VerifiedClaims {
    /// The claim `name`, as JSON.
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.get(name)
    }

    /// The claim `name` when it is a string.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.0.get(name)?.as_str()
    }
}

/// Builds a [`JwtVerifier`]; `build` reports the first bad key.
pub struct JwtVerifierBuilder {
    keys: Vec<Key>,
    audiences: Vec<String>,
    issuers: Vec<String>,
    claim: String,
    leeway: Duration,
    error: Option<ConfigError>,
}

impl fmt::Debug for JwtVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifierBuilder")
            .field("keys", &self.keys.len())
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl JwtVerifierBuilder {
    fn push(
        mut self,
        kid: &str,
        alg: Algorithm,
        key: jsonwebtoken::errors::Result<DecodingKey>,
    ) -> Self {
        match key {
            Ok(key) => self.keys.push(Key {
                kid: Some(kid.to_owned()),
                alg,
                key,
            }),
            Err(e) => {
                self.error
                    .get_or_insert_with(|| ConfigError::new("jwt key", format!("{kid}: {e}")));
            }
        }
        self
    }

    /// An HMAC-SHA256 shared secret (at least 32 bytes) under key id `kid`.
    #[must_use]
    pub fn hs256(mut self, kid: &str, secret: &[u8]) -> Self {
        if secret.len() < 32 {
            self.error.get_or_insert_with(|| {
                ConfigError::new(
                    "jwt key",
                    format!("{kid}: an HS256 secret needs 32 bytes or more"),
                )
            });
            return self;
        }
        let key = DecodingKey::from_secret(secret);
        self.push(kid, Algorithm::HS256, key)
    }

    /// An RSA public key (PEM) for RS256 under key id `kid`.
    #[must_use]
    pub fn rs256_pem(self, kid: &str, pem: &[u8]) -> Self {
        let key = DecodingKey::from_rsa_pem(pem);
        self.push(kid, Algorithm::RS256, key)
    }

    /// An Ed25519 public key (PEM) for EdDSA under key id `kid`.
    #[must_use]
    pub fn ed25519_pem(self, kid: &str, pem: &[u8]) -> Self {
        let key = DecodingKey::from_ed_pem(pem);
        self.push(kid, Algorithm::EdDSA, key)
    }

    /// Every signing key of a JWKS document (JSON). Each key needs a `kid` and an `alg` of
    /// RS256 or EdDSA; others are refused rather than guessed.
    #[must_use]
    pub fn jwks(mut self, json: &str) -> Self {
        let set: JwkSet = match serde_json::from_str(json) {
            Ok(set) => set,
            Err(e) => {
                self.error
                    .get_or_insert_with(|| ConfigError::new("jwks", e.to_string()));
                return self;
            }
        };
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                self.error
                    .get_or_insert_with(|| ConfigError::new("jwks", "a key has no kid"));
                continue;
            };
            let alg = match jwk.common.key_algorithm.map(|a| a.to_string()).as_deref() {
                Some("RS256") => Algorithm::RS256,
                Some("EdDSA") => Algorithm::EdDSA,
                other => {
                    self.error.get_or_insert_with(|| {
                        ConfigError::new("jwks", format!("{kid}: unsupported alg {other:?}"))
                    });
                    continue;
                }
            };
            self = self.push(&kid, alg, DecodingKey::from_jwk(jwk));
        }
        self
    }

    /// Every key of the JWKS file at `path`; see [`Self::jwks`].
    #[must_use]
    pub fn jwks_file(mut self, path: impl AsRef<Path>) -> Self {
        match std::fs::read_to_string(path.as_ref()) {
            Ok(json) => self.jwks(&json),
            Err(e) => {
                self.error.get_or_insert_with(|| {
                    ConfigError::new("jwks", format!("{}: {e}", path.as_ref().display()))
                });
                self
            }
        }
    }

    /// An accepted audience (`aud`); at least one is required.
    #[must_use]
    pub fn audience(mut self, aud: &str) -> Self {
        self.audiences.push(aud.to_owned());
        self
    }

    /// An accepted issuer (`iss`); with none, `iss` is not checked.
    #[must_use]
    pub fn issuer(mut self, iss: &str) -> Self {
        self.issuers.push(iss.to_owned());
        self
    }

    /// The claim holding the tenant id (default `tenant`).
    #[must_use]
    pub fn claim(mut self, claim: &str) -> Self {
        claim.clone_into(&mut self.claim);
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 30 s).
    #[must_use]
    pub const fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Builds the verifier.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a bad key, no keys, no audience, or two keys with one id.
    pub fn build(self) -> Result<JwtVerifier, ConfigError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        if self.keys.is_empty() {
            return Err(ConfigError::new("jwt", "no keys"));
        }
        if self.audiences.is_empty() {
            return Err(ConfigError::new(
                "jwt",
                "no audience: tokens for other services would pass",
            ));
        }
        for (i, key) in self.keys.iter().enumerate() {
            if self.keys[..i].iter().any(|k| k.kid == key.kid) {
                return Err(ConfigError::new(
                    "jwt",
                    format!("key id {:?} is used twice", key.kid),
                ));
            }
        }
        Ok(JwtVerifier {
            keys: self.keys,
            audiences: self.audiences,
            issuers: self.issuers,
            claim: self.claim,
            leeway: self.leeway,
        })
    }
}
