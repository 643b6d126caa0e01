//! The configuration file's shape, as serde structs. Every table refuses unknown keys; names
//! that point elsewhere in the file (a route's upstream, auth and limit) keep their span so
//! that a dangling one is reported at its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::values::{Dur, RateText, Size};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    pub(crate) server: Server,
    #[serde(default)]
    pub(crate) admin: Admin,
    #[serde(default)]
    pub(crate) reload: Reload,
    #[serde(default)]
    pub(crate) identity: Identity,
    pub(crate) redis: Option<Redis>,
    #[serde(default)]
    pub(crate) auth: BTreeMap<String, Auth>,
    #[serde(default)]
    pub(crate) consumers: Vec<Spanned<Consumer>>,
    #[serde(default)]
    pub(crate) limits: BTreeMap<String, Limit>,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<Route>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Server {
    #[serde(default = "default_listen")]
    pub(crate) listen: Spanned<String>,
    pub(crate) header_read_timeout: Option<Dur>,
    pub(crate) body_read_timeout: Option<Dur>,
    pub(crate) max_body: Option<Size>,
    pub(crate) request_id_header: Option<Spanned<String>>,
    pub(crate) drain_timeout: Option<Dur>,
    pub(crate) max_connections: Option<u32>,
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_owned())
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            header_read_timeout: None,
            body_read_timeout: None,
            max_body: None,
            request_id_header: None,
            drain_timeout: None,
            max_connections: None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Admin {
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) token_env: Option<Spanned<String>>,
    pub(crate) token_file: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reload {
    pub(crate) poll_interval: Option<Dur>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Identity {
    pub(crate) consumer_header: Option<Spanned<String>>,
    pub(crate) tenant_header: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) strip: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Redis {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) url: Spanned<String>,
    pub(crate) on_unavailable: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Auth {
    pub(crate) jwt: Option<Jwt>,
    pub(crate) api_key: Option<ApiKey>,
    #[serde(default)]
    pub(crate) optional: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Jwt {
    pub(crate) audiences: Vec<String>,
    #[serde(default)]
    pub(crate) issuers: Vec<String>,
    #[serde(default)]
    pub hs256: Vec<Spanned<SecretKey>>,
    #[serde(default)]
    pub rs256: Vec<Spanned<PemKey>>,
    #[serde(default)]
    pub(crate) eddsa: Vec<Spanned<PemKey>>,
    pub(crate) jwks_file: Option<Spanned<String>>,
    pub(crate) consumer_claim: Option<String>,
    pub(crate) tenant_claim: Option<String>,
    pub(crate) plan_claim: Option<String>,
    pub(crate) leeway: Option<Dur>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretKey {
    pub(crate) kid: String,
    pub(crate) secret_env: Option<String>,
    pub(crate) secret_file: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PemKey {
    pub(crate) kid: String,
    pub(crate) pem_file: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKey {
    #[serde(default = "default_api_key_header")]
    pub(crate) header: Spanned<String>,
}

fn default_api_key_header() -> Spanned<String> {
    Spanned::new(0..0, "x-api-key".to_owned())
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Consumer {
    pub(crate) id: String,
    pub(crate) tenant: Option<String>,
    pub(crate) plan: Option<String>,
    #[serde(default)]
    pub api_keys_sha256: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limit {
    #[serde(default = "default_limit_key")]
    pub(crate) key: Spanned<String>,
    pub(crate) rate: RateText,
    pub(crate) burst: Option<u32>,
    #[serde(default)]
    pub(crate) plans: BTreeMap<String, RateText>,
    #[serde(default = "default_store")]
    pub(crate) store: Spanned<String>,
}

fn default_limit_key() -> Spanned<String> {
    Spanned::new(0..0, "consumer".to_owned())
}

fn default_store() -> Spanned<String> {
    Spanned::new(0..0, "memory".to_owned())
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstream {
    pub(crate) addresses: Vec<Spanned<String>>,
    pub(crate) timeout: Option<Dur>,
    pub(crate) connect_timeout: Option<Dur>,
    pub(crate) retry: Option<Retry>,
    pub(crate) breaker: Option<Breaker>,
    pub(crate) bulkhead: Option<Bulkhead>,
    pub(crate) outlier: Option<Outlier>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Retry {
    pub(crate) attempts: u32,
    pub(crate) budget_ratio: Option<f64>,
    pub(crate) budget_tokens: Option<f64>,
    pub(crate) backoff: Option<Dur>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Breaker {
    pub(crate) window: Option<u32>,
    pub(crate) minimum_calls: Option<u64>,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) open_for: Option<Dur>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Bulkhead {
    pub(crate) max_concurrent: u32,
    pub(crate) max_wait: Option<Dur>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Outlier {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) base_ejection: Option<Dur>,
    pub(crate) max_ejected_percent: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Route {
    pub(crate) name: String,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) upstream: Option<Spanned<String>>,
    pub(crate) aggregate: Option<Aggregate>,
    pub(crate) strangler: Option<super::strangler::Strangler>,
    pub(crate) auth: Option<Spanned<String>>,
    pub(crate) limit: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) request: RequestRules,
    #[serde(default)]
    pub(crate) response: HeaderRules,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestRules {
    pub(crate) strip_prefix: Option<Spanned<String>>,
    pub(crate) rewrite: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) add_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) set_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) remove_headers: Vec<String>,
    #[serde(default)]
    pub(crate) rename_headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderRules {
    #[serde(default)]
    pub(crate) add_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) set_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) remove_headers: Vec<String>,
    #[serde(default)]
    pub(crate) rename_headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Aggregate {
    pub(crate) timeout: Option<Dur>,
    pub(crate) parts: Vec<Spanned<Part>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Part {
    pub(crate) name: String,
    pub(crate) upstream: Spanned<String>,
    pub(crate) path: Spanned<String>,
}
