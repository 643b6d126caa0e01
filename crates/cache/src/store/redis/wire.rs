//! The entry as Redis holds it, and the helpers of the Redis tiers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Entry;

pub(crate) const STORE: &str = "redis";

/// The cache entry as Redis holds it: wall-clock milliseconds instead of instants.
#[derive(Serialize, Deserialize)]
pub(crate) struct Wire<V> {
    v: V,
    /// Stored, fresh until, servable until: Unix milliseconds.
    s: u64,
    f: u64,
    u: u64,
    /// Load time in milliseconds.
    l: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    n: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    t: Vec<Box<str>>,
}

pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn to_unix(at: Instant, now: Instant, unix_now: u64) -> u64 {
    if at >= now {
        unix_now.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        unix_now.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
    }
}

fn from_unix(ms: u64, now: Instant, unix_now: u64) -> Instant {
    if ms >= unix_now {
        now + Duration::from_millis(ms - unix_now)
    } else {
        now.checked_sub(Duration::from_millis(unix_now - ms))
            .unwrap_or(now)
    }
}

impl<V> Wire<V> {
    pub(crate) fn from_entry(e: Entry<V>) -> Self {
        let (now, unix) = (Instant::now(), unix_ms_now());
        Self {
            s: to_unix(e.stored_at, now, unix),
            f: to_unix(e.fresh_until, now, unix),
            u: to_unix(e.stale_until, now, unix),
            l: u64::try_from(e.load_time.as_millis()).unwrap_or(u64::MAX),
            n: e.negative,
            t: e.tags.as_deref().map(<[_]>::to_vec).unwrap_or_default(),
            v: e.value,
        }
    }

    pub(crate) fn into_entry(self) -> Entry<V> {
        let (now, unix) = (Instant::now(), unix_ms_now());
        Entry {
            stored_at: from_unix(self.s, now, unix),
            fresh_until: from_unix(self.f, now, unix),
            stale_until: from_unix(self.u, now, unix),
            load_time: Duration::from_millis(self.l),
            negative: self.n,
            tags: (!self.t.is_empty()).then(|| self.t.into()),
            value: self.v,
        }
    }
}

/// Escapes Redis glob characters, for `SCAN MATCH`.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_round_trips_to_the_same_instants() {
        let now = Instant::now();
        let e = Entry::new(1u8, now, Duration::from_secs(5), Duration::from_secs(2));
        let back = Wire::from_entry(e.clone()).into_entry();
        // Millisecond precision, plus the time between the two clock reads on each side: a
        // busy machine can preempt a thread between them, so the margin is generous; a unit
        // or sign error would be off by seconds.
        let close = |a: Instant, b: Instant| {
            let d = if a > b { a - b } else { b - a };
            d <= Duration::from_millis(50)
        };
        assert!(close(back.fresh_until, e.fresh_until));
        assert!(close(back.stale_until, e.stale_until));
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
