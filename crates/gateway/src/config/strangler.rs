//! A route of kind `strangler`: the route's traffic migrates from one upstream group (the
//! monolith) to another (the new service), by the strangler fig crate's migration table.
//!
//! ```toml
//! [[routes]]
//! name = "users"
//! prefix = "/api/users"
//! auth = "users"
//! [routes.strangler]
//! legacy = "monolith"
//! new = "users"
//! mode = "split"            # legacy | new | split | shadow
//! split = 50                # percent to the new side (a split; decimals allowed)
//! key = "consumer"          # consumer | tenant | client_ip | "header:<name>"
//! ramp = { steps = [10, 25, 50, 100], hold = "5m", window = "30s" }
//! ```

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigFileError, GatewayConfig, schema, values::Dur};

/// `[routes.strangler]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Strangler {
    pub(crate) legacy: Spanned<String>,
    pub(crate) new: Spanned<String>,
    pub(crate) mode: Option<Spanned<String>>,
    pub(crate) split: Option<Spanned<f64>>,
    pub(crate) key: Option<Spanned<String>>,
    pub(crate) salt: Option<String>,
    pub(crate) override_header: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) new_tenants: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) legacy_tenants: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) legacy_read_only: bool,
    pub(crate) ramp: Option<Spanned<Ramp>>,
    pub(crate) shadow: Option<Spanned<Shadow>>,
}

/// `ramp = { ... }`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ramp {
    pub(crate) steps: Vec<f64>,
    pub(crate) hold: Option<Dur>,
    pub(crate) window: Option<Dur>,
    pub(crate) min_requests: Option<u64>,
    pub(crate) max_error_rate_increase: Option<f64>,
    pub(crate) max_error_rate: Option<f64>,
    pub(crate) max_p99_ratio: Option<f64>,
    pub(crate) p99_slack: Option<Dur>,
}

/// `shadow = { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Shadow {
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) timeout: Option<Dur>,
    #[serde(default)]
    pub(crate) noise_baseline: bool,
    #[serde(default)]
    pub(crate) mirror_writes: bool,
    pub(crate) marker: Option<String>,
    #[serde(default)]
    pub(crate) headers: Vec<String>,
    #[serde(default)]
    pub(crate) ignore: Vec<String>,
    #[serde(default)]
    pub(crate) uuids: Vec<String>,
    #[serde(default)]
    pub(crate) timestamps: Vec<String>,
}

/// The sticky key of a strangler route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Consumer,
    Tenant,
    ClientIp,
    Header(http::HeaderName),
}

/// Parses `consumer`, `tenant`, `client_ip` or `header:<name>`.
pub(crate) fn key_kind(text: &str) -> Option<KeyKind> {
    match text {
        "consumer" => Some(KeyKind::Consumer),
        "tenant" => Some(KeyKind::Tenant),
        "client_ip" => Some(KeyKind::ClientIp),
        other => other
            .strip_prefix("header:")
            .and_then(|h| http::HeaderName::try_from(h.trim()).ok())
            .map(KeyKind::Header),
    }
}

/// The share of a percentage written in the file, in basis points.
pub(crate) fn basis_points(percent: f64) -> Option<u16> {
    (percent.is_finite() && (0.0..=100.0).contains(&percent))
        .then(|| (percent * 100.0).round() as u16)
}

impl GatewayConfig {
    /// Checks a route's `strangler` table against the rest of the file.
    pub(crate) fn validate_strangler(
        &self,
        route: &Spanned<schema::Route>,
        s: &Strangler,
    ) -> Result<(), ConfigFileError> {
        let f = &self.file;
        let r = route.get_ref();
        let at = |span: std::ops::Range<usize>, m: String| self.error_at(span, m);
        if r.upstream.is_some() || r.aggregate.is_some() {
            return Err(at(
                route.span(),
                format!(
                    "route {:?} has a strangler: it takes no upstream or aggregate",
                    r.name
                ),
            ));
        }
        for group in [&s.legacy, &s.new] {
            if !f.upstreams.contains_key(group.get_ref()) {
                return Err(at(
                    group.span(),
                    format!("no upstream group {:?}", group.get_ref()),
                ));
            }
        }
        let mode = s.mode.as_ref().map_or("legacy", |m| m.get_ref().as_str());
        if !["legacy", "new", "split", "shadow"].contains(&mode) {
            let span = s.mode.as_ref().map_or(route.span(), Spanned::span);
            return Err(at(
                span,
                format!("{mode:?} is not a mode (legacy, new, split or shadow)"),
            ));
        }
        match (&s.split, mode) {
            (Some(p), "split") if basis_points(*p.get_ref()).is_none() => {
                return Err(at(
                    p.span(),
                    "split is a percentage from 0 to 100".to_owned(),
                ));
            }
            (Some(p), m) if m != "split" => {
                return Err(at(
                    p.span(),
                    format!("split is for mode \"split\", not {m:?}"),
                ));
            }
            (None, "split") if s.ramp.is_none() => {
                let span = s.mode.as_ref().map_or(route.span(), Spanned::span);
                return Err(at(
                    span,
                    "mode \"split\" needs split = <percent>".to_owned(),
                ));
            }
            _ => {}
        }
        if let Some(k) = &s.key {
            let Some(kind) = key_kind(k.get_ref()) else {
                return Err(at(
                    k.span(),
                    format!(
                        "{:?} is not a key (consumer, tenant, client_ip or \"header:<name>\")",
                        k.get_ref()
                    ),
                ));
            };
            if matches!(kind, KeyKind::Consumer | KeyKind::Tenant) && r.auth.is_none() {
                return Err(at(
                    k.span(),
                    format!("a key by {} needs the route to have auth", k.get_ref()),
                ));
            }
        }
        if let Some(h) = &s.override_header
            && http::HeaderName::try_from(h.get_ref().as_str()).is_err()
        {
            return Err(at(
                h.span(),
                format!("{:?} is not a header name", h.get_ref()),
            ));
        }
        for t in s.new_tenants.iter().chain(&s.legacy_tenants) {
            if tower_patterns_core::tenant::TenantId::validate(t.get_ref()).is_err() {
                return Err(at(
                    t.span(),
                    format!("{:?} is not a tenant id", t.get_ref()),
                ));
            }
        }
        if let Some(ramp) = &s.ramp {
            if let Err(e) = crate::strangle::ramp(ramp.get_ref()) {
                return Err(at(ramp.span(), e.reason().to_owned()));
            }
            if s.mode.is_some() || s.split.is_some() {
                return Err(at(
                    ramp.span(),
                    "a ramp sets the mode and share itself: drop mode and split".to_owned(),
                ));
            }
        }
        if let Some(shadow) = &s.shadow
            && let Err(e) = crate::strangle::shadow(shadow.get_ref())
        {
            return Err(at(shadow.span(), e.reason().to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_percentages() {
        assert_eq!(key_kind("consumer"), Some(KeyKind::Consumer));
        assert_eq!(key_kind("client_ip"), Some(KeyKind::ClientIp));
        assert_eq!(
            key_kind("header:X-User"),
            Some(KeyKind::Header(http::HeaderName::from_static("x-user")))
        );
        assert_eq!(key_kind("header:"), None);
        assert_eq!(key_kind("cookie"), None);
        assert_eq!(basis_points(12.5), Some(1250));
        assert_eq!(basis_points(100.0), Some(10_000));
        assert_eq!(basis_points(100.5), None);
        assert_eq!(basis_points(-1.0), None);
        assert_eq!(basis_points(f64::NAN), None);
    }
}
