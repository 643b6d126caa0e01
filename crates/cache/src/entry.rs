//! A cached value with its times: when it was stored, until when it is fresh, until when it may
//! still be served stale, and how long it took to load (for early refresh).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

/// How an entry stands at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Within its time to live: served as a hit.
    Fresh,
    /// Past its time to live but within its grace (stale-while-revalidate or stale-if-error):
    /// served only as the layer's staleness rules allow.
    Stale,
    /// Past its grace: never served.
    Expired,
}

/// A cached value and its times.
///
/// Times are [`tokio::time::Instant`]s, so tests pause and advance them; a store that leaves the
/// process (Redis) converts them to wall-clock milliseconds and back.
#[derive(Clone, Debug)]
pub struct Entry<V> {
    pub(crate) value: V,
    pub(crate) stored_at: Instant,
    pub(crate) fresh_until: Instant,
    pub(crate) stale_until: Instant,
    pub(crate) load_time: Duration,
    pub(crate) negative: bool,
    pub(crate) tags: Option<Arc<[Box<str>]>>,
}

impl<V> Entry<V> {
    /// An entry stored at `stored_at`, fresh for `ttl`, then servable stale for `grace`.
    pub fn new(value: V, stored_at: Instant, ttl: Duration, grace: Duration) -> Self {
        let fresh_until = stored_at + ttl;
        Self {
            value,
            stored_at,
            fresh_until,
            stale_until: fresh_until + grace,
            load_time: Duration::ZERO,
            negative: false,
            tags: None,
        }
    }

    /// Records how long the value took to load (XFetch's δ).
    #[must_use]
    pub fn with_load_time(mut self, load_time: Duration) -> Self {
        self.load_time = load_time;
        self
    }

    /// Marks the entry as a cached "not found".
    #[must_use]
    pub fn negative(mut self, negative: bool) -> Self {
        self.negative = negative;
        self
    }

    /// Attaches tags, for invalidation by tag.
    #[must_use]
    pub fn with_tags(mut self, tags: Vec<Box<str>>) -> Self {
        self.tags = (!tags.is_empty()).then(|| tags.into());
        self
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// Takes the value out.
    pub fn into_value(self) -> V {
        self.value
    }

    /// When the value was loaded.
    pub fn stored_at(&self) -> Instant {
        self.stored_at
    }

    /// The end of its time to live.
    pub fn fresh_until(&self) -> Instant {
        self.fresh_until
    }

    /// The last moment it may be served, stale.
    pub fn stale_until(&self) -> Instant {
        self.stale_until
    }

    /// How long the load took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Whether this is a cached "not found".
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Its tags.
    pub fn tags(&self) -> &[Box<str>] {
        self.tags.as_deref().unwrap_or(&[])
    }

    /// How it stands at `now`.
    pub fn freshness(&self, now: Instant) -> Freshness {
        if now < self.fresh_until {
            Freshness::Fresh
        } else if now < self.stale_until {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// How long a store must keep it: until it can no longer be served.
    pub fn lifetime(&self, now: Instant) -> Duration {
        self.stale_until.saturating_duration_since(now)
    }

    /// Its age at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// Whether XFetch (Vattani et al., "Optimal probabilistic cache stampede prevention") says
    /// to refresh now, given `beta` and a uniform draw `u` in (0, 1]: true when
    /// `now + load_time · beta · (−ln u) ≥ fresh_until`. A larger `beta` refreshes earlier; 0
    /// never refreshes early.
    pub fn xfetch(&self, now: Instant, beta: f64, u: f64) -> bool {
        if beta <= 0.0 || self.load_time.is_zero() {
            return false;
        }
        let ahead = self.load_time.as_secs_f64() * beta * -u.max(f64::MIN_POSITIVE).ln();
        // Saturate: a huge `ahead` means "refresh now".
        match Duration::try_from_secs_f64(ahead) {
            Ok(ahead) => now.checked_add(ahead).is_none_or(|t| t >= self.fresh_until),
            Err(_) => true,
        }
    }

    /// Whether XFetch could say "refresh" at `now` for any draw: false while the entry is
    /// further from expiry than the largest lead a draw can give (`−ln u` is at most about 37
    /// for a 53-bit `u`), so hits far from expiry need no draw at all.
    pub fn xfetch_possible(&self, now: Instant, beta: f64) -> bool {
        if beta <= 0.0 || self.load_time.is_zero() {
            return false;
        }
        let lead = self.load_time.as_secs_f64() * beta * 37.0;
        Duration::try_from_secs_f64(lead).map_or(true, |lead| {
            now.checked_add(lead).is_none_or(|t| t >= self.fresh_until)
        })
    }

    /// Maps the value, keeping the times.
    pub fn map<W>(self, f: impl FnOnce(V) -> W) -> Entry<W> {
        Entry {
            value: f(self.value),
            stored_at: self.stored_at,
            fresh_until: self.fresh_until,
            stale_until: self.stale_until,
            load_time: self.load_time,
            negative: self.negative,
            tags: self.tags,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_ttl_and_grace() {
        let t0 = Instant::now();
        let e = Entry::new(1, t0, Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(e.freshness(t0), Freshness::Fresh);
        assert_eq!(e.freshness(t0 + Duration::from_secs(10)), Freshness::Stale);
        assert_eq!(
            e.freshness(t0 + Duration::from_secs(15)),
            Freshness::Expired
        );
        assert_eq!(e.lifetime(t0), Duration::from_secs(15));
        assert_eq!(e.age(t0 + Duration::from_secs(3)), Duration::from_secs(3));
    }

    #[test]
    fn xfetch_refreshes_earlier_as_expiry_nears() {
        let t0 = Instant::now();
        let e = Entry::new(1, t0, Duration::from_secs(10), Duration::ZERO)
            .with_load_time(Duration::from_secs(1));
        // u = e^-1: ahead = 1 s · beta.
        let u = (-1.0f64).exp();
        assert!(!e.xfetch(t0, 1.0, u));
        assert!(!e.xfetch(t0 + Duration::from_millis(8_900), 1.0, u));
        assert!(e.xfetch(t0 + Duration::from_millis(9_000), 1.0, u));
        assert!(e.xfetch(t0 + Duration::from_millis(8_000), 2.0, u));
        assert!(!e.xfetch(t0 + Duration::from_millis(9_999), 0.0, u));
        // u near 0 means "refresh now", without overflow.
        assert!(e.xfetch(t0, 1e300, 0.0));
    }

    #[test]
    fn no_draw_is_needed_far_from_expiry() {
        let t0 = Instant::now();
        let e = Entry::new(1, t0, Duration::from_secs(100), Duration::ZERO)
            .with_load_time(Duration::from_secs(1));
        assert!(
            !e.xfetch_possible(t0, 1.0),
            "37 s of lead at most, 100 s to go"
        );
        assert!(e.xfetch_possible(t0 + Duration::from_secs(64), 1.0));
        // Whenever a draw could refresh, xfetch_possible says so.
        for ms in (0..100_000).step_by(997) {
            let now = t0 + Duration::from_millis(ms);
            let smallest_u = 1.0 / (1u64 << 53) as f64;
            if e.xfetch(now, 1.0, smallest_u) {
                assert!(e.xfetch_possible(now, 1.0), "{ms} ms");
            }
        }
    }
}
