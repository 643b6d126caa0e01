//! Authentication: a verified JWT (the tenant crate's [`JwtVerifier`]: every key bound to its
//! algorithm, `exp`, `nbf`, `aud` and `iss` checked) or an API key (looked up by its SHA-256),
//! either of which names a consumer. The consumer and tenant then travel upstream in headers
//! the gateway sets itself, after it has stripped any a client sent.

use std::{
    collections::HashMap,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use tower_layer::Layer;
use tower_patterns_core::{
    BoxError,
    check::{CheckThenCall, Gate},
    tenant::{TenantError, TenantErrorKind, TenantId},
};
use tower_patterns_tenant::{ApiKeyHash, JwtVerifier, hash_api_key};
use tower_service::Service;

/// Who a request comes from, once authenticated; in the request's extensions on the way
/// upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    consumer: Arc<str>,
    tenant: Option<TenantId>,
    plan: Option<Arc<str>>,
}

impl Identity {
    /// The consumer (an API key's owner, or a token's subject).
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    pub(crate) fn consumer_arc(&self) -> Arc<str> {
        self.consumer.clone()
    }

    /// The consumer's tenant, when it has one.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// The consumer's plan (`[[consumers]] plan`), which may choose its rate.
    pub fn plan(&self) -> Option<&str> {
        self.plan.as_deref()
    }
}

/// A consumer of the configuration file.
#[derive(Debug)]
pub(crate) struct Consumer {
    pub(crate) identity: Identity,
}

/// The consumers, by API key hash.
#[derive(Debug, Default)]
pub(crate) struct Consumers {
    by_key: HashMap<ApiKeyHash, Arc<Consumer>>,
}

impl Consumers {
    pub(crate) fn insert(
        &mut self,
        id: &str,
        tenant: Option<TenantId>,
        plan: Option<&str>,
        keys: &[ApiKeyHash],
    ) {
        let consumer = Arc::new(Consumer {
            identity: Identity {
                consumer: id.into(),
                tenant,
                plan: plan.map(Into::into),
            },
        });
        for key in keys {
            self.by_key.insert(*key, consumer.clone());
        }
    }
}

/// One `[auth.<name>]` scheme.
pub(crate) struct AuthScheme {
    pub(crate) jwt: Option<JwtAuth>,
    pub(crate) api_key: Option<HeaderName>,
    pub(crate) optional: bool,
    pub(crate) consumers: Arc<Consumers>,
}

pub(crate) struct JwtAuth {
    pub(crate) verifier: JwtVerifier,
    pub(crate) consumer_claim: String,
    pub(crate) tenant_claim: String,
    pub(crate) plan_claim: String,
}

impl fmt::Debug for AuthScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthScheme")
            .field("jwt", &self.jwt.as_ref().map(|j| &j.verifier))
            .field("api_key", &self.api_key)
            .field("optional", &self.optional)
            .finish()
    }
}

fn invalid(detail: &'static str) -> TenantError {
    TenantError::new(TenantErrorKind::InvalidCredentials, detail)
}

impl AuthScheme {
    /// Authenticates by the request's headers. A bearer token, when the scheme takes JWTs and
    /// one is sent, decides alone: an API key beside a bad token does not rescue it.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Identity>, TenantError> {
        if let Some(jwt) = &self.jwt
            && let Some(value) = headers.get(header::AUTHORIZATION)
        {
            let token =
                bearer(value).ok_or_else(|| invalid("authorization is not a bearer token"))?;
            let claims = jwt.verifier.verify_claims(token)?;
            let consumer = claims
                .get_str(&jwt.consumer_claim)
                .filter(|c| !c.is_empty() && HeaderValue::try_from(*c).is_ok())
                .ok_or_else(|| invalid("token names no consumer"))?;
            // The token's own claims, never a configured consumer's record: a subject that
            // happens to equal an API-key consumer's id must not take its tenant or plan.
            let tenant = match claims.get_str(&jwt.tenant_claim) {
                Some(t) => Some(TenantId::new(t).map_err(TenantError::from)?),
                None => None,
            };
            let plan = claims.get_str(&jwt.plan_claim).map(Into::into);
            return Ok(Some(Identity {
                consumer: consumer.into(),
                tenant,
                plan,
            }));
        }
        if let Some(name) = &self.api_key
            && let Some(value) = headers.get(name)
        {
            let key = value.to_str().map_err(|_| invalid("unreadable API key"))?;
            return match self.consumers.by_key.get(&hash_api_key(key)) {
                Some(consumer) => Ok(Some(consumer.identity.clone())),
                None => Err(invalid("unknown API key")),
            };
        }
        if self.optional {
            Ok(None)
        } else {
            Err(TenantError::new(
                TenantErrorKind::MissingCredentials,
                "no credentials",
            ))
        }
    }
}

fn bearer(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The headers that carry the identity upstream.
#[derive(Clone, Debug)]
pub(crate) struct IdentityHeaders {
    pub(crate) consumer: HeaderName,
    pub(crate) tenant: HeaderName,
}

/// Applies an [`AuthScheme`] in front of a route's service.
#[derive(Clone, Debug)]
pub(crate) struct AuthLayer {
    scheme: Arc<AuthScheme>,
    headers: Arc<IdentityHeaders>,
}

impl AuthLayer {
    pub(crate) fn new(scheme: Arc<AuthScheme>, headers: Arc<IdentityHeaders>) -> Self {
        Self { scheme, headers }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

/// Puts the identity in the extensions and its headers on the request.
pub(crate) struct IdentityGate(Arc<IdentityHeaders>);

impl<B, Res> Gate<Request<B>, Res> for IdentityGate {
    type Checked = Option<Identity>;
    type After = ();

    fn before(self, identity: Option<Identity>, req: &mut Request<B>) -> Result<(), BoxError> {
        if let Some(identity) = identity {
            let headers = req.headers_mut();
            if let Ok(v) = HeaderValue::try_from(&*identity.consumer) {
                headers.insert(self.0.consumer.clone(), v);
            }
            if let Some(t) = &identity.tenant
                && let Ok(v) = HeaderValue::try_from(t.as_str())
            {
                headers.insert(self.0.tenant.clone(), v);
            }
            req.extensions_mut().insert(identity);
        }
        Ok(())
    }

    fn after((): (), _: &mut Res) {}
}

type Decided = std::future::Ready<Result<Option<Identity>, TenantError>>;

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = CheckThenCall<S, Request<B>, Decided, IdentityGate>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let decided = self.layer.scheme.authenticate(req.headers());
        let gate = IdentityGate(self.layer.headers.clone());
        CheckThenCall::decided(decided, &mut self.inner, req, gate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_names_its_consumer_tenant_and_plan() {
        let mut consumers = Consumers::default();
        let tenant = TenantId::new("acme").unwrap();
        consumers.insert(
            "mobile",
            Some(tenant.clone()),
            Some("gold"),
            &[hash_api_key("k")],
        );
        let scheme = AuthScheme {
            jwt: None,
            api_key: Some(HeaderName::from_static("x-api-key")),
            optional: false,
            consumers: Arc::new(consumers),
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("k"));
        let identity = scheme.authenticate(&headers).unwrap().unwrap();
        assert_eq!(identity.consumer(), "mobile");
        assert_eq!(identity.tenant(), Some(&tenant));
        assert_eq!(identity.plan(), Some("gold"));
        headers.insert("x-api-key", HeaderValue::from_static("other"));
        assert!(scheme.authenticate(&headers).is_err());
        assert!(
            scheme.authenticate(&HeaderMap::new()).is_err(),
            "not optional"
        );
    }
}
