//! The position a command reached, as a versioned token: `v1.<commit>.<index>`.
//!
//! The token is what a client sends back to read its own writes: the format is versioned
//! (the `v1.` prefix) and the parser strict, so a malformed
//! token is a typed error ([`PositionError`], `400 Bad Request` "malformed position"), never a
//! panic and never a guess.

use std::{fmt, str::FromStr};

use http::{HeaderName, HeaderValue};
use tower_patterns_eventstore::GlobalPosition;

use super::error::PositionError;

/// The response header that carries the position a command reached: `tp-position`.
pub const POSITION_HEADER: HeaderName = HeaderName::from_static("tp-position");

/// The token's version prefix.
const V1: &str = "v1.";

/// Longest decimal `u64` (20 digits).
const MAX_DIGITS: usize = 20;

/// A global position written as a versioned token, `v1.<commit>.<index>`.
///
/// ```
/// use tower_patterns_cqrs::layer::PositionToken;
/// use tower_patterns_eventstore::GlobalPosition;
///
/// let token = PositionToken::from(GlobalPosition::new(0, 42));
/// assert_eq!(token.to_string(), "v1.0.42");
/// assert_eq!("v1.0.42".parse::<PositionToken>().unwrap().position(), GlobalPosition::new(0, 42));
/// assert!("v1.0.042".parse::<PositionToken>().is_err()); // one spelling per position
/// assert!("v2.0.42".parse::<PositionToken>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PositionToken(GlobalPosition);

impl PositionToken {
    /// The position.
    pub const fn position(self) -> GlobalPosition {
        self.0
    }

    /// The token as a header value.
    pub fn to_header_value(self) -> HeaderValue {
        // Digits and dots only: always a valid header value.
        HeaderValue::try_from(self.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Reads a token from a header value.
    ///
    /// # Errors
    ///
    /// [`PositionError`] when the value is not a token this version writes.
    pub fn from_header_value(value: &HeaderValue) -> Result<Self, PositionError> {
        value
            .to_str()
            .map_err(|_| PositionError::new("not visible ASCII"))?
            .parse()
    }
}

impl From<GlobalPosition> for PositionToken {
    fn from(position: GlobalPosition) -> Self {
        Self(position)
    }
}

impl From<PositionToken> for GlobalPosition {
    fn from(token: PositionToken) -> Self {
        token.0
    }
}

impl fmt::Display for PositionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{V1}{}.{}", self.0.commit, self.0.index)
    }
}

impl FromStr for PositionToken {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(V1)
            .ok_or_else(|| PositionError::new("unknown version"))?;
        let (commit, index) = rest
            .split_once('.')
            .ok_or_else(|| PositionError::new("expected two numbers"))?;
        Ok(Self(GlobalPosition::new(number(commit)?, number(index)?)))
    }
}

/// A canonical decimal `u64`: digits only, no sign, no leading zero (but `0` itself).
fn number(s: &str) -> Result<u64, PositionError> {
    if s.is_empty() || s.len() > MAX_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PositionError::new("not a decimal number"));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(PositionError::new("leading zero"));
    }
    s.parse()
        .map_err(|_| PositionError::new("number out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_typed_errors() {
        for p in [
            GlobalPosition::START,
            GlobalPosition::new(0, 7),
            GlobalPosition::new(12, 3),
            GlobalPosition::new(u64::MAX, u64::MAX),
        ] {
            let t = PositionToken::from(p);
            assert_eq!(
                t.to_string().parse::<PositionToken>().unwrap().position(),
                p
            );
            assert_eq!(
                PositionToken::from_header_value(&t.to_header_value()).unwrap(),
                t
            );
        }
        for bad in [
            "",
            "v1",
            "v1.",
            "v1.0",
            "v1.0.",
            "v1..1",
            "v1.0.1.2",
            "v1.-1.2",
            "v1.+1.2",
            "v1.01.2",
            "v1.1.02",
            "v1.0.18446744073709551616",
            "v1.0.123456789012345678901",
            "v2.0.1",
            "V1.0.1",
            " v1.0.1",
            "v1.0.1 ",
            "v1.0.1a",
            "v1.0x1.1",
        ] {
            let e = bad.parse::<PositionToken>().unwrap_err();
            assert!(
                e.to_string().starts_with("malformed position token"),
                "{bad}: {e}"
            );
        }
        // Zero itself is canonical, in either place.
        let zero = "v1.0.0".parse::<PositionToken>().unwrap();
        assert_eq!(GlobalPosition::from(zero), GlobalPosition::START);
        assert_eq!(
            GlobalPosition::from("v1.10.0".parse::<PositionToken>().unwrap()),
            GlobalPosition::new(10, 0)
        );
        let not_ascii = HeaderValue::from_bytes(b"v1.\xff.1").unwrap();
        assert!(PositionToken::from_header_value(&not_ascii).is_err());
    }
}
