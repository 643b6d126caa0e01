//! Which side a request goes to: a closure `Fn(&Req) -> Side`, or for HTTP the method and
//! route ([`HttpClassifier`]).

use std::fmt;

use http::Method;

/// The side of the service a request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// A command: it goes to the write side (an aggregate's `CommandService`).
    Command,
    /// A query: it goes to the read side (the read models).
    Query,
}

/// Decides the side of a request. Implemented by every `Fn(&Req) -> Side` and, for HTTP
/// requests, by [`HttpClassifier`].
pub trait Classify<Req>: Send + Sync + 'static {
    /// The side `req` belongs to.
    fn classify(&self, req: &Req) -> Side;
}

impl<Req, F> Classify<Req> for F
where
    F: Fn(&Req) -> Side + Send + Sync + 'static,
{
    fn classify(&self, req: &Req) -> Side {
        self(req)
    }
}

/// Classifies HTTP requests by method and route.
///
/// Routes added with [`command`](Self::command) and [`query`](Self::query) are checked first,
/// in the order added; a route is a path whose segments are literal or `{param}` (any one
/// segment). Any other request is a query when its method is safe (`GET`, `HEAD`, `OPTIONS`)
/// and a command otherwise.
///
/// ```
/// use http::{Method, Request};
/// use tower_patterns_cqrs::layer::{Classify, HttpClassifier, Side};
///
/// let classify = HttpClassifier::new()
///     .query(Method::POST, "/products/search")          // a POST that only reads
///     .command(Method::GET, "/products/{id}/touch");    // a GET that writes (legacy API)
/// let req = |m: Method, p: &str| Request::builder().method(m).uri(p).body(()).unwrap();
/// assert_eq!(classify.classify(&req(Method::POST, "/products/search")), Side::Query);
/// assert_eq!(classify.classify(&req(Method::POST, "/products/7/price")), Side::Command);
/// assert_eq!(classify.classify(&req(Method::GET, "/products/7/touch")), Side::Command);
/// assert_eq!(classify.classify(&req(Method::GET, "/products/7")), Side::Query);
/// ```
#[derive(Clone, Default)]
pub struct HttpClassifier {
    routes: Vec<Route>,
}

#[derive(Clone)]
struct Route {
    method: Method,
    segments: Vec<Segment>,
    side: Side,
}

#[derive(Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

impl fmt::Debug for HttpClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClassifier")
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl HttpClassifier {
    /// No explicit routes: safe methods are queries, the others commands.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests with `method` on `route` (`/products/{id}/price`) are commands.
    #[must_use]
    pub fn command(self, method: Method, route: &str) -> Self {
        self.route(method, route, Side::Command)
    }

    /// Requests with `method` on `route` are queries.
    #[must_use]
    pub fn query(self, method: Method, route: &str) -> Self {
        self.route(method, route, Side::Query)
    }

    fn route(mut self, method: Method, route: &str, side: Side) -> Self {
        let segments = split(route)
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') {
                    Segment::Param
                } else {
                    Segment::Literal(s.to_owned())
                }
            })
            .collect();
        self.routes.push(Route {
            method,
            segments,
            side,
        });
        self
    }

    /// The side of a request with `method` on `path`.
    pub fn side(&self, method: &Method, path: &str) -> Side {
        for route in &self.routes {
            if route.method == *method && matches(&route.segments, path) {
                return route.side;
            }
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            Side::Query
        } else {
            Side::Command
        }
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn matches(segments: &[Segment], path: &str) -> bool {
    let mut parts = split(path);
    for segment in segments {
        match (segment, parts.next()) {
            (_, None) => return false,
            (Segment::Param, Some(_)) => {}
            (Segment::Literal(l), Some(p)) if l == p => {}
            (Segment::Literal(_), Some(_)) => return false,
        }
    }
    parts.next().is_none()
}

impl<B> Classify<http::Request<B>> for HttpClassifier {
    fn classify(&self, req: &http::Request<B>) -> Side {
        self.side(req.method(), req.uri().path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_routes_win_in_order_and_the_method_decides_the_rest() {
        let c = HttpClassifier::new()
            .query(Method::PUT, "/a/{x}")
            .command(Method::PUT, "/a/b");
        assert_eq!(c.side(&Method::PUT, "/a/b"), Side::Query); // first added wins
        assert_eq!(c.side(&Method::PUT, "/a/b/c"), Side::Command); // longer: no match
        assert_eq!(c.side(&Method::PUT, "/a"), Side::Command); // shorter: no match
        assert_eq!(c.side(&Method::PUT, "/a//b/"), Side::Query); // empty segments ignored
        assert_eq!(c.side(&Method::PATCH, "/a/b"), Side::Command);
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert_eq!(c.side(&m, "/a/b"), Side::Query);
        }
        for m in [Method::POST, Method::DELETE, Method::PATCH, Method::TRACE] {
            assert_eq!(c.side(&m, "/x"), Side::Command);
        }
        let lit = HttpClassifier::new().command(Method::GET, "/p/{id}/touch");
        assert_eq!(lit.side(&Method::GET, "/p/1/touch"), Side::Command);
        assert_eq!(lit.side(&Method::GET, "/p/1/other"), Side::Query);
        assert_eq!(lit.side(&Method::GET, "/q/1/touch"), Side::Query);
        assert!(format!("{lit:?}").contains("routes: 1"));
        // A parameter is a whole `{...}` segment: a brace on one side only is a literal.
        let half = HttpClassifier::new()
            .query(Method::POST, "/p/{id")
            .query(Method::POST, "/q/id}");
        assert_eq!(half.side(&Method::POST, "/p/{id"), Side::Query);
        assert_eq!(half.side(&Method::POST, "/p/7"), Side::Command);
        assert_eq!(half.side(&Method::POST, "/q/7"), Side::Command);
    }
}
