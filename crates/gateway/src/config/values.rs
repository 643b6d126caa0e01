//! Values written as text in the configuration file: durations (`"250ms"`), sizes (`"1MiB"`)
//! and rates (`"100/s"`). Each parses in its `Deserialize` impl, so a bad value's error carries
//! the span of the value and so its line.

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, de};
use tower_patterns_ratelimit::Rate;

/// A duration written as a number and a unit: `ms`, `s`, `m` or `h` (`"250ms"`, `"5s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);

/// A size in bytes, written as a number or as text with a unit: `B`, `KiB`, `MiB`, `GiB`,
/// `KB`, `MB`, `GB` (`"1MiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

/// A rate written as `"N/s"`, `"N/m"`, `"N/h"` or `"N/d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateText(pub Rate);

fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n = text[..end].parse::<u64>().ok()?;
    Some((n, text[end..].trim()))
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("{text:?} is not a duration (write it as \"250ms\", \"5s\", \"2m\" or \"1h\")");
    let (n, unit) = split_number(text).ok_or_else(bad)?;
    let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs).ok_or_else(bad);
    let d = match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(bad()),
    }?;
    // Timers add a duration to the clock: a few centuries would overflow it.
    if d > MAX_DURATION {
        return Err(format!(
            "{text:?} is longer than a day, the longest a setting here takes"
        ));
    }
    Ok(d)
}

/// The longest duration any setting takes (timeouts, ejections, JWT leeway, poll intervals).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Parses `"1MiB"`, `"512KiB"`, `"100"`.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let bad =
        || format!("{text:?} is not a size (write it as \"64KiB\", \"1MiB\" or a number of bytes)");
    let (n, unit) = split_number(text).ok_or_else(bad)?;
    let mul: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

/// Parses `"100/s"`, `"10/m"`, `"1000/h"`, `"5/d"`.
pub(crate) fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || {
        format!("{text:?} is not a rate (write it as \"100/s\", \"10/m\", \"1000/h\" or \"5/d\")")
    };
    let (n, rest) = text.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{text:?}: a rate of zero admits nothing"));
    }
    let rate = match rest.trim() {
        "s" => Rate::per_second(n),
        "m" => Rate::per_minute(n),
        "h" => Rate::per_hour(n),
        "d" => Rate::per_day(n),
        _ => return Err(bad()),
    };
    rate.validate()
        .map_err(|e| format!("{text:?}: {}", e.reason()))?;
    Ok(rate)
}

struct TextVisitor<T>(fn(&str) -> Result<T, String>, &'static str);

impl<T> de::Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.0)(&v.to_string()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor(parse_duration, "a duration such as \"5s\""))
            .map(Dur)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(parse_size, "a size such as \"1MiB\""))
            .map(Size)
    }
}

impl<'de> Deserialize<'de> for RateText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor(parse_rate, "a rate such as \"100/s\""))
            .map(RateText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sizes_and_rates() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 5s "), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("25h").is_err(), "longer than a day");
        assert!(parse_duration("5000000000000000h").is_err());
        assert!(
            parse_duration("18446744073709551615h").is_err(),
            "overflow is an error"
        );
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("3KB"), Ok(3000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1PiB").is_err());
        assert!(parse_size("18446744073709551615GiB").is_err());
        assert_eq!(parse_rate("100/s"), Ok(Rate::per_second(100)));
        assert_eq!(parse_rate("10/m"), Ok(Rate::per_minute(10)));
        assert_eq!(parse_rate("7/h"), Ok(Rate::per_hour(7)));
        assert_eq!(parse_rate("5/d"), Ok(Rate::per_day(5)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("10/w").is_err());
    }
}
