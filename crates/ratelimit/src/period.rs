//! Quotas and their windows: UTC calendar days and months (on `jiff`), or fixed lengths.
//!
//! The calendar is `jiff`'s: the start of a UTC month and of the next one come from its
//! civil dates, not from hand-written day arithmetic.

use std::time::Duration;

use jiff::{
    ToSpan,
    civil::{Date, date},
};
use tower_patterns_core::ConfigError;

/// The window of a [`Quota`]; calendar windows are in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// A UTC calendar day, reset at midnight.
    Day,
    /// A UTC calendar month, reset at midnight on the first.
    Month,
    /// Fixed windows of this length, aligned to the Unix epoch (at least one second).
    Every(Duration),
}

impl Period {
    /// The index of the window holding `unix_secs`, and the Unix second it ends at.
    ///
    /// Months are counted from January 1970 (index 0), on `jiff`'s calendar, which ends with
    /// the year 9999.
    pub fn window(self, unix_secs: u64) -> (u64, u64) {
        match self {
            Self::Day => {
                let day = unix_secs / 86_400;
                (day, (day + 1) * 86_400)
            }
            Self::Month => month_window(unix_secs),
            Self::Every(len) => {
                let len = len.as_secs().max(1);
                let index = unix_secs / len;
                (index, (index + 1) * len)
            }
        }
    }

    /// The longest a window of this period lasts (a month: 31 days).
    pub(crate) const fn longest(self) -> Duration {
        match self {
            Self::Day => Duration::from_secs(86_400),
            Self::Month => Duration::from_secs(31 * 86_400),
            Self::Every(len) => len,
        }
    }
}

/// The first day of Unix time.
const EPOCH: Date = date(1970, 1, 1);

/// The month holding `unix_secs` (counted from January 1970) and the Unix second the next
/// month starts at. Past the calendar's last day (9999-12-31) the last month goes on forever.
fn month_window(unix_secs: u64) -> (u64, u64) {
    let days = unix_secs / 86_400;
    let today = i32::try_from(days)
        .ok()
        .and_then(|days| EPOCH.checked_add(days.days()).ok());
    let Some(today) = today else {
        return ((9999 - 1970) * 12 + 11, u64::MAX);
    };
    let index = (i64::from(today.year()) - 1970) * 12 + i64::from(today.month()) - 1;
    let end = today
        .first_of_month()
        .checked_add(1.month())
        .ok()
        .and_then(days_since_epoch)
        .map_or(u64::MAX, |days| days as u64 * 86_400);
    (index as u64, end)
}

/// The days from 1970-01-01 to `day` (negative before it).
fn days_since_epoch(day: Date) -> Option<i64> {
    EPOCH.until(day).ok().map(|span| i64::from(span.get_days()))
}

/// An allowance of `limit` requests per [`Period`].
///
/// A quota is a plain value and may be invalid (a limit of 0, a window under a second):
/// [`Quota::validate`] says so, the builder refuses an invalid default, and a limiter given an
/// invalid quota for a request (by `quota_for`) refuses that request with the
/// [`ConfigError`] instead of admitting it.
///
/// ```
/// use tower_patterns_ratelimit::{Period, Quota};
///
/// let free = Quota::new(10_000, Period::Month);
/// assert_eq!(free.limit(), 10_000);
/// assert!(Quota::new(0, Period::Day).validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u32,
    period: Period,
}

impl Quota {
    /// `limit` requests per `period`.
    pub const fn new(limit: u32, period: Period) -> Self {
        Self { limit, period }
    }

    /// The requests allowed per window.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The window.
    pub const fn period(&self) -> Period {
        self.period
    }

    /// Checks the quota: at least one request, windows of at least a second.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.limit == 0 {
            return Err(ConfigError::new("quota", "must allow at least 1 request"));
        }
        if let Period::Every(len) = self.period
            && len.as_secs() == 0
        {
            return Err(ConfigError::new("quota", "window shorter than a second"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn midnight(y: i16, m: i8, d: i8) -> u64 {
        days_since_epoch(date(y, m, d)).unwrap() as u64 * 86_400
    }

    #[test]
    fn calendar_arithmetic_round_trips() {
        let day = |days: i32| EPOCH.checked_add(days.days()).unwrap();
        for days in [-1, 0, 59, 60, 365, 10_957, 11_016, 20_000, 2_932_896] {
            let d = day(days);
            assert_eq!(days_since_epoch(d), Some(i64::from(days)), "{d}");
        }
        assert_eq!(day(0), date(1970, 1, 1));
        assert_eq!(day(11_016), date(2000, 2, 29));
        assert_eq!(days_since_epoch(date(2026, 11, 28)), Some(20_785));
    }

    #[test]
    fn month_windows_end_on_the_first_of_the_next_month() {
        let jan31 = midnight(2028, 1, 31) + 86_399;
        let (jan, end) = Period::Month.window(jan31);
        assert_eq!(end, midnight(2028, 2, 1));
        let (feb, feb_end) = Period::Month.window(end);
        assert_eq!(feb, jan + 1);
        // 2028 is a leap year.
        assert_eq!(feb_end - end, 29 * 86_400);
        let (dec, dec_end) = Period::Month.window(midnight(2027, 12, 15));
        assert_eq!(dec + 1, jan);
        assert_eq!(dec_end, midnight(2028, 1, 1));
        // The epoch's month is the first; days as the hand-written arithmetic counted them.
        assert_eq!(Period::Month.window(0), (0, 31 * 86_400));
        assert_eq!(midnight(2026, 11, 28), 20_785 * 86_400);
        assert_eq!(Period::Month.window(midnight(2000, 2, 29)).0, 30 * 12 + 1);
    }

    #[test]
    fn the_end_of_the_calendar_ends_the_last_month() {
        let last = midnight(9999, 12, 31) + 86_399;
        let (index, end) = Period::Month.window(last);
        assert_eq!(index, (9999 - 1970) * 12 + 11);
        assert_eq!(end, u64::MAX, "no month after it");
        assert_eq!(Period::Month.window(last + 1), (index, end));
        assert_eq!(Period::Month.window(u64::MAX), (index, end));
        let (nov, nov_end) = Period::Month.window(midnight(9999, 11, 30));
        assert_eq!((nov + 1, nov_end), (index, midnight(9999, 12, 1)));
        assert_eq!(Period::Month.longest(), Duration::from_secs(31 * 86_400));
    }

    proptest::proptest! {
        #[test]
        fn every_second_lies_in_its_window(secs in 0u64..8_000_000_000) {
            for period in [Period::Day, Period::Month, Period::Every(Duration::from_secs(3600))] {
                let (index, end) = period.window(secs);
                proptest::prop_assert!(end > secs);
                // The last second of the window is in it, the end is in the next one.
                proptest::prop_assert_eq!(period.window(end - 1).0, index);
                proptest::prop_assert_eq!(period.window(end).0, index + 1);
            }
        }
    }
}
