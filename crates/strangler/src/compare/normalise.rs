//! Normalisers: what makes two different values count as equal at a path.

use std::fmt;
use std::sync::Arc;

use serde_json::{Number, Value};

/// A custom normaliser's function: maps a value (the whole subtree at its path) to the value
/// compared in its place.
pub type NormaliseFn = dyn Fn(&Value) -> Value + Send + Sync;

/// How values at a path are made comparable, given to
/// [`ComparatorBuilder::normalise`](super::ComparatorBuilder::normalise).
///
/// The built-in normalisers apply to every value at or below their path (so
/// `normalise("", Normaliser::Uuid)` ignores which UUIDs a whole body carries, but not where it
/// carries them); a custom one gets the value at exactly its path, on both sides, and the
/// results are compared as any other values.
#[derive(Clone)]
#[non_exhaustive]
pub enum Normaliser {
    /// Any two UUIDs are equal: a string that is a UUID in its hyphenated form
    /// (`67e55044-10b1-426f-9247-bb680e5fe0c8`, any version, either case) compares as
    /// `"<uuid>"`.
    Uuid,
    /// Any two date-times are equal: a string that is an RFC 3339 / ISO 8601 date-time
    /// (`2024-05-01T12:30:00Z`, `2024-05-01 12:30:00.123+02:00`, `2024-05-01T12:30`: a date, `T`
    /// or a space, hours and minutes, optional seconds and fraction, optional `Z` or offset)
    /// compares as `"<timestamp>"`. A date alone, or a number of seconds since the epoch, is
    /// not taken for a timestamp.
    Timestamp,
    /// Numbers are equal when they differ by at most this much (a finite, non-negative
    /// amount), for sums computed in a different order or rounded differently.
    Tolerance(f64),
    /// A function of the value at exactly the path; build it with [`Normaliser::custom`].
    Custom(Arc<NormaliseFn>),
}

impl Normaliser {
    /// A normaliser that maps the value at its path through `f` on both sides before they are
    /// compared: sort an array whose order means nothing, drop a field, round a price.
    ///
    /// ```
    /// use serde_json::Value;
    /// use tower_patterns_strangler::compare::Normaliser;
    ///
    /// // Tags are a set: compare them sorted.
    /// let sorted = Normaliser::custom(|v: &Value| match v {
    ///     Value::Array(items) => {
    ///         let mut items = items.clone();
    ///         items.sort_by_key(|item| item.to_string());
    ///         Value::Array(items)
    ///     }
    ///     other => other.clone(),
    /// });
    /// # let _ = sorted;
    /// ```
    pub fn custom(f: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(f))
    }
}

impl fmt::Debug for Normaliser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uuid => f.write_str("Uuid"),
            Self::Timestamp => f.write_str("Timestamp"),
            Self::Tolerance(t) => f.debug_tuple("Tolerance").field(t).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Whether `s` is a UUID in its hyphenated form (8-4-4-4-12 hexadecimal digits).
pub(super) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether `s` is a date-time as [`Normaliser::Timestamp`] describes.
pub(super) fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let part = b.get(from..from + n)?;
        part.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    // Two digits at `from`, at most `max`.
    let upto = |from: usize, max: u32| digits(from, 2).is_some_and(|v| v <= max);
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    // YYYY-MM-DD
    let date_ok = digits(0, 4).is_some()
        && at(4, b'-')
        && digits(5, 2).is_some_and(|m| (1..=12).contains(&m))
        && at(7, b'-')
        && digits(8, 2).is_some_and(|d| (1..=31).contains(&d));
    // T or space, HH:MM
    if !date_ok
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || !upto(11, 23)
        || !at(13, b':')
        || !upto(14, 59)
    {
        return false;
    }
    let mut i = 16;
    // :SS(.fraction)
    if at(i, b':') {
        if !upto(i + 1, 60) {
            return false;
        }
        i += 3;
        if at(i, b'.') || at(i, b',') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return false;
            }
        }
    }
    // Z, ±HH:MM, ±HHMM, ±HH, or nothing (local time)
    match b.get(i) {
        None => true,
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            let hours = upto(i + 1, 23);
            let rest = &b[i + 3.min(b.len() - i)..];
            hours
                && match rest.len() {
                    0 => true,
                    3 => rest[0] == b':' && upto(i + 4, 59),
                    2 => upto(i + 3, 59),
                    _ => false,
                }
        }
        Some(_) => false,
    }
}

/// Whether two JSON numbers are equal as numbers (`1` and `1.0` are), within `tolerance` when
/// one is set.
pub(super) fn numbers_equal(a: &Number, b: &Number, tolerance: Option<f64>) -> bool {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        if x == y {
            return true;
        }
        if tolerance.is_none() {
            return false;
        }
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => match tolerance {
            Some(t) => (x - y).abs() <= t,
            None => x == y,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        assert!(is_uuid("67e55044-10b1-426f-9247-bb680e5fe0c8"));
        assert!(is_uuid("67E55044-10B1-426F-9247-BB680E5FE0C8"));
        assert!(!is_uuid("67e55044-10b1-426f-9247-bb680e5fe0c"));
        assert!(!is_uuid("67e55044x10b1-426f-9247-bb680e5fe0c8"));
        assert!(!is_uuid("67e5504g-10b1-426f-9247-bb680e5fe0c8"));
        assert!(!is_uuid("67e5504410b1426f9247bb680e5fe0c8"));
        assert!(!is_uuid(""));
    }

    #[test]
    fn timestamps() {
        for ok in [
            "2024-05-01T12:30:00Z",
            "2024-05-01t12:30:00z",
            "2024-05-01T12:30:00.123456Z",
            "2024-05-01 12:30:00+02:00",
            "2024-05-01T12:30:00,5-0530",
            "2024-05-01T12:30",
            "2024-05-01T12:30:00",
            "2024-05-01T12:30+01",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(is_timestamp(ok), "{ok}");
        }
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T12:30:00Z",
            "2024-05-00T12:30:00Z",
            "2024-05-01T24:30:00Z",
            "2024-05-01T12:60:00Z",
            "2024-05-01T12:30:00.Z",
            "2024-05-01T12:30:00Zjunk",
            "2024-05-01T12:30:00+2",
            "2024-05-01T12:30:00+02:0",
            "2024-05-01T12:30:00+02:00:00",
            "2024-05-01X12:30:00Z",
            "1714566600",
            "2024-05-01T12:3",
            "２024-05-01T12:30:00Z",
        ] {
            assert!(!is_timestamp(bad), "{bad}");
        }
    }

    #[test]
    fn numbers_compare_as_numbers() {
        let n = |s: &str| serde_json::from_str::<Number>(s).unwrap();
        assert!(numbers_equal(&n("1"), &n("1.0"), None));
        assert!(numbers_equal(&n("-3"), &n("-3"), None));
        assert!(numbers_equal(&n("0"), &n("-0.0"), None));
        assert!(numbers_equal(&n("1e2"), &n("100"), None));
        assert!(!numbers_equal(&n("1"), &n("2"), None));
        assert!(!numbers_equal(&n("18446744073709551615"), &n("-1"), None));
        assert!(!numbers_equal(&n("0.1"), &n("0.10001"), None));
        assert!(numbers_equal(&n("0.1"), &n("0.10001"), Some(0.001)));
        assert!(numbers_equal(&n("10"), &n("11"), Some(1.0)));
        assert!(!numbers_equal(&n("10"), &n("12"), Some(1.0)));
    }
}
