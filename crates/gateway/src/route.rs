//! Choosing a route: by host (exact, `*.suffix`, or any), then by path (matchit: static
//! segments, `{param}` and `{*rest}`, the most specific first), then by method and headers.

use std::collections::{BTreeMap, HashMap};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};

use crate::config::{ConfigFileError, GatewayConfig, schema};

/// The path parameters of the route a request matched (`{id}`, `{*rest}`), in its extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteParams(pub(crate) Vec<(String, String)>);

impl RouteParams {
    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter, in the path's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

struct Filter {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// A path router: the routes (by index) that share each path pattern, in file order.
struct Paths {
    router: matchit::Router<usize>,
    slots: Vec<Vec<usize>>,
}

impl Paths {
    fn new() -> Self {
        Self {
            router: matchit::Router::new(),
            slots: Vec::new(),
        }
    }
}

/// Why no route was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    NotFound,
    MethodNotAllowed,
}

/// The compiled routing table.
pub(crate) struct Router {
    hosts: HashMap<String, Paths>,
    /// `(".example.com", paths)`, longest suffix first.
    wildcards: Vec<(String, Paths)>,
    any: Paths,
    filters: Vec<Filter>,
}

impl Router {
    pub(crate) fn build(config: &GatewayConfig) -> Result<Self, ConfigFileError> {
        // host key -> path pattern -> routes
        let mut grouped: BTreeMap<Option<String>, BTreeMap<String, Vec<usize>>> = BTreeMap::new();
        let mut filters = Vec::new();
        for (i, spanned) in config.file.routes.iter().enumerate() {
            let r: &schema::Route = spanned.get_ref();
            let host = r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase());
            let patterns = match (&r.path, &r.prefix) {
                (Some(p), _) => vec![p.get_ref().clone()],
                (None, Some(p)) => {
                    let base = p.get_ref().trim_end_matches('/');
                    let catch_all = format!("{base}/{{*rest}}");
                    if base.is_empty() {
                        vec!["/".to_owned(), catch_all]
                    } else {
                        // The bare prefix, with a slash, and anything under it (a catch-all
                        // matches one character or more).
                        vec![base.to_owned(), format!("{base}/"), catch_all]
                    }
                }
                (None, None) => Vec::new(),
            };
            for pattern in patterns {
                grouped
                    .entry(host.clone())
                    .or_default()
                    .entry(pattern)
                    .or_default()
                    .push(i);
            }
            filters.push(Filter {
                methods: r
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.get_ref().as_bytes()).ok())
                    .collect(),
                headers: r
                    .headers
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((
                            HeaderName::try_from(n).ok()?,
                            HeaderValue::try_from(v).ok()?,
                        ))
                    })
                    .collect(),
            });
        }
        let mut router = Self {
            hosts: HashMap::new(),
            wildcards: Vec::new(),
            any: Paths::new(),
            filters,
        };
        for (host, patterns) in grouped {
            let mut paths = Paths::new();
            for (pattern, routes) in patterns {
                let first = routes[0];
                paths
                    .router
                    .insert(pattern.as_str(), paths.slots.len())
                    .map_err(|e| {
                        let r = config.file.routes[first].get_ref();
                        let span = r
                            .path
                            .as_ref()
                            .or(r.prefix.as_ref())
                            .map_or(0..0, |p| p.span());
                        config.error_at(span, format!("path {pattern:?}: {e}"))
                    })?;
                paths.slots.push(routes);
            }
            match host {
                None => router.any = paths,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => router.wildcards.push((suffix.to_owned(), paths)),
                    None => {
                        router.hosts.insert(h, paths);
                    }
                },
            }
        }
        router
            .wildcards
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(router)
    }

    /// The route for `req` and its path parameters.
    pub(crate) fn find<B>(&self, req: &Request<B>) -> Result<(usize, RouteParams), Miss> {
        let host = host_of(req);
        let host = host.as_deref();
        let mut miss = Miss::NotFound;
        let levels = host
            .and_then(|h| self.hosts.get(h))
            .into_iter()
            .chain(
                self.wildcards
                    .iter()
                    .filter(|(suffix, _)| {
                        host.is_some_and(|h| h.ends_with(suffix.as_str()) && h.len() > suffix.len())
                    })
                    .map(|(_, p)| p),
            )
            .chain(std::iter::once(&self.any));
        for paths in levels {
            let Ok(found) = paths.router.at(req.uri().path()) else {
                continue;
            };
            for &i in &paths.slots[*found.value] {
                let filter = &self.filters[i];
                if !headers_match(&filter.headers, req.headers()) {
                    continue;
                }
                if !filter.methods.is_empty() && !filter.methods.contains(req.method()) {
                    miss = Miss::MethodNotAllowed;
                    continue;
                }
                let params = RouteParams(
                    found
                        .params
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                );
                return Ok((i, params));
            }
        }
        Err(miss)
    }
}

fn headers_match(wanted: &[(HeaderName, HeaderValue)], headers: &HeaderMap) -> bool {
    wanted
        .iter()
        .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
}

/// The request's host, lowercased, without a port: from the URI (HTTP/2, absolute form) or
/// the `Host` header.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .uri()
        .host()
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())?;
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::RouteParams;

    #[test]
    fn parameters_by_name_and_in_order() {
        let params = RouteParams(vec![
            ("id".into(), "7".into()),
            ("rest".into(), "a/b".into()),
        ]);
        assert_eq!(params.get("id"), Some("7"));
        assert_eq!(params.get("nope"), None);
        assert_eq!(
            params.iter().collect::<Vec<_>>(),
            [("id", "7"), ("rest", "a/b")]
        );
    }
}

#[cfg(test)]
mod host_tests {
    use http::Request;

    use super::host_of;

    #[test]
    fn the_host_without_its_port_in_small_letters() {
        let host =
            |value: &str| host_of(&Request::builder().header("host", value).body(()).unwrap());
        assert_eq!(host("API.Example:8080").as_deref(), Some("api.example"));
        assert_eq!(host("api.example").as_deref(), Some("api.example"));
        assert_eq!(host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(
            host("api.example:x").as_deref(),
            Some("api.example:x"),
            "not a port"
        );
        let absolute = Request::get("http://Other.Example:9/x")
            .header("host", "api.example")
            .body(())
            .unwrap();
        assert_eq!(
            host_of(&absolute).as_deref(),
            Some("other.example"),
            "the target's authority first"
        );
        assert_eq!(host_of(&Request::new(())), None);
    }
}
