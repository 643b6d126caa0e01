//! From a checked configuration to the services that run it. A reload compiles the new file
//! beside the running one and keeps every stateful part (an upstream group with its breaker,
//! bulkhead, budget and pool; a limiter with its counts) whose settings did not change, so a
//! reload resets nothing it does not have to.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use http::{HeaderName, Request};
use tower::{ServiceBuilder, util::BoxCloneSyncService};
use tower_patterns_core::{ConfigError, observe::StateHandle, tenant::TenantId};
use tower_patterns_ratelimit::{GcraLimiter, HasHandle, KeyedRateLimitLayer};
use tower_patterns_tenant::JwtVerifier;

use crate::{
    aggregate::{Aggregate, Part},
    auth::{AuthLayer, AuthScheme, Consumers, IdentityHeaders, JwtAuth},
    config::{ConfigFileError, GatewayConfig, schema},
    limits::{IdentityKey, KeyKind, LimitKey, PlanRates, RouteLimiter},
    read::ReadBodyLayer,
    route::Router,
    strangle::{Migration, Sticky},
    transform::{HeaderOps, RequestTransform},
    upstream::{Group, GroupService},
};

/// A header to strip on entry: a name, or a prefix (`x-authenticated-*`).
#[derive(Clone, Debug)]
pub(crate) enum Strip {
    Name(HeaderName),
    Prefix(String),
}

/// Settings of the gateway as a whole.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) max_body: u64,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) request_id: HeaderName,
    pub(crate) strip: Vec<Strip>,
    pub(crate) admin_token: Option<String>,
}

/// Counts of one route's answers by class, kept across reloads by the route's name.
#[derive(Debug, Default)]
pub(crate) struct RouteCounts {
    pub(crate) by_class: [std::sync::atomic::AtomicU64; 4],
}

/// A route's whole stack, taking the request with its body still to read.
pub(crate) type RouteService = BoxCloneSyncService<
    Request<crate::GatewayBody>,
    http::Response<crate::GatewayBody>,
    tower_patterns_core::BoxError,
>;

pub(crate) struct CompiledRoute {
    pub(crate) name: Arc<str>,
    pub(crate) service: RouteService,
    pub(crate) response: HeaderOps,
    pub(crate) counts: Arc<RouteCounts>,
}

/// One generation of the configuration, ready to serve.
pub(crate) struct Compiled {
    pub(crate) generation: u64,
    pub(crate) config: GatewayConfig,
    pub(crate) router: Router,
    pub(crate) routes: Vec<CompiledRoute>,
    pub(crate) groups: BTreeMap<String, Arc<Group>>,
    pub(crate) limiters: BTreeMap<String, (schema::Limit, RouteLimiter)>,
    /// The migrations of `strangler` routes, by route name.
    pub(crate) migrations: BTreeMap<String, Migration>,
    pub(crate) settings: Settings,
    /// Files the configuration reads besides itself (JWKS, PEM keys): a change reloads.
    pub(crate) watched: Vec<PathBuf>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Compiled {
    /// The handles of every stateful part of this generation.
    pub(crate) fn handles(&self) -> Vec<Arc<dyn StateHandle>> {
        let mut out: Vec<Arc<dyn StateHandle>> = Vec::new();
        for group in self.groups.values() {
            out.extend(group.handles.iter().cloned());
        }
        for (_, limiter) in self.limiters.values() {
            out.push(Arc::new(limiter.handle()));
        }
        for m in self.migrations.values() {
            out.push(Arc::new(m.handle.clone()));
        }
        out
    }
}

fn header(name: Option<&toml::Spanned<String>>, default: &'static str) -> HeaderName {
    name.and_then(|n| HeaderName::try_from(n.get_ref().as_str()).ok())
        .unwrap_or_else(|| HeaderName::from_static(default))
}

fn located(
    config: &GatewayConfig,
    kind: &'static str,
    name: &str,
) -> impl Fn(ConfigError) -> ConfigFileError {
    let config = config.clone();
    let name = name.to_owned();
    move |e: ConfigError| {
        let text = e.to_string();
        let reason = text
            .strip_prefix("invalid configuration: ")
            .unwrap_or(&text);
        config.named_table_error(kind, &name, reason)
    }
}

/// Compiles `config` as generation `generation`, reusing the unchanged parts of `previous`.
pub(crate) fn compile(
    gateway: &str,
    config: GatewayConfig,
    previous: Option<&Compiled>,
    generation: u64,
    seed: u64,
) -> Result<Compiled, ConfigFileError> {
    let f = &config.file;
    let identity = Arc::new(IdentityHeaders {
        consumer: header(f.identity.consumer_header.as_ref(), "x-consumer-id"),
        tenant: header(f.identity.tenant_header.as_ref(), "x-tenant-id"),
    });
    let mut strip = vec![
        Strip::Name(identity.consumer.clone()),
        Strip::Name(identity.tenant.clone()),
    ];
    for s in &f.identity.strip {
        let text = s.get_ref().to_ascii_lowercase();
        match text.strip_suffix('*') {
            Some(prefix) => strip.push(Strip::Prefix(prefix.to_owned())),
            None => strip.extend(HeaderName::try_from(text).ok().map(Strip::Name)),
        }
    }
    let admin_token = match (&f.admin.token_env, &f.admin.token_file) {
        (_, Some(file)) => {
            let path = config.resolve(file.get_ref());
            let token = std::fs::read_to_string(&path).map_err(|e| {
                config.error_at(file.span(), format!("cannot read {}: {e}", path.display()))
            })?;
            let token = token.trim().to_owned();
            if token.len() < 16 {
                return Err(
                    config.error_at(file.span(), "an admin token has 16 characters or more")
                );
            }
            Some(token)
        }
        (Some(var), None) => Some(
            std::env::var(var.get_ref())
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| t.len() >= 16)
                .ok_or_else(|| {
                    config.error_at(
                        var.span(),
                        format!(
                            "environment variable {} is not set to a token of 16 characters or more",
                            var.get_ref()
                        ),
                    )
                })?,
        ),
        (None, None) => None,
    };
    let settings = Settings {
        max_body: f.server.max_body.map_or(1 << 20, |s| s.0),
        header_read_timeout: f
            .server
            .header_read_timeout
            .map_or(Duration::from_secs(10), |d| d.0),
        body_read_timeout: f
            .server
            .body_read_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
        drain_timeout: f
            .server
            .drain_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
        max_connections: f
            .server
            .max_connections
            .map_or(10_000, |n| n.max(1) as usize),
        request_id: header(f.server.request_id_header.as_ref(), "x-request-id"),
        strip,
        admin_token,
    };

    let mut consumers = Consumers::default();
    for c in &f.consumers {
        let c = c.get_ref();
        let tenant = c.tenant.as_deref().and_then(|t| TenantId::new(t).ok());
        let keys: Vec<[u8; 32]> = c
            .api_keys_sha256
            .iter()
            .filter_map(|h| decode_hex(h))
            .collect();
        consumers.insert(&c.id, tenant, c.plan.as_deref(), &keys);
    }
    let consumers = Arc::new(consumers);

    let mut watched = Vec::new();
    let mut schemes = BTreeMap::new();
    for (name, auth) in &f.auth {
        let jwt = match &auth.jwt {
            Some(jwt) => Some(jwt_auth(&config, name, jwt, &mut watched)?),
            None => None,
        };
        let scheme = AuthScheme {
            jwt,
            api_key: auth
                .api_key
                .as_ref()
                .and_then(|k| HeaderName::try_from(k.header.get_ref().as_str()).ok()),
            optional: auth.optional,
            consumers: consumers.clone(),
        };
        schemes.insert(name.clone(), Arc::new(scheme));
    }

    let mut groups = BTreeMap::new();
    for (i, (name, settings)) in f.upstreams.iter().enumerate() {
        let reused = previous
            .and_then(|p| p.groups.get(name))
            .filter(|g| g.settings == *settings)
            .cloned();
        let group = match reused {
            Some(g) => g,
            None => Arc::new(
                Group::build(gateway, name, settings, seed.wrapping_add(i as u64))
                    .map_err(located(&config, "upstreams", name))?,
            ),
        };
        groups.insert(name.clone(), group);
    }

    let mut limiters = BTreeMap::new();
    for (name, limit) in &f.limits {
        // A limit on Redis is rebuilt when the [redis] table changed too.
        let redis_same =
            |p: &Compiled| limit.store.get_ref() == "memory" || p.config.file.redis == f.redis;
        let reused = previous
            .filter(|p| redis_same(p))
            .and_then(|p| p.limiters.get(name))
            .filter(|(settings, _)| settings == limit)
            .map(|(_, l)| l.clone());
        let limiter = match reused {
            Some(l) => l,
            None => build_limiter(gateway, name, limit, f.redis.as_ref())
                .map_err(located(&config, "limits", name))?,
        };
        limiters.insert(name.clone(), (limit.clone(), limiter));
    }

    let mut routes = Vec::new();
    let mut migrations = BTreeMap::new();
    for spanned in &f.routes {
        let r = spanned.get_ref();
        let migration = match &r.strangler {
            Some(s) => {
                let old = previous.map(|p| &p.migrations);
                let m = crate::strangle::build(gateway, &r.name, r.auth.is_some(), s, &groups, old)
                    .map_err(|e| config.error_at(spanned.span(), e.reason().to_owned()))?;
                Some(m)
            }
            None => None,
        };
        let sticky = migration.as_ref().map(|m| m.key.clone());
        let inner: GroupService = match (&r.upstream, &r.aggregate, &migration) {
            (_, _, Some(m)) => m.service.clone(),
            (Some(u), _, None) => groups[u.get_ref()].service.clone(),
            (None, Some(agg), None) => {
                let parts = agg
                    .parts
                    .iter()
                    .map(|p| {
                        let p = p.get_ref();
                        Part {
                            name: p.name.clone(),
                            service: groups[p.upstream.get_ref()].service.clone(),
                            path: p.path.get_ref().clone(),
                        }
                    })
                    .collect();
                let timeout = agg.timeout.map_or(Duration::from_secs(5), |d| d.0);
                BoxCloneSyncService::new(Aggregate::new(parts, timeout))
            }
            (None, None, None) => unreachable_route(),
        };
        let transform = Arc::new(RequestTransform::new(&r.request));
        let keep_extensions = r.aggregate.is_some();
        let auth = r
            .auth
            .as_ref()
            .map(|a| AuthLayer::new(schemes[a.get_ref()].clone(), identity.clone()));
        let limit = r
            .limit
            .as_ref()
            .map(|l| KeyedRateLimitLayer::new(limiters[l.get_ref()].1.clone()));
        let service = ServiceBuilder::new()
            .option_layer(auth)
            .option_layer(limit)
            .layer(ReadBodyLayer {
                max: settings.max_body,
                timeout: settings.body_read_timeout,
            })
            .map_request(move |mut req: Request<_>| {
                // A strangler route keeps the caller's sticky key (and tenant) across the
                // clearing below, taken before any rule edits the headers.
                let kept = sticky.as_ref().map(|k| Sticky::take(k, &req));
                transform.apply(&mut req);
                // Past this point only an aggregate reads the extensions (its parameters);
                // an upstream group sends the request over HTTP, and its retry copies the
                // extensions for every attempt.
                if !keep_extensions {
                    req.extensions_mut().clear();
                }
                if let Some(kept) = kept {
                    kept.put(&mut req);
                }
                req
            })
            .service(inner);
        let counts = previous
            .and_then(|p| p.routes.iter().find(|old| *old.name == *r.name))
            .map_or_else(Default::default, |old| old.counts.clone());
        if let Some(m) = migration {
            migrations.insert(r.name.clone(), m);
        }
        routes.push(CompiledRoute {
            name: r.name.as_str().into(),
            service: BoxCloneSyncService::new(service),
            response: HeaderOps::for_response(&r.response),
            counts,
        });
    }
    let router = Router::build(&config)?;
    Ok(Compiled {
        generation,
        config,
        router,
        routes,
        groups,
        limiters,
        migrations,
        settings,
        watched,
    })
}

fn unreachable_route() -> GroupService {
    // Validation requires exactly one of upstream, aggregate and strangler; answer 502 rather
    // than panic.
    BoxCloneSyncService::new(tower::service_fn(
        |_: Request<http_body_util::Full<bytes::Bytes>>| async {
            Err::<http::Response<crate::GatewayBody>, _>(
                crate::error::GatewayError::new(
                    crate::error::Kind::Upstream,
                    "route without an upstream",
                )
                .into(),
            )
        },
    ))
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn jwt_auth(
    config: &GatewayConfig,
    name: &str,
    jwt: &schema::Jwt,
    watched: &mut Vec<PathBuf>,
) -> Result<JwtAuth, ConfigFileError> {
    let mut builder = JwtVerifier::builder();
    for key in &jwt.hs256 {
        let k = key.get_ref();
        let secret = match (&k.secret_env, &k.secret_file) {
            (Some(var), _) => std::env::var(var).map_err(|_| {
                config.error_at(
                    key.span(),
                    format!(
                        "environment variable {var} (the secret of key {:?}) is not set",
                        k.kid
                    ),
                )
            })?,
            (None, Some(file)) => {
                let path = config.resolve(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    config.error_at(key.span(), format!("cannot read {}: {e}", path.display()))
                })?;
                watched.push(path);
                text.trim_end_matches(['\n', '\r']).to_owned()
            }
            (None, None) => String::new(),
        };
        builder = builder.hs256(&k.kid, secret.as_bytes());
    }
    for (keys, ed) in [(&jwt.rs256, false), (&jwt.eddsa, true)] {
        for key in keys {
            let k = key.get_ref();
            let path = config.resolve(&k.pem_file);
            let pem = std::fs::read(&path).map_err(|e| {
                config.error_at(key.span(), format!("cannot read {}: {e}", path.display()))
            })?;
            watched.push(path);
            builder = if ed {
                builder.ed25519_pem(&k.kid, &pem)
            } else {
                builder.rs256_pem(&k.kid, &pem)
            };
        }
    }
    if let Some(file) = &jwt.jwks_file {
        let path = config.resolve(file.get_ref());
        let json = std::fs::read_to_string(&path).map_err(|e| {
            config.error_at(file.span(), format!("cannot read {}: {e}", path.display()))
        })?;
        watched.push(path);
        builder = builder.jwks(&json);
    }
    for aud in &jwt.audiences {
        builder = builder.audience(aud);
    }
    for iss in &jwt.issuers {
        builder = builder.issuer(iss);
    }
    if let Some(leeway) = jwt.leeway {
        builder = builder.leeway(leeway.0);
    }
    let tenant_claim = jwt
        .tenant_claim
        .clone()
        .unwrap_or_else(|| "tenant".to_owned());
    let verifier = builder
        .claim(&tenant_claim)
        .build()
        .map_err(located(config, "auth", name))?;
    Ok(JwtAuth {
        verifier,
        plan_claim: jwt.plan_claim.clone().unwrap_or_else(|| "plan".to_owned()),
        consumer_claim: jwt
            .consumer_claim
            .clone()
            .unwrap_or_else(|| "sub".to_owned()),
        tenant_claim,
    })
}

fn build_limiter(
    gateway: &str,
    name: &str,
    limit: &schema::Limit,
    redis: Option<&schema::Redis>,
) -> Result<RouteLimiter, ConfigError> {
    let full = format!("{gateway}.{name}");
    let mut rate = limit.rate.0;
    if let Some(burst) = limit.burst {
        rate = rate.burst(burst);
    }
    let plans: std::collections::HashMap<String, _> = limit
        .plans
        .iter()
        // A plan's rate keeps a burst of its own count; `burst` shapes the default rate.
        .map(|(plan, r)| (plan.clone(), r.0))
        .collect();
    let slowest = plans
        .values()
        .map(tower_patterns_ratelimit::Rate::refill)
        .fold(rate.refill(), Duration::max);
    let key = IdentityKey(KeyKind::parse(limit.key.get_ref()));
    let plans = PlanRates(Arc::new(plans));
    if limit.store.get_ref() == "redis" {
        #[cfg(feature = "redis")]
        {
            use tower_patterns_ratelimit::redis::{RedisLimiter, Unavailable};
            let redis = redis.ok_or_else(|| ConfigError::new("store", "no [redis] table"))?;
            let on = match redis.on_unavailable.as_ref().map(|m| m.get_ref().as_str()) {
                Some("deny") => Unavailable::FailClosed,
                _ => Unavailable::FailOpen,
            };
            let limiter = RedisLimiter::builder(full)
                .key(key)
                .url(redis.url.get_ref().clone())
                .rate(rate)
                .rate_for(plans)
                .on_unavailable(on)
                .build()?;
            return Ok(RouteLimiter::Redis(Arc::new(limiter)));
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = redis;
            return Err(ConfigError::new("store", "built without the redis feature"));
        }
    }
    let limiter = GcraLimiter::builder(full)
        .key(key)
        .rate(rate)
        .rate_for(plans, slowest)
        .build::<LimitKey>()?;
    Ok(RouteLimiter::Gcra(Arc::new(limiter)))
}
