//! Which calls a chaos layer may touch: all of them, those carrying a header, those of some
//! tenants, or whatever a closure says.

use std::{collections::HashSet, sync::Arc};

use http::{HeaderName, HeaderValue};
use tower_patterns_core::tenant::TenantId;

/// Chooses, per request, whether a chaos layer may inject a fault into it. A call that is not
/// selected passes untouched and draws no random number, so selecting does not shift the
/// seeded sequence of the calls that are.
///
/// Implemented by [`Always`], [`Header`], [`Tenants`] and any `Fn(&Req) -> bool`:
///
/// ```
/// use tower_patterns_chaos::Select;
///
/// let odd = |n: &u32| n % 2 == 1;
/// assert!(odd.selects(&3));
/// assert!(!odd.selects(&4));
/// ```
pub trait Select<Req> {
    /// Whether `req` may get a fault.
    fn selects(&self, req: &Req) -> bool;
}

impl<Req, F: Fn(&Req) -> bool> Select<Req> for F {
    fn selects(&self, req: &Req) -> bool {
        self(req)
    }
}

/// Selects every call: the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Always;

impl<Req> Select<Req> for Always {
    fn selects(&self, _: &Req) -> bool {
        true
    }
}

/// Selects the HTTP requests that carry a header, or a header with one value: faults for the
/// test client that asks for them, and nobody else.
///
/// ```
/// use http::{HeaderName, HeaderValue, Request};
/// use tower_patterns_chaos::{Header, Select};
///
/// let present = Header::present(HeaderName::from_static("x-chaos"));
/// let valued = Header::equals(HeaderName::from_static("x-chaos"), HeaderValue::from_static("on"));
/// let req = Request::builder().header("x-chaos", "off").body(()).unwrap();
/// assert!(present.selects(&req));
/// assert!(!valued.selects(&req));
/// assert!(!present.selects(&Request::new(())));
/// ```
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
    value: Option<HeaderValue>,
}

impl Header {
    /// Selects requests that carry `name`, whatever its value.
    pub fn present(name: HeaderName) -> Self {
        Self { name, value: None }
    }

    /// Selects requests whose `name` header is exactly `value`.
    pub fn equals(name: HeaderName, value: HeaderValue) -> Self {
        Self {
            name,
            value: Some(value),
        }
    }
}

impl<B> Select<http::Request<B>> for Header {
    fn selects(&self, req: &http::Request<B>) -> bool {
        let mut values = req.headers().get_all(&self.name).iter();
        match &self.value {
            None => values.next().is_some(),
            Some(wanted) => values.any(|v| v == wanted),
        }
    }
}

/// Selects the HTTP requests of some tenants, read from the [`TenantId`] extension that the
/// tenant layer sets (so the chaos layer goes inside it). A request with no tenant is not
/// selected.
///
/// ```
/// use http::Request;
/// use tower_patterns_chaos::{Select, Tenants};
/// use tower_patterns_core::tenant::TenantId;
///
/// let globex = Tenants::new([TenantId::new("globex").unwrap()]);
/// let mut req = Request::new(());
/// assert!(!globex.selects(&req));
/// req.extensions_mut().insert(TenantId::new("globex").unwrap());
/// assert!(globex.selects(&req));
/// ```
#[derive(Clone, Debug)]
pub struct Tenants {
    ids: Arc<HashSet<TenantId>>,
}

impl Tenants {
    /// Selects the requests of these tenants.
    pub fn new(ids: impl IntoIterator<Item = TenantId>) -> Self {
        Self {
            ids: Arc::new(ids.into_iter().collect()),
        }
    }
}

impl<B> Select<http::Request<B>> for Tenants {
    fn selects(&self, req: &http::Request<B>) -> bool {
        TenantId::of(req).is_some_and(|id| self.ids.contains(id))
    }
}
