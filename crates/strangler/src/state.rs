//! The migration's shared state: routes with their modes, ramps and counts, tenant pins and
//! the override header. One per built layer, shared by its services, its handle and its ramp
//! drivers.

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use http::{HeaderName, Method};

use crate::{
    Ramp, RampEvent, Side,
    key::Salt,
    ramp::{policy::Progress, window::Window},
    table::{Mode, ModeCell, trimmed_prefix_matches},
};

/// A route and what the request path needs of it.
#[derive(Debug)]
pub(crate) struct RouteSlot {
    pub(crate) name: Arc<str>,
    pub(crate) prefix: String,
    /// The prefix without its trailing slashes, as matched.
    pub(crate) matched: Box<str>,
    pub(crate) methods: Option<Vec<Method>>,
    pub(crate) mode: ModeCell,
    pub(crate) ramp: Option<RampSlot>,
    /// Requests by side: legacy, new, shadow.
    pub(crate) counts: [AtomicU64; 3],
}

impl RouteSlot {
    #[inline]
    pub(crate) fn count(&self, side: Side) {
        let i = match side {
            Side::Legacy => 0,
            Side::New => 1,
            Side::Shadow => 2,
        };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A route's ramp: its settings, both sides' windows and its progress.
#[derive(Debug)]
pub(crate) struct RampSlot {
    pub(crate) ramp: Ramp,
    pub(crate) legacy: Window,
    pub(crate) new: Window,
    pub(crate) progress: Mutex<Progress>,
}

/// Tenants pinned to one side.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    pub(crate) new: HashSet<Arc<str>>,
    pub(crate) legacy: HashSet<Arc<str>>,
}

/// The shared state of a migration.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) name: Arc<str>,
    pub(crate) salt: Salt,
    /// Longest prefix first; the last matches every path.
    pub(crate) routes: Box<[RouteSlot]>,
    pub(crate) override_header: Option<HeaderName>,
    pub(crate) pins: ArcSwap<Pins>,
    pub(crate) has_pins: AtomicBool,
    pub(crate) legacy_read_only: AtomicBool,
    pub(crate) events: Mutex<VecDeque<RampEvent>>,
    /// When a malformed override was last logged, in seconds since the table was built.
    pub(crate) bad_override_logged: AtomicU64,
    pub(crate) born: std::time::Instant,
    pub(crate) shadow: Option<Arc<crate::shadow::Mirror>>,
    /// The shadow marker, stripped from every incoming request.
    pub(crate) marker: HeaderName,
    /// Whether the ramps' drivers run.
    pub(crate) drivers: AtomicBool,
}

/// The most ramp events kept.
pub(crate) const EVENTS_KEPT: usize = 256;

impl Table {
    /// The route of a request: the longest prefix that matches its path and method.
    #[inline]
    pub(crate) fn route(&self, method: &Method, path: &str) -> (usize, &RouteSlot) {
        let last = self.routes.len() - 1;
        for (i, route) in self.routes[..last].iter().enumerate() {
            if trimmed_prefix_matches(&route.matched, path)
                && route.methods.as_ref().is_none_or(|m| m.contains(method))
            {
                return (i, route);
            }
        }
        (last, &self.routes[last])
    }

    pub(crate) fn find(&self, name: &str) -> Option<&RouteSlot> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// Whether any tenant is pinned.
    #[inline]
    pub(crate) fn has_pins(&self) -> bool {
        self.has_pins.load(Ordering::Relaxed)
    }

    /// The side a tenant is pinned to, if any.
    #[inline]
    pub(crate) fn pin(&self, tenant: &str) -> Option<Side> {
        if !self.has_pins() {
            return None;
        }
        let pins = self.pins.load();
        if pins.legacy.contains(tenant) {
            Some(Side::Legacy)
        } else if pins.new.contains(tenant) {
            Some(Side::New)
        } else {
            None
        }
    }

    pub(crate) fn set_pins(&self, pins: Pins) {
        self.has_pins.store(
            !pins.new.is_empty() || !pins.legacy.is_empty(),
            Ordering::Relaxed,
        );
        self.pins.store(Arc::new(pins));
    }

    /// Keeps an event, dropping the oldest past [`EVENTS_KEPT`].
    pub(crate) fn keep(&self, event: RampEvent) {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// Whether to log a malformed override now: at most once a second.
    pub(crate) fn log_bad_override_now(&self) -> bool {
        once_a_second(&self.bad_override_logged, self.born.elapsed().as_secs())
    }

    /// Sets a route's mode; the caller handles its ramp.
    pub(crate) fn set_mode(&self, route: &RouteSlot, mode: Mode) -> Mode {
        let before = route.mode.set(mode);
        if before != mode {
            tracing::info!(
                target: "tower_patterns_strangler",
                name = %self.name, route = %route.name, from = %before, to = %mode,
                "migration route changed"
            );
        }
        before
    }
}

/// Whether an event in second `secs` (counted from some start) is the first of its second,
/// `last` holding the last such second plus one (0: none yet).
pub(crate) fn once_a_second(last: &AtomicU64, secs: u64) -> bool {
    let now = secs + 1;
    let before = last.load(Ordering::Relaxed);
    before != now
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_override_is_logged_once_a_second() {
        let last = AtomicU64::new(0);
        assert!(once_a_second(&last, 0), "the first, in second 0");
        assert!(!once_a_second(&last, 0));
        assert!(!once_a_second(&last, 0));
        assert!(once_a_second(&last, 1));
        assert!(!once_a_second(&last, 1));
        assert!(once_a_second(&last, 7));
    }
}
