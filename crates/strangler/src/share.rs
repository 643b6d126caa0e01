//! A share of traffic, in basis points.

use std::fmt;

use tower_patterns_core::ConfigError;

/// A share of traffic sent to the new side, in basis points (hundredths of a percent): from
/// [`Share::NONE`] (0) to [`Share::ALL`] (10,000).
///
/// ```
/// use tower_patterns_strangler::Share;
///
/// let quarter = Share::percent(25).unwrap();
/// assert_eq!(quarter.basis_points(), 2_500);
/// assert_eq!(quarter.to_string(), "25%");
/// assert_eq!(Share::basis_points_of(1_250).unwrap().to_string(), "12.5%");
/// assert!(Share::percent(101).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share(u16);

impl Share {
    /// Nothing to the new side.
    pub const NONE: Self = Self(0);
    /// Everything to the new side.
    pub const ALL: Self = Self(10_000);
    /// Half and half.
    pub const HALF: Self = Self(5_000);

    /// `percent` percent (0 to 100).
    pub fn percent(percent: u8) -> Result<Self, ConfigError> {
        if percent > 100 {
            return Err(ConfigError::new("share", "a percentage is at most 100"));
        }
        Ok(Self(u16::from(percent) * 100))
    }

    /// `bp` basis points (0 to 10,000).
    pub fn basis_points_of(bp: u16) -> Result<Self, ConfigError> {
        if bp > 10_000 {
            return Err(ConfigError::new(
                "share",
                "a share is at most 10000 basis points",
            ));
        }
        Ok(Self(bp))
    }

    /// `bp` basis points, at most 10,000.
    pub(crate) const fn basis_points_clamped(bp: u16) -> Self {
        if bp > 10_000 { Self(10_000) } else { Self(bp) }
    }

    /// The share in basis points.
    pub const fn basis_points(self) -> u16 {
        self.0
    }

    /// The share as a fraction from 0.0 to 1.0.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Whether a bucket (0 to 9,999, see [`bucket`](crate::key::bucket)) goes to the new
    /// side. Raising the share only adds buckets, so a user on the new side stays there.
    pub const fn takes(self, bucket: u16) -> bool {
        bucket < self.0
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{whole}%"),
            f2 if f2 % 10 == 0 => write!(f, "{whole}.{}%", f2 / 10),
            f2 => write!(f, "{whole}.{f2:02}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_bounds() {
        assert_eq!(Share::NONE.to_string(), "0%");
        assert_eq!(Share::ALL.to_string(), "100%");
        assert_eq!(Share::basis_points_of(5).unwrap().to_string(), "0.05%");
        assert_eq!(Share::basis_points_of(10_000).unwrap(), Share::ALL);
        assert!(Share::basis_points_of(10_001).is_err());
        assert_eq!(Share::percent(100).unwrap(), Share::ALL);
        assert!(Share::HALF.takes(4_999));
        assert!(!Share::HALF.takes(5_000));
        assert!(!Share::NONE.takes(0));
        assert!(Share::ALL.takes(9_999));
        assert!((Share::HALF.fraction() - 0.5).abs() < 1e-12);
    }
}
