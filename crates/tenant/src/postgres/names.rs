//! SQL names: identifiers checked to need no quoting, and quoted names checked to need no
//! escaping.

use tower_patterns_core::ConfigError;

/// Checks that `name` is a plain lower-case SQL identifier (nothing to quote or escape).
pub(super) fn identifier(what: &'static str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            what,
            format!("{name:?} is not a lower-case SQL identifier"),
        ))
    }
}

/// A quoted identifier for a name of `[A-Za-z0-9._-]`, 1 to 63 bytes (nothing to escape;
/// PostgreSQL would silently truncate a longer one, merging two tenants' names).
pub(super) fn quoted(what: &'static str, name: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(format!("\"{name}\""))
    } else {
        Err(ConfigError::new(
            what,
            format!("{name:?} is not 1 to 63 bytes of letters, digits, '.', '_' and '-'"),
        ))
    }
}
