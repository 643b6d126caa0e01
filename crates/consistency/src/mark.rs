//! How far a write reached, and how far a read side has come: a [`Mark`].

use std::{cmp::Ordering, fmt};

use tower_patterns_eventstore::GlobalPosition;

/// A position in PostgreSQL's write-ahead log (a `pg_lsn`), as a plain number.
///
/// PostgreSQL writes it as two hexadecimal halves, `16/B374D848`; [`Lsn::parse`] reads that
/// form and [`Display`](fmt::Display) writes it.
///
/// ```
/// use tower_patterns_consistency::Lsn;
///
/// let lsn = Lsn::parse("16/B374D848").unwrap();
/// assert_eq!(lsn, Lsn(0x16_B374_D848));
/// assert_eq!(lsn.to_string(), "16/B374D848");
/// assert!(Lsn::parse("16B374D848").is_none());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Reads PostgreSQL's text form, `XXXXXXXX/XXXXXXXX` (one to eight hex digits each side);
    /// `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (hi, lo) = text.split_once('/')?;
        let half = |s: &str| {
            (!s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        };
        Some(Self((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }

    /// Bytes from `earlier` to `self` (zero when `earlier` is not earlier).
    pub const fn bytes_after(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// What a token says a read side must have reached: an event store's global position (for CQRS
/// read models) or a WAL position (for PostgreSQL replicas).
///
/// Marks of one kind are ordered; marks of different kinds are not comparable
/// (`partial_cmp` is `None`), and a read side refuses a token of the other kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mark {
    /// A global position in the event store: read models must have applied it.
    Position(GlobalPosition),
    /// A WAL position of the PostgreSQL primary: a replica must have replayed it.
    Lsn(Lsn),
}

/// The kind of a [`Mark`]: what a read side follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MarkKind {
    /// Event store positions (CQRS read models).
    Position,
    /// WAL positions (PostgreSQL streaming replicas).
    Lsn,
}

impl MarkKind {
    /// `"position"` or `"lsn"`, for reports and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Position => "position",
            Self::Lsn => "lsn",
        }
    }
}

impl Mark {
    /// The mark's kind.
    pub const fn kind(self) -> MarkKind {
        match self {
            Self::Position(_) => MarkKind::Position,
            Self::Lsn(_) => MarkKind::Lsn,
        }
    }

    /// The WAL position, for a mark of that kind.
    pub const fn lsn(self) -> Option<Lsn> {
        match self {
            Self::Lsn(lsn) => Some(lsn),
            Self::Position(_) => None,
        }
    }

    /// How far `self` is behind `wanted` (`None` when it is not behind, or the kinds differ):
    /// events by global sequence number, or WAL bytes.
    pub fn distance_to(self, wanted: Self) -> Option<Distance> {
        match (self, wanted) {
            (Self::Position(s), Self::Position(w)) if w > s => {
                Some(Distance::Events(w.index.saturating_sub(s.index)))
            }
            (Self::Lsn(s), Self::Lsn(w)) if w > s => Some(Distance::WalBytes(w.bytes_after(s))),
            _ => None,
        }
    }

    /// The later of two marks of one kind; `self` when the kinds differ.
    #[must_use]
    pub fn max_with(self, other: Self) -> Self {
        match self.partial_cmp(&other) {
            Some(Ordering::Less) => other,
            _ => self,
        }
    }
}

impl PartialOrd for Mark {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Self::Position(a), Self::Position(b)) => Some(a.cmp(b)),
            (Self::Lsn(a), Self::Lsn(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

impl From<GlobalPosition> for Mark {
    fn from(position: GlobalPosition) -> Self {
        Self::Position(position)
    }
}

impl From<Lsn> for Mark {
    fn from(lsn: Lsn) -> Self {
        Self::Lsn(lsn)
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Position(p) => write!(f, "position {}.{}", p.commit, p.index),
            Self::Lsn(l) => write!(f, "lsn {l}"),
        }
    }
}

/// How far a read side is behind a mark, for the stale marker header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distance {
    /// Events the read model has not applied yet (by global sequence number; an estimate when
    /// appends commit out of order).
    Events(u64),
    /// WAL bytes the replica has not replayed yet.
    WalBytes(u64),
}

impl fmt::Display for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Events(n) => write!(f, "events={n}"),
            Self::WalBytes(n) => write!(f, "wal-bytes={n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips_and_rejects_other_forms() {
        for v in [0, 1, 0xffff_ffff, 0x1_0000_0000, u64::MAX, 0x16_B374_D848] {
            assert_eq!(Lsn::parse(&Lsn(v).to_string()), Some(Lsn(v)));
        }
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0/123456789",
            "g/0",
            "0/0/0",
            " 0/0",
            "-1/0",
        ] {
            assert_eq!(Lsn::parse(bad), None, "{bad}");
        }
        assert_eq!(Lsn(10).bytes_after(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_after(Lsn(10)), 0);
    }

    #[test]
    fn marks_order_within_a_kind_only() {
        let p = |i| Mark::Position(GlobalPosition::new(0, i));
        assert!(p(1) < p(2));
        assert_eq!(p(1).max_with(p(2)), p(2));
        assert_eq!(p(3).max_with(p(2)), p(3));
        let l = Mark::Lsn(Lsn(5));
        assert_eq!(p(1).partial_cmp(&l), None);
        assert_eq!(p(1).max_with(l), p(1));
        assert_eq!(Distance::Events(3).to_string(), "events=3");
        assert_eq!(Distance::WalBytes(9).to_string(), "wal-bytes=9");
    }
}
