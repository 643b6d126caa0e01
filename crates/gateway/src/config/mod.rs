//! The gateway's configuration file (TOML): its shape, its values and its errors.
//!
//! [`GatewayConfig::parse`] reads and checks a whole file: unknown keys, bad values and
//! references to missing upstreams, auth schemes or limits are refused with a
//! [`ConfigFileError`] that names the file, the line, the column and the key. The reference of
//! every key is in the API gateway guide (`docs/patterns/api-gateway.md`).
//!
//! ```
//! use tower_patterns_gateway::GatewayConfig;
//!
//! let config = GatewayConfig::parse(
//!     r#"
//! [upstreams.users]
//! addresses = ["127.0.0.1:9101"]
//!
//! [[routes]]
//! name = "users"
//! prefix = "/users"
//! upstream = "users"
//! "#,
//!     "gateway.toml",
//! )
//! .unwrap();
//! assert_eq!(config.route_names().collect::<Vec<_>>(), ["users"]);
//!
//! let err = GatewayConfig::parse("[[routes]]\nname = \"x\"\nprefix = \"/\"\nupstream = \"nowhere\"\n", "gateway.toml")
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "gateway.toml:4:12: routes[0].upstream: no upstream group \"nowhere\"");
//! ```

mod error;
pub(crate) mod schema;
pub(crate) mod strangler;
pub(crate) mod values;

use std::{
    collections::HashSet,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

pub use error::ConfigFileError;
use http::{HeaderName, HeaderValue, Method};
use schema::FileConfig;
use toml::Spanned;

/// A checked configuration file; build a gateway from it with
/// [`GatewayBuilder::config`](crate::GatewayBuilder::config).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub(crate) file: FileConfig,
    text: Arc<str>,
    origin: Arc<str>,
    dir: PathBuf,
}

impl GatewayConfig {
    /// Parses and checks `text`; `origin` names the file in errors (and relative paths in the
    /// file, such as a JWKS file, are read from the current directory).
    ///
    /// # Errors
    ///
    /// A [`ConfigFileError`] at the first problem found.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigFileError> {
        Self::parse_in(text, origin, PathBuf::from("."))
    }

    /// Reads, parses and checks the file at `path`; relative paths in it are read from the
    /// file's directory.
    ///
    /// # Errors
    ///
    /// A [`ConfigFileError`] when the file cannot be read or at its first problem.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigFileError::whole(&origin, format!("cannot read the file: {e}")))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self::parse_in(&text, &origin, dir)
    }

    fn parse_in(text: &str, origin: &str, dir: PathBuf) -> Result<Self, ConfigFileError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_owned();
            ConfigFileError::at(origin, text, e.span(), message)
        })?;
        let config = Self {
            file,
            text: text.into(),
            origin: origin.into(),
            dir,
        };
        config.validate()?;
        Ok(config)
    }

    /// An error at `span` of this file.
    pub(crate) fn error_at(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> ConfigFileError {
        let span = (span != (0..0)).then_some(span);
        ConfigFileError::at(&self.origin, &self.text, span, message)
    }

    /// A path named in the file, relative to the file's directory.
    pub(crate) fn resolve(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }

    /// The file's name as given.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The routes' names, in the file's order.
    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.file.routes.iter().map(|r| r.get_ref().name.as_str())
    }

    /// The address the gateway listens on (`server.listen`, default `127.0.0.1:8080`).
    pub fn listen(&self) -> SocketAddr {
        self.file
            .server
            .listen
            .get_ref()
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// The address of the admin listener (`/metrics`, `/healthz`, `/readyz`), if any.
    pub fn admin_listen(&self) -> Option<SocketAddr> {
        self.file
            .admin
            .listen
            .as_ref()
            .and_then(|l| l.get_ref().parse().ok())
    }

    /// How often the file is checked for changes (`reload.poll_interval`, default 1 s; zero
    /// turns polling off).
    pub fn poll_interval(&self) -> Duration {
        self.file
            .reload
            .poll_interval
            .map_or(Duration::from_secs(1), |d| d.0)
    }

    fn validate(&self) -> Result<(), ConfigFileError> {
        let f = &self.file;
        let at = |s: &Spanned<String>, m: String| self.error_at(s.span(), m);
        let socket = |s: &Spanned<String>| {
            s.get_ref().parse::<SocketAddr>().map(drop).map_err(|_| {
                at(
                    s,
                    format!(
                        "{:?} is not an address such as \"127.0.0.1:8080\"",
                        s.get_ref()
                    ),
                )
            })
        };
        socket(&f.server.listen)?;
        if let Some(l) = &f.admin.listen {
            socket(l)?;
            let loopback = l
                .get_ref()
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            if !loopback && f.admin.token_env.is_none() && f.admin.token_file.is_none() {
                return Err(at(
                    l,
                    "an admin listener off loopback needs admin.token_env or admin.token_file (a bearer token)"
                        .to_owned(),
                ));
            }
        }
        if let (Some(_), Some(file)) = (&f.admin.token_env, &f.admin.token_file) {
            return Err(at(
                file,
                "admin takes one of token_env and token_file".to_owned(),
            ));
        }
        let header = |s: &Spanned<String>| {
            HeaderName::try_from(s.get_ref().as_str())
                .map(drop)
                .map_err(|_| at(s, format!("{:?} is not a header name", s.get_ref())))
        };
        for h in [
            &f.server.request_id_header,
            &f.identity.consumer_header,
            &f.identity.tenant_header,
        ]
        .into_iter()
        .flatten()
        {
            header(h)?;
        }
        for s in &f.identity.strip {
            HeaderName::try_from(s.get_ref().trim_end_matches('*')).map_err(|_| {
                at(
                    s,
                    format!("{:?} is not a header name or prefix", s.get_ref()),
                )
            })?;
        }
        if let Some(mode) = f.redis.as_ref().and_then(|r| r.on_unavailable.as_ref())
            && !matches!(mode.get_ref().as_str(), "allow" | "deny")
        {
            return Err(at(
                mode,
                "on_unavailable is \"allow\" or \"deny\"".to_owned(),
            ));
        }
        for (name, auth) in &f.auth {
            if auth.jwt.is_none() && auth.api_key.is_none() {
                return Err(self.named_table_error(
                    "auth",
                    name,
                    "an auth scheme needs jwt, api_key or both",
                ));
            }
            if let Some(k) = &auth.api_key {
                header(&k.header)?;
            }
            if let Some(jwt) = &auth.jwt {
                if jwt.audiences.is_empty() {
                    return Err(self.named_table_error(
                        "auth",
                        name,
                        "jwt.audiences is empty: tokens for other services would pass",
                    ));
                }
                for key in &jwt.hs256 {
                    let k = key.get_ref();
                    if k.secret_env.is_some() == k.secret_file.is_some() {
                        return Err(self.error_at(
                            key.span(),
                            format!(
                                "key {:?} needs exactly one of secret_env and secret_file",
                                k.kid
                            ),
                        ));
                    }
                }
            }
        }
        let mut consumer_ids = HashSet::new();
        for c in &f.consumers {
            let consumer = c.get_ref();
            if !consumer_ids.insert(consumer.id.as_str()) {
                return Err(self.error_at(
                    c.span(),
                    format!("consumer {:?} is defined twice", consumer.id),
                ));
            }
            if consumer.id.is_empty() || HeaderValue::try_from(consumer.id.as_str()).is_err() {
                return Err(self.error_at(c.span(), "a consumer id is printable text".to_owned()));
            }
            if let Some(t) = &consumer.tenant {
                tower_patterns_core::tenant::TenantId::validate(t)
                    .map_err(|e| self.error_at(c.span(), format!("tenant {t:?}: {e}")))?;
            }
            for hash in &consumer.api_keys_sha256 {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(self.error_at(
                        c.span(),
                        "api_keys_sha256 holds SHA-256 digests as 64 hex digits".to_owned(),
                    ));
                }
            }
        }
        for (name, limit) in &f.limits {
            if !matches!(
                limit.key.get_ref().as_str(),
                "consumer" | "tenant" | "client_ip"
            ) {
                return Err(at(
                    &limit.key,
                    "key is one of \"consumer\", \"tenant\", \"client_ip\"".to_owned(),
                ));
            }
            match limit.store.get_ref().as_str() {
                "memory" => {}
                "redis" if f.redis.is_none() => {
                    return Err(at(
                        &limit.store,
                        "store = \"redis\" needs a [redis] table with its url".to_owned(),
                    ));
                }
                "redis" if !cfg!(feature = "redis") => {
                    return Err(at(
                        &limit.store,
                        "this gateway was built without the redis feature".to_owned(),
                    ));
                }
                "redis" => {}
                _ => {
                    return Err(at(
                        &limit.store,
                        "store is \"memory\" or \"redis\"".to_owned(),
                    ));
                }
            }
            if limit.burst == Some(0) {
                return Err(self.named_table_error("limits", name, "burst must be at least 1"));
            }
        }
        for (name, up) in &f.upstreams {
            if up.addresses.is_empty() {
                return Err(self.named_table_error("upstreams", name, "addresses is empty"));
            }
            for a in &up.addresses {
                socket(a)?;
            }
            if let Some(r) = &up.retry
                && !(1..=10).contains(&r.attempts)
            {
                return Err(self.named_table_error(
                    "upstreams",
                    name,
                    "retry.attempts is between 1 and 10",
                ));
            }
            if let Some(b) = &up.breaker
                && b.failure_rate.is_some_and(|r| !(r > 0.0 && r <= 1.0))
            {
                return Err(self.named_table_error(
                    "upstreams",
                    name,
                    "breaker.failure_rate is in (0, 1]",
                ));
            }
            if let Some(o) = &up.outlier
                && o.max_ejected_percent.is_some_and(|p| p > 100)
            {
                return Err(self.named_table_error(
                    "upstreams",
                    name,
                    "outlier.max_ejected_percent is at most 100",
                ));
            }
        }
        let mut names = HashSet::new();
        for r in &f.routes {
            self.validate_route(r, &mut names)?;
        }
        Ok(())
    }

    fn validate_route<'a>(
        &self,
        spanned: &'a Spanned<schema::Route>,
        names: &mut HashSet<&'a str>,
    ) -> Result<(), ConfigFileError> {
        let f = &self.file;
        let r = spanned.get_ref();
        let whole = |m: String| self.error_at(spanned.span(), m);
        let at = |s: &Spanned<String>, m: String| self.error_at(s.span(), m);
        if !names.insert(r.name.as_str()) {
            return Err(whole(format!("route {:?} is defined twice", r.name)));
        }
        match (&r.path, &r.prefix) {
            (Some(p), None) | (None, Some(p)) => {
                if !p.get_ref().starts_with('/') {
                    return Err(at(p, "a path starts with /".to_owned()));
                }
            }
            _ => {
                return Err(whole(format!(
                    "route {:?} needs exactly one of path and prefix",
                    r.name
                )));
            }
        }
        if let Some(h) = &r.host
            && (h.get_ref().is_empty() || h.get_ref().contains(['/', ' ']))
        {
            return Err(at(h, format!("{:?} is not a host name", h.get_ref())));
        }
        for m in &r.methods {
            if m.get_ref().bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(at(
                    m,
                    format!("{:?}: methods are written in capitals", m.get_ref()),
                ));
            }
            Method::from_bytes(m.get_ref().as_bytes())
                .map_err(|_| at(m, format!("{:?} is not an HTTP method", m.get_ref())))?;
        }
        for (name, value) in &r.headers {
            if HeaderName::try_from(name.as_str()).is_err()
                || HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err(whole(format!(
                    "headers: {name:?} = {value:?} is not a header"
                )));
            }
        }
        match (&r.upstream, &r.aggregate, &r.strangler) {
            (_, _, Some(s)) => self.validate_strangler(spanned, s)?,
            (Some(u), None, None) => {
                if !f.upstreams.contains_key(u.get_ref()) {
                    return Err(at(u, format!("no upstream group {:?}", u.get_ref())));
                }
            }
            (None, Some(agg), None) => {
                if agg.parts.len() < 2 {
                    return Err(whole("an aggregate has two parts or more".to_owned()));
                }
                let mut part_names = HashSet::new();
                for p in &agg.parts {
                    let part = p.get_ref();
                    if !part_names.insert(part.name.as_str())
                        || part.name == "partial"
                        || part.name == "errors"
                    {
                        return Err(
                            self.error_at(p.span(), format!("part name {:?} is taken", part.name))
                        );
                    }
                    if !f.upstreams.contains_key(part.upstream.get_ref()) {
                        return Err(at(
                            &part.upstream,
                            format!("no upstream group {:?}", part.upstream.get_ref()),
                        ));
                    }
                    if !part.path.get_ref().starts_with('/') {
                        return Err(at(&part.path, "a path starts with /".to_owned()));
                    }
                }
            }
            _ => {
                return Err(whole(format!(
                    "route {:?} needs exactly one of upstream, aggregate and strangler",
                    r.name
                )));
            }
        }
        if let Some(a) = &r.auth
            && !f.auth.contains_key(a.get_ref())
        {
            return Err(at(a, format!("no auth scheme {:?}", a.get_ref())));
        }
        if let Some(l) = &r.limit {
            let Some(limit) = f.limits.get(l.get_ref()) else {
                return Err(at(l, format!("no limit {:?}", l.get_ref())));
            };
            if limit.key.get_ref() != "client_ip" && r.auth.is_none() {
                return Err(at(
                    l,
                    format!(
                        "a limit keyed by {} needs the route to have auth",
                        limit.key.get_ref()
                    ),
                ));
            }
        }
        let rules = &r.request;
        // Only the gateway sets the identity headers (and the stripped ones): a rule that
        // writes one would let a client's header become the consumer.
        let reserved = |name: &str| {
            let name = name.to_ascii_lowercase();
            let own = |h: &Option<Spanned<String>>, default: &str| {
                h.as_ref()
                    .map_or(default.to_owned(), |h| h.get_ref().to_ascii_lowercase())
            };
            name == own(&f.identity.consumer_header, "x-consumer-id")
                || name == own(&f.identity.tenant_header, "x-tenant-id")
                || f.identity.strip.iter().any(|s| {
                    let s = s.get_ref().to_ascii_lowercase();
                    match s.strip_suffix('*') {
                        Some(prefix) => name.starts_with(prefix),
                        None => name == s,
                    }
                })
        };
        let written = rules
            .add_headers
            .keys()
            .chain(rules.set_headers.keys())
            .chain(rules.rename_headers.values());
        for name in written {
            if reserved(name) {
                return Err(whole(format!(
                    "request rules may not write {name:?}: only the gateway sets the identity headers"
                )));
            }
        }
        if let Some(p) = &rules.strip_prefix
            && !p.get_ref().starts_with('/')
        {
            return Err(at(p, "a prefix starts with /".to_owned()));
        }
        if let Some(p) = &rules.rewrite
            && !p.get_ref().starts_with('/')
        {
            return Err(at(p, "a rewritten path starts with /".to_owned()));
        }
        let header_maps = [
            &rules.add_headers,
            &rules.set_headers,
            &r.response.add_headers,
            &r.response.set_headers,
        ];
        for map in header_maps {
            for (name, value) in map {
                if HeaderName::try_from(name.as_str()).is_err()
                    || HeaderValue::try_from(value.as_str()).is_err()
                {
                    return Err(whole(format!("{name:?} = {value:?} is not a header")));
                }
            }
        }
        for (from, to) in rules
            .rename_headers
            .iter()
            .chain(&r.response.rename_headers)
        {
            if HeaderName::try_from(from.as_str()).is_err()
                || HeaderName::try_from(to.as_str()).is_err()
            {
                return Err(whole(format!(
                    "rename {from:?} to {to:?}: not header names"
                )));
            }
        }
        for name in rules
            .remove_headers
            .iter()
            .chain(&r.response.remove_headers)
        {
            if HeaderName::try_from(name.as_str()).is_err() {
                return Err(whole(format!("{name:?} is not a header name")));
            }
        }
        Ok(())
    }

    /// An error about the table `[kind.name]`, at its header line.
    pub(crate) fn named_table_error(
        &self,
        kind: &str,
        name: &str,
        message: &str,
    ) -> ConfigFileError {
        // The table's own header, else one of its sub-tables' (`[upstreams.users.retry]`);
        // never a longer name that starts with this one.
        let start = self
            .text
            .find(&format!("[{kind}.{name}]"))
            .or_else(|| self.text.find(&format!("[{kind}.{name}.")));
        let span = start.map_or(0..0, |s| s..s + 1);
        self.error_at(span, message)
            .with_key(format!("{kind}.{name}"))
    }
}
