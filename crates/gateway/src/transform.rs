//! Request and response transforms of a route: headers added, set, removed and renamed; the
//! path's prefix stripped or the path rewritten from a template with the route's parameters.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, uri::PathAndQuery};

use crate::{config::schema, route::RouteParams};

/// Header rules, applied in the order remove, rename, set, add.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeaderOps {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(HeaderName, HeaderValue)> {
    map.iter()
        .filter_map(|(n, v)| {
            Some((
                HeaderName::try_from(n).ok()?,
                HeaderValue::try_from(v).ok()?,
            ))
        })
        .collect()
}

impl HeaderOps {
    fn new(
        add: &BTreeMap<String, String>,
        set: &BTreeMap<String, String>,
        remove: &[String],
        rename: &BTreeMap<String, String>,
    ) -> Self {
        Self {
            remove: remove
                .iter()
                .filter_map(|n| HeaderName::try_from(n).ok())
                .collect(),
            rename: rename
                .iter()
                .filter_map(|(a, b)| {
                    Some((HeaderName::try_from(a).ok()?, HeaderName::try_from(b).ok()?))
                })
                .collect(),
            set: pairs(set),
            add: pairs(add),
        }
    }

    pub(crate) fn for_response(rules: &schema::HeaderRules) -> Self {
        Self::new(
            &rules.add_headers,
            &rules.set_headers,
            &rules.remove_headers,
            &rules.rename_headers,
        )
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        for name in &self.remove {
            headers.remove(name);
        }
        for (from, to) in &self.rename {
            let values: Vec<HeaderValue> = match headers.entry(from) {
                http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
                http::header::Entry::Vacant(_) => continue,
            };
            headers.remove(to);
            for v in values {
                headers.append(to, v);
            }
        }
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
    }
}

/// A route's request rules.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestTransform {
    strip_prefix: Option<String>,
    rewrite: Option<Vec<Piece>>,
    headers: HeaderOps,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Param(String),
}

fn template(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let name = rest[open + 1..open + close].trim_start_matches('*');
        pieces.push(Piece::Param(name.to_owned()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    pieces
}

/// `template` with the route's parameters filled in (a missing one is left empty).
pub(crate) fn fill(template_text: &str, params: &RouteParams) -> String {
    render(&template(template_text), params)
}

fn render(pieces: &[Piece], params: &RouteParams) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Param(p) => encode_into(&mut out, params.get(p).unwrap_or_default()),
        }
    }
    out
}

/// Appends a parameter's value, percent-encoding every byte but the unreserved ones, `/` (a
/// catch-all's segments) and `%` (escapes the client already made): a value cannot add a
/// query parameter or a segment to the template it fills (`7&admin=1` becomes
/// `7%26admin%3D1`).
fn encode_into(out: &mut String, value: &str) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/' | b'%') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(byte & 0xf)]));
        }
    }
}

impl RequestTransform {
    pub(crate) fn new(rules: &schema::RequestRules) -> Self {
        Self {
            strip_prefix: rules
                .strip_prefix
                .as_ref()
                .map(|p| p.get_ref().trim_end_matches('/').to_owned()),
            rewrite: rules.rewrite.as_ref().map(|t| template(t.get_ref())),
            headers: HeaderOps::new(
                &rules.add_headers,
                &rules.set_headers,
                &rules.remove_headers,
                &rules.rename_headers,
            ),
        }
    }

    pub(crate) fn apply<B>(&self, req: &mut Request<B>) {
        self.headers.apply(req.headers_mut());
        if self.strip_prefix.is_none() && self.rewrite.is_none() {
            return;
        }
        let path = req.uri().path();
        let query = req.uri().query();
        let new_path = if let Some(pieces) = &self.rewrite {
            let params = req
                .extensions()
                .get::<RouteParams>()
                .cloned()
                .unwrap_or_default();
            render(pieces, &params)
        } else {
            let prefix = self.strip_prefix.as_deref().unwrap_or_default();
            match path.strip_prefix(prefix) {
                Some("") => "/".to_owned(),
                Some(rest) if rest.starts_with('/') => rest.to_owned(),
                _ => path.to_owned(),
            }
        };
        let with_query = match query {
            Some(q) if new_path.contains('?') => format!("{new_path}&{q}"),
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        if let Ok(pq) = PathAndQuery::try_from(with_query) {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> schema::RequestRules {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn rewrites_strips_and_edits_headers() {
        let t = RequestTransform::new(&rules(
            "rewrite = \"/v2/users/{id}/x\"\nadd_headers = { x-gw = \"edge\" }\nremove_headers = [\"cookie\"]\nrename_headers = { x-old = \"x-new\" }",
        ));
        let mut req = Request::builder()
            .uri("/users/42?full=1")
            .header("cookie", "a")
            .header("x-old", "1")
            .header("x-old", "2")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(RouteParams(vec![("id".into(), "42".into())]));
        t.apply(&mut req);
        assert_eq!(req.uri(), "/v2/users/42/x?full=1");
        assert!(req.headers().get("cookie").is_none());
        assert_eq!(req.headers()["x-gw"], "edge");
        let renamed: Vec<_> = req.headers().get_all("x-new").iter().collect();
        assert_eq!(renamed, ["1", "2"]);
        assert!(req.headers().get("x-old").is_none());

        let strip = RequestTransform::new(&rules("strip_prefix = \"/api/\""));
        for (from, to) in [
            ("/api/users", "/users"),
            ("/api", "/"),
            ("/apix", "/apix"),
            ("/other", "/other"),
        ] {
            let mut req = Request::builder().uri(from).body(()).unwrap();
            strip.apply(&mut req);
            assert_eq!(req.uri(), to, "{from}");
        }
        assert_eq!(
            fill(
                "/orders?user={id}",
                &RouteParams(vec![("id".into(), "7".into())])
            ),
            "/orders?user=7"
        );
        assert_eq!(
            fill(
                "/files/{*rest}",
                &RouteParams(vec![("rest".into(), "a/b".into())])
            ),
            "/files/a/b"
        );
        let injected = RouteParams(vec![("id".into(), "7&admin=1#x?y é".into())]);
        assert_eq!(
            fill("/orders?user={id}", &injected),
            "/orders?user=7%26admin%3D1%23x%3Fy%20%C3%A9"
        );
        let with_query = RequestTransform::new(&rules("rewrite = \"/search?v=2\""));
        let mut req = Request::builder().uri("/s?q=a").body(()).unwrap();
        with_query.apply(&mut req);
        assert_eq!(req.uri(), "/search?v=2&q=a");
    }
}
