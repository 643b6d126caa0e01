//! The sticky key: which side of a split a caller lands on.
//!
//! A split sends a caller to the new side when the bucket of its key (0 to 9,999, from the
//! XXH3-64 hash of the key's bytes seeded by the migration's salt) is below the share in basis
//! points. The bucket of a key never changes while the salt stays, so a caller stays on its side
//! across requests, processes and restarts; and raising the share only adds buckets, so going
//! from 10% to 25% moves callers onto the new side and none back.
//!
//! The key is a [`StickyKey`]: core's extractors, read without copying the key: a header
//! ([`HeaderKey`], for a user id a trusted proxy or the gateway sets; exactly one non-empty
//! value, any bytes), a value in the extensions ([`ExtensionKey<TenantId>`](ExtensionKey) for
//! the tenant, or any type that gives its bytes, [`KeyBytes`]) or a closure ([`key_fn`]); any
//! other [`KeyExtractor`] whose key gives its bytes goes in [`Extracted`]. A request without a
//! key goes to the legacy side.
//!
//! [`key_fn`]: tower_patterns_core::key::key_fn
//!
//! ```
//! use tower_patterns_strangler::{key::bucket, key::Salt, Share};
//!
//! let salt = Salt::new("users");
//! let b = bucket(salt, b"user-42");
//! assert!(b < 10_000);
//! assert_eq!(b, bucket(salt, b"user-42"));
//! // Monotone: once on the new side at 10%, on the new side at 25%.
//! if Share::percent(10).unwrap().takes(b) {
//!     assert!(Share::percent(25).unwrap().takes(b));
//! }
//! ```

use std::{borrow::Cow, sync::Arc};

use http::Request;
use tower_patterns_core::{
    KeyError, KeyExtractor,
    key::{AsciiKey, ExtensionKey, HeaderKey, KeyFn},
    tenant::TenantId,
};

/// The hash seed of a migration's buckets, from its salt (by default its name). Changing the salt
/// reshuffles every caller; give two migrations the same salt to split the same callers the
/// same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Salt(u64);

impl Salt {
    /// The salt of the text `salt`.
    pub fn new(salt: &str) -> Self {
        Self(twox_hash::XxHash3_64::oneshot_with_seed(
            0x5354_5241_4e47_4c45,
            salt.as_bytes(),
        ))
    }
}

/// The bucket (0 to 9,999) of `key` under `salt`: XXH3-64 of the key, scaled by a
/// multiply-shift so every bucket is as likely as any other.
#[inline]
pub fn bucket(salt: Salt, key: &[u8]) -> u16 {
    let h = twox_hash::XxHash3_64::oneshot_with_seed(salt.0, key);
    // (h * 10_000) / 2^64 is below 10_000 for every h.
    ((u128::from(h) * 10_000) >> 64) as u16
}

/// Where a split finds a request's caller: the bucket of its key, or `None` without one.
pub trait StickyKey<Req> {
    /// The bucket (0 to 9,999) of the request's key under `salt`, or `None` when the request
    /// has no key.
    fn bucket(&self, req: &Req, salt: Salt) -> Option<u16>;
}

/// A header's one non-empty value, read in place (two values are no key).
impl<B> StickyKey<Request<B>> for HeaderKey {
    #[inline]
    fn bucket(&self, req: &Request<B>, salt: Salt) -> Option<u16> {
        let mut values = req.headers().get_all(self.header_name()).iter();
        let value = values.next()?;
        if value.is_empty() || values.next().is_some() {
            return None;
        }
        Some(bucket(salt, value.as_bytes()))
    }
}

/// A value an earlier layer put in the extensions, read in place.
impl<B, T> StickyKey<Request<B>> for ExtensionKey<T>
where
    T: KeyBytes + Send + Sync + 'static,
{
    #[inline]
    fn bucket(&self, req: &Request<B>, salt: Salt) -> Option<u16> {
        let key = req.extensions().get::<T>()?;
        Some(bucket(salt, &key.key_bytes()))
    }
}

/// A closure's key.
impl<F, Req, K> StickyKey<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Result<K, KeyError>,
    K: KeyBytes,
{
    #[inline]
    fn bucket(&self, req: &Req, salt: Salt) -> Option<u16> {
        let key = self.extract(req).ok()?;
        Some(bucket(salt, &key.key_bytes()))
    }
}

/// Any other key extractor whose key gives its bytes.
///
/// ```
/// use tower_patterns_core::key::PathKey;
/// use tower_patterns_strangler::key::{Extracted, Salt, StickyKey};
///
/// let key = Extracted(PathKey::segment(1));
/// let req = http::Request::get("/accounts/42").body(()).unwrap();
/// assert!(key.bucket(&req, Salt::new("accounts")).is_some());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Extracted<K>(pub K);

impl<K, Req> StickyKey<Req> for Extracted<K>
where
    K: KeyExtractor<Req>,
    K::Key: KeyBytes,
{
    #[inline]
    fn bucket(&self, req: &Req, salt: Salt) -> Option<u16> {
        let key = self.0.extract(req).ok()?;
        Some(bucket(salt, &key.key_bytes()))
    }
}

/// A key that gives the bytes its bucket is computed from.
pub trait KeyBytes {
    /// The key's bytes.
    fn key_bytes(&self) -> Cow<'_, [u8]>;
}

impl KeyBytes for AsciiKey {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_str().as_bytes())
    }
}

impl KeyBytes for TenantId {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_str().as_bytes())
    }
}

impl KeyBytes for String {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl KeyBytes for &str {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl KeyBytes for Arc<str> {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl KeyBytes for Vec<u8> {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl KeyBytes for http::HeaderValue {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl KeyBytes for u64 {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.to_le_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Share;

    #[test]
    fn buckets_are_uniform() {
        // 100,000 keys in 100 ranges of 100 buckets: each range within 15% of its 1,000.
        let salt = Salt::new("uniform");
        let mut ranges = [0u32; 100];
        for i in 0..100_000u32 {
            let b = bucket(salt, format!("user-{i}").as_bytes());
            assert!(b < 10_000);
            ranges[usize::from(b / 100)] += 1;
        }
        for (i, n) in ranges.iter().enumerate() {
            assert!((850..=1150).contains(n), "range {i}: {n}");
        }
    }

    #[test]
    fn raising_the_share_only_moves_callers_to_the_new_side() {
        let salt = Salt::new("monotone");
        let (ten, quarter) = (Share::percent(10).unwrap(), Share::percent(25).unwrap());
        let (mut at_ten, mut at_quarter) = (0, 0);
        for i in 0..10_000u32 {
            let b = bucket(salt, &i.to_le_bytes());
            if ten.takes(b) {
                at_ten += 1;
                assert!(quarter.takes(b), "key {i} left the new side");
            }
            at_quarter += usize::from(quarter.takes(b));
        }
        assert!((900..=1100).contains(&at_ten), "{at_ten}");
        assert!((2300..=2700).contains(&at_quarter), "{at_quarter}");
    }

    #[test]
    fn salts_reshuffle() {
        let (a, b) = (Salt::new("a"), Salt::new("b"));
        let same = (0..1000u32)
            .filter(|i| {
                let k = i.to_le_bytes();
                (bucket(a, &k) < 5000) == (bucket(b, &k) < 5000)
            })
            .count();
        assert!((400..=600).contains(&same), "{same}");
        assert_eq!(Salt::new("a"), Salt::new("a"));
    }

    #[test]
    fn every_key_gives_its_bytes() {
        let bytes = |k: &dyn KeyBytes| k.key_bytes().into_owned();
        assert_eq!(
            bytes(&AsciiKey::from_bytes(b"user-1", 64).unwrap()),
            b"user-1"
        );
        assert_eq!(bytes(&TenantId::new("acme").unwrap()), b"acme");
        assert_eq!(bytes(&String::from("s")), b"s");
        assert_eq!(bytes(&"str"), b"str");
        assert_eq!(bytes(&Arc::<str>::from("arc")), b"arc");
        assert_eq!(bytes(&vec![1u8, 2]), [1, 2]);
        assert_eq!(bytes(&http::HeaderValue::from_static("hv")), b"hv");
        assert_eq!(bytes(&0x0102u64), [2, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn sticky_keys_read_their_key_in_place_and_two_header_values_are_none() {
        use tower_patterns_core::key::{ExtensionKey, HeaderKey, PathKey, key_fn};
        let salt = Salt::new("keys");
        let header = HeaderKey::new(http::HeaderName::from_static("x-user"));
        let req = |values: &[&str]| {
            let mut b = Request::get("/accounts/42");
            for v in values {
                b = b.header("x-user", *v);
            }
            b.body(()).unwrap()
        };
        assert_eq!(
            header.bucket(&req(&["u1"]), salt),
            Some(bucket(salt, b"u1"))
        );
        assert_eq!(header.bucket(&req(&[]), salt), None);
        assert_eq!(header.bucket(&req(&[""]), salt), None);
        assert_eq!(header.bucket(&req(&["u1", "u2"]), salt), None);
        let mut with_tenant = req(&[]);
        with_tenant
            .extensions_mut()
            .insert(TenantId::new("acme").unwrap());
        let tenant = ExtensionKey::<TenantId>::new();
        assert_eq!(
            tenant.bucket(&with_tenant, salt),
            Some(bucket(salt, b"acme"))
        );
        assert_eq!(tenant.bucket(&req(&[]), salt), None);
        let path = key_fn(|r: &Request<()>| Ok::<_, KeyError>(r.uri().path().to_owned()));
        assert_eq!(
            path.bucket(&req(&[]), salt),
            Some(bucket(salt, b"/accounts/42"))
        );
        let failing = key_fn(|_: &Request<()>| Err::<String, _>(KeyError::missing("user")));
        assert_eq!(failing.bucket(&req(&[]), salt), None);
        let segment = Extracted(PathKey::segment(1));
        assert_eq!(segment.bucket(&req(&[]), salt), Some(bucket(salt, b"42")));
        assert_eq!(Extracted(PathKey::segment(5)).bucket(&req(&[]), salt), None);
    }

    #[test]
    fn bucket_values_are_fixed_forever() {
        // Changing the hash or the scaling would move every caller of a running migration.
        let pinned: Vec<u16> = ["a", "b", "user-1"]
            .iter()
            .map(|k| bucket(Salt::new("pin"), k.as_bytes()))
            .collect();
        assert_eq!(
            pinned,
            vec![8104, 3189, 5575],
            "change only with a migration note"
        );
    }
}
