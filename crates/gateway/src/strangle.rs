//! Routes of kind `strangler`: the strangler fig crate's migration between two upstream
//! groups, built from the route's `[routes.strangler]` table.
//!
//! The sticky key is taken from the gateway's own view of the caller (the verified consumer
//! or tenant, or the client address), before the extensions are cleared for the upstream, so
//! a client cannot choose its side by sending a header unless the route's key is a header.
//! A reload keeps a migration (its ramp, counts and any change made through its handle)
//! while its table and both groups are unchanged.

use std::{collections::BTreeMap, sync::Arc};

use http::{HeaderName, Request};
use tower::{ServiceExt, util::BoxCloneSyncService};
use tower_layer::Layer;
use tower_patterns_core::{ConfigError, key::ExtensionKey, tenant::TenantId};
use tower_patterns_strangler::{
    Mode, Ramp, Route, Shadow, Share, StranglerHandle, StranglerLayer,
    compare::{Comparator, Normaliser},
    key::KeyBytes,
};

use crate::{
    GatewayBody,
    auth::Identity,
    config::strangler::{self as schema, KeyKind, basis_points, key_kind},
    limits::ClientAddr,
    upstream::{Group, GroupService},
};

/// The caller's sticky key, as the gateway established it.
#[derive(Clone, Debug)]
pub(crate) struct CallerKey(Arc<[u8]>);

impl KeyBytes for CallerKey {
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.0)
    }
}

/// What a strangler route keeps of a request across the clearing of its extensions.
#[derive(Debug, Default)]
pub(crate) struct Sticky {
    key: Option<CallerKey>,
    tenant: Option<TenantId>,
}

impl Sticky {
    /// Takes the key (and the tenant, for pins) from a request that passed the route's auth.
    pub(crate) fn take<B>(kind: &KeyKind, req: &Request<B>) -> Self {
        let identity = req.extensions().get::<Identity>();
        let key = match kind {
            KeyKind::Consumer => identity.map(|i| i.consumer_arc().as_bytes().into()),
            KeyKind::Tenant => identity
                .and_then(Identity::tenant)
                .map(|t| t.as_str().as_bytes().into()),
            KeyKind::ClientIp => req
                .extensions()
                .get::<ClientAddr>()
                .map(|a| a.0.ip().to_string().as_bytes().into()),
            // One non-empty value, any bytes, as the crate's own header key: two are no key.
            KeyKind::Header(name) => {
                let mut values = req.headers().get_all(name).iter();
                match (values.next(), values.next()) {
                    (Some(v), None) if !v.is_empty() => Some(v.as_bytes().into()),
                    _ => None,
                }
            }
        };
        Self {
            key: key.map(CallerKey),
            tenant: identity.and_then(Identity::tenant).cloned(),
        }
    }

    /// Puts them back after the clearing.
    pub(crate) fn put<B>(self, req: &mut Request<B>) {
        if let Some(key) = self.key {
            req.extensions_mut().insert(key);
        }
        if let Some(tenant) = self.tenant {
            req.extensions_mut().insert(tenant);
        }
    }
}

/// A built migration, kept across reloads while its table and groups are unchanged.
pub(crate) struct Migration {
    settings: schema::Strangler,
    has_auth: bool,
    legacy: Arc<Group>,
    new: Arc<Group>,
    pub(crate) key: KeyKind,
    pub(crate) service: GroupService,
    pub(crate) handle: StranglerHandle,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// The ramp of a `ramp = { ... }` table.
pub(crate) fn ramp(r: &schema::Ramp) -> Result<Ramp, ConfigError> {
    let steps = r
        .steps
        .iter()
        .map(|p| {
            basis_points(*p)
                .and_then(|bp| Share::basis_points_of(bp).ok())
                .ok_or_else(|| ConfigError::new("ramp", "steps are percentages from 0 to 100"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ramp = Ramp::new(steps);
    if let Some(d) = r.hold {
        ramp = ramp.hold(d.0);
    }
    if let Some(d) = r.window {
        ramp = ramp.window(d.0);
    }
    if let Some(n) = r.min_requests {
        ramp = ramp.min_requests(n);
    }
    if let Some(v) = r.max_error_rate_increase {
        ramp = ramp.max_error_rate_increase(v);
    }
    if r.max_error_rate.is_some() {
        ramp = ramp.max_error_rate(r.max_error_rate);
    }
    if let Some(v) = r.max_p99_ratio {
        ramp = ramp.max_p99_ratio(v);
    }
    if let Some(d) = r.p99_slack {
        ramp = ramp.p99_slack(d.0);
    }
    ramp.check()?;
    Ok(ramp)
}

/// The shadow settings of a `shadow = { ... }` table.
pub(crate) fn shadow(s: &schema::Shadow) -> Result<Shadow, ConfigError> {
    let mut compare = Comparator::builder();
    for h in &s.headers {
        let name = HeaderName::try_from(h.as_str())
            .map_err(|_| ConfigError::new("shadow.headers", format!("{h:?} is not a header")))?;
        compare = compare.header(name);
    }
    for p in &s.ignore {
        compare = compare.ignore(p.as_str());
    }
    for p in &s.uuids {
        compare = compare.normalise(p.as_str(), Normaliser::Uuid);
    }
    for p in &s.timestamps {
        compare = compare.normalise(p.as_str(), Normaliser::Timestamp);
    }
    let mut shadow = Shadow::new(compare.build()?)
        .noise_baseline(s.noise_baseline)
        .mirror_writes(s.mirror_writes);
    if let Some(n) = s.max_concurrency {
        shadow = shadow.max_concurrency(n);
    }
    if let Some(d) = s.timeout {
        shadow = shadow.timeout(d.0);
    }
    if let Some(m) = &s.marker {
        let name = HeaderName::try_from(m.as_str())
            .map_err(|_| ConfigError::new("shadow.marker", format!("{m:?} is not a header")))?;
        shadow = shadow.marker(name);
    }
    shadow.check()?;
    Ok(shadow)
}

/// Builds the migration of route `route`, or keeps `previous`'s when nothing it depends on
/// changed.
pub(crate) fn build(
    gateway: &str,
    route: &str,
    has_auth: bool,
    s: &schema::Strangler,
    groups: &BTreeMap<String, Arc<Group>>,
    previous: Option<&BTreeMap<String, Migration>>,
) -> Result<Migration, ConfigError> {
    let (legacy, new) = (&groups[s.legacy.get_ref()], &groups[s.new.get_ref()]);
    if let Some(old) = previous.and_then(|p| p.get(route))
        && old.settings == *s
        && old.has_auth == has_auth
        && Arc::ptr_eq(&old.legacy, legacy)
        && Arc::ptr_eq(&old.new, new)
    {
        return Ok(Migration {
            settings: old.settings.clone(),
            has_auth,
            legacy: old.legacy.clone(),
            new: old.new.clone(),
            key: old.key.clone(),
            service: old.service.clone(),
            handle: old.handle.clone(),
        });
    }
    let key = match &s.key {
        Some(k) => {
            key_kind(k.get_ref()).ok_or_else(|| ConfigError::new("strangler.key", "not a key"))?
        }
        None if has_auth => KeyKind::Consumer,
        None => KeyKind::ClientIp,
    };
    let mode = match s.mode.as_ref().map_or("legacy", |m| m.get_ref().as_str()) {
        "new" => Mode::New,
        "shadow" => Mode::Shadow,
        "split" => {
            let percent = s.split.as_ref().map_or(0.0, |p| *p.get_ref());
            let bp = basis_points(percent)
                .ok_or_else(|| ConfigError::new("strangler.split", "a percentage from 0 to 100"))?;
            Mode::Split(Share::basis_points_of(bp)?)
        }
        _ => Mode::Legacy,
    };
    let mut table = Route::prefix("/").named(route).mode(mode);
    if let Some(r) = &s.ramp {
        table = table.ramp(ramp(r.get_ref())?);
    }
    let mut builder = StranglerLayer::builder(format!("{gateway}.{route}"))
        .key(ExtensionKey::<CallerKey>::new())
        .new_side(new.service.clone())
        .route(table)
        .salt(s.salt.clone().unwrap_or_else(|| route.to_owned()))
        .new_tenants(s.new_tenants.iter().map(|t| t.get_ref().clone()))
        .legacy_tenants(s.legacy_tenants.iter().map(|t| t.get_ref().clone()))
        .legacy_read_only(s.legacy_read_only);
    if let Some(h) = &s.override_header {
        let name = HeaderName::try_from(h.get_ref().as_str())
            .map_err(|_| ConfigError::new("strangler.override_header", "not a header name"))?;
        builder = builder.override_header(name);
    }
    // Mode shadow without a `shadow` table compares with the defaults, rather than serving
    // legacy alone without a word.
    match &s.shadow {
        Some(sh) => builder = builder.shadow(shadow(sh.get_ref())?),
        None if mode == Mode::Shadow => {
            builder = builder.shadow(shadow(&schema::Shadow::default())?);
        }
        None => {}
    }
    let layer = builder.build()?;
    let handle = layer.handle();
    let service = layer
        .layer(legacy.service.clone())
        .map_response(|res| res.map(GatewayBody::new));
    Ok(Migration {
        settings: s.clone(),
        has_auth,
        legacy: legacy.clone(),
        new: new.clone(),
        key,
        service: BoxCloneSyncService::new(service),
        handle,
    })
}
