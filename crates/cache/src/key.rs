//! Cache keys scoped by tenant, and where the tenant comes from.

use std::{
    fmt,
    hash::{Hash, Hasher},
};

use tower_patterns_core::tenant::TenantId;

/// A key as stored: the extracted key and the tenant it belongs to, if any.
///
/// Two tenants' keys never compare equal, so one tenant cannot read another's entry even
/// when their requests produce the same key. Rendered as text (Redis keys, prefix
/// invalidation) it is `<tenant>:<key>`, or `-:<key>` with no tenant: a tenant id never starts
/// with `-` nor contains `:`, so the rendering is unambiguous.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScopedKey<K> {
    tenant: Option<TenantId>,
    key: K,
}

impl<K> ScopedKey<K> {
    /// `key` within `tenant`'s scope (or the shared scope when `None`).
    pub const fn new(tenant: Option<TenantId>, key: K) -> Self {
        Self { tenant, key }
    }

    /// The tenant, if the key is tenant-scoped.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// The extracted key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Whether the key is in `tenant`'s scope (`None`: the shared scope).
    pub fn in_scope(&self, tenant: Option<&TenantId>) -> bool {
        self.tenant.as_ref() == tenant
    }
}

// By hand: an unscoped key hashes as its key alone (the derived impl would also hash the
// `Option`'s discriminant, a second SipHash write on every hit). Scoped and unscoped keys that
// hash alike still compare unequal.
impl<K: Hash> Hash for ScopedKey<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if let Some(t) = &self.tenant {
            t.hash(state);
        }
        self.key.hash(state);
    }
}

impl<K: fmt::Display> ScopedKey<K> {
    /// Whether the key's text starts with `prefix`, within the given scope.
    pub fn has_prefix(&self, tenant: Option<&TenantId>, prefix: &str) -> bool {
        use fmt::Write;
        struct StartsWith<'a> {
            rest: &'a str,
            ok: bool,
        }
        impl fmt::Write for StartsWith<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                if self.rest.is_empty() {
                    return Err(fmt::Error); // decided: stop formatting
                }
                let n = s.len().min(self.rest.len());
                if s.as_bytes()[..n] != self.rest.as_bytes()[..n] {
                    self.ok = false;
                    return Err(fmt::Error);
                }
                self.rest = &self.rest[n..];
                Ok(())
            }
        }
        if !self.in_scope(tenant) {
            return false;
        }
        let mut w = StartsWith {
            rest: prefix,
            ok: true,
        };
        let _ = write!(w, "{}", self.key);
        w.ok && w.rest.is_empty()
    }
}

impl<K: fmt::Display> fmt::Display for ScopedKey<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant {
            Some(t) => write!(f, "{t}:{}", self.key),
            None => write!(f, "-:{}", self.key),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for ScopedKey<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant {
            Some(t) => write!(f, "{t}:{:?}", self.key),
            None => write!(f, "-:{:?}", self.key),
        }
    }
}

/// Where a request's tenant comes from, for scoping its cache key.
pub trait Scope<Req> {
    /// The tenant `req` belongs to, or `None` for the shared scope.
    fn tenant(&self, req: &Req) -> Option<TenantId>;
}

/// The tenant an earlier layer put in an HTTP request's extensions (the default for
/// `http::Request`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FromExtensions;

impl<B> Scope<http::Request<B>> for FromExtensions {
    fn tenant(&self, req: &http::Request<B>) -> Option<TenantId> {
        TenantId::of(req).cloned()
    }
}

/// No tenant: every request shares one scope. For services with no tenants.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unscoped;

impl<Req> Scope<Req> for Unscoped {
    fn tenant(&self, _: &Req) -> Option<TenantId> {
        None
    }
}

/// A scope from a closure, for requests that carry their tenant in their own way.
#[derive(Clone, Copy)]
pub struct ScopeFn<F>(pub F);

impl<F> fmt::Debug for ScopeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScopeFn")
    }
}

impl<Req, F: Fn(&Req) -> Option<TenantId>> Scope<Req> for ScopeFn<F> {
    fn tenant(&self, req: &Req) -> Option<TenantId> {
        (self.0)(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_never_share_keys() {
        let a = TenantId::new("a").unwrap();
        let b = TenantId::new("b").unwrap();
        assert_ne!(
            ScopedKey::new(Some(a.clone()), "k"),
            ScopedKey::new(Some(b), "k")
        );
        assert_ne!(
            ScopedKey::new(Some(a.clone()), "k"),
            ScopedKey::new(None, "k")
        );
        assert_eq!(ScopedKey::new(Some(a.clone()), "k").to_string(), "a:k");
        assert_eq!(ScopedKey::new(None, "a:k").to_string(), "-:a:k");
    }

    #[test]
    fn prefixes_match_within_a_scope() {
        let a = TenantId::new("a").unwrap();
        let k = ScopedKey::new(Some(a.clone()), "user/42/profile");
        assert!(k.has_prefix(Some(&a), "user/42"));
        assert!(k.has_prefix(Some(&a), ""));
        assert!(k.has_prefix(Some(&a), "user/42/profile"));
        assert!(!k.has_prefix(Some(&a), "user/42/profile/x"));
        assert!(!k.has_prefix(Some(&a), "user/43"));
        assert!(!k.has_prefix(None, "user/42"));
        assert!(ScopedKey::new(None, 1234u64).has_prefix(None, "12"));
    }
}
