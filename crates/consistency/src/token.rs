//! Consistency tokens: a [`Mark`] signed with a server key, so a client can carry it but not
//! forge it.
//!
//! A token is opaque to clients and versioned: `1` (the format), a kind letter (`e` for an
//! event store position, `w` for a WAL position), the mark in fixed-width hexadecimal, then a
//! 64-bit SipHash-2-4 tag over the version, the [`Tokens`]' scope, the kind and the mark.
//! Parsing is a length check, a hex decode a word at a time and one SipHash of three words:
//! about 45 ns, no allocation.
//!
//! A malformed token, one signed with another key or scope, and one of the wrong kind for the
//! read side are all a [`TokenError`], which core's HTTP mapping answers with `400 Bad
//! Request` and a fixed phrase. A client can therefore neither crash the server nor make it
//! wait for a position that was never written (a forged token from the future would
//! otherwise hold every read for the whole wait).
//!
//! See [`Tokens`] for why SipHash rather than HMAC-SHA-256, and how to manage the key.
//!
//! ```
//! use tower_patterns_consistency::{Lsn, Mark, TokenKey, Tokens};
//! use tower_patterns_eventstore::GlobalPosition;
//!
//! let key = TokenKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
//! let tokens = Tokens::new("orders", key);
//! let token = tokens.issue(Mark::Position(GlobalPosition::new(3, 17)));
//! assert_eq!(tokens.verify(&token).unwrap(), Mark::Position(GlobalPosition::new(3, 17)));
//!
//! // A token is bound to its key and its scope.
//! let other = Tokens::new("catalog", key);
//! assert!(other.verify(&token).is_err());
//! // Changing one digit breaks the tag.
//! let forged = token.replacen("11", "12", 1);
//! assert!(tokens.verify(&forged).is_err());
//! assert_eq!(tokens.verify(&tokens.issue(Mark::Lsn(Lsn(0x1_6B37_4D48)))).unwrap(), Mark::Lsn(Lsn(0x1_6B37_4D48)));
//! ```

use std::{error::Error, fmt, hash::Hasher, sync::Arc};

use http::StatusCode;
use siphasher::sip::SipHasher24;
use tower_patterns_core::{
    ConfigError,
    http::{ErrorMapping, IntoErrorResponse},
};
use tower_patterns_eventstore::GlobalPosition;

use crate::mark::{Lsn, Mark, MarkKind};

/// The format's version, the token's first character.
const VERSION: u8 = b'1';
/// Length of a position token: version, kind, two u64, tag.
const POSITION_LEN: usize = 2 + 16 + 16 + 16;
/// Length of a WAL token: version, kind, one u64, tag.
const LSN_LEN: usize = 2 + 16 + 16;

/// A 128-bit key that signs and verifies consistency tokens. Every instance that issues or
/// checks tokens for one scope needs the same key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenKey {
    k0: u64,
    k1: u64,
}

impl TokenKey {
    /// The key from 16 bytes.
    pub const fn new(bytes: [u8; 16]) -> Self {
        let mut k0 = [0; 8];
        let mut k1 = [0; 8];
        let mut i = 0;
        while i < 8 {
            k0[i] = bytes[i];
            k1[i] = bytes[i + 8];
            i += 1;
        }
        Self {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    /// A key no one else knows, from the operating system's random number generator, for one
    /// process: tokens it signs are refused by other processes and after a restart (a cookie
    /// holding one is then cleared, a header holding one is a 400). Instances behind one load
    /// balancer need a shared key: [`from_hex`](Self::from_hex).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `key` when the operating system has no random number
    /// generator to offer.
    pub fn random() -> Result<Self, ConfigError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|_| ConfigError::new("key", "no random number generator to draw it from"))?;
        Ok(Self::new(bytes))
    }

    /// The key in the environment variable `var` (32 hexadecimal digits), `None` when it is
    /// not set: the usual way to give every instance the same key.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `key` (and the variable) when `var` is set but not 32
    /// hexadecimal digits, or not Unicode.
    pub fn from_env(var: &str) -> Result<Option<Self>, ConfigError> {
        match std::env::var(var) {
            Ok(hex) => Self::from_hex(&hex).map(Some).map_err(|_| {
                ConfigError::new("key", format!("{var} must be 32 hexadecimal digits"))
            }),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(
                "key",
                format!("{var} must be 32 hexadecimal digits"),
            )),
        }
    }

    /// The key from 32 hexadecimal digits (as `openssl rand -hex 16` prints).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `key` when `hex` is not 32 hexadecimal digits.
    pub fn from_hex(hex: &str) -> Result<Self, ConfigError> {
        let bytes = hex.trim().as_bytes();
        if bytes.len() != 32 {
            return Err(ConfigError::new("key", "must be 32 hexadecimal digits"));
        }
        let mut key = [0u8; 16];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(h), Some(l)) => key[i] = (h << 4) | l,
                _ => return Err(ConfigError::new("key", "must be 32 hexadecimal digits")),
            }
        }
        Ok(Self::new(key))
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Issues and verifies the tokens of one scope (a name: the layer's, by default) with one key,
/// and optionally older keys still accepted. Cheap to clone.
///
/// **Why SipHash and not HMAC-SHA-256:** the check sits on every read that carries a token.
/// SipHash is a keyed pseudo-random function designed as a MAC for short inputs (Aumasson and
/// Bernstein, 2012): verifying a token takes about 45 ns, where HMAC-SHA-256 over the same
/// bytes takes about 200 ns (`benches/consistency.rs`). A 64-bit tag means a forger needs on
/// the order of 2⁶³ online guesses, each answered with a 400, and the tag guards a position,
/// not a secret. The key is 128 bits: generate it once (`openssl rand -hex 16`) and give
/// every instance the same one. [`previous`](Self::previous) keeps accepting tokens of an
/// older key while a new one rolls out.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Keys>,
}

#[derive(Clone)]
struct Keys {
    scope: Arc<str>,
    /// The hasher for the current key with the scope already written: cloned per token.
    current: SipHasher24,
    previous: Vec<SipHasher24>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("scope", &self.inner.scope)
            .field("previous_keys", &self.inner.previous.len())
            .finish()
    }
}

fn keyed(scope: &str, key: TokenKey) -> SipHasher24 {
    let mut h = SipHasher24::new_with_keys(key.k0, key.k1);
    // The format's version, then the scope with its length: a tag of one version or scope is
    // never a tag of another.
    h.write(&[VERSION]);
    h.write(&(scope.len() as u64).to_le_bytes());
    h.write(scope.as_bytes());
    h
}

impl Tokens {
    /// Tokens of `scope`, signed with `key`.
    pub fn new(scope: impl Into<Arc<str>>, key: TokenKey) -> Self {
        let scope = scope.into();
        Self {
            inner: Arc::new(Keys {
                current: keyed(&scope, key),
                previous: Vec::new(),
                scope,
            }),
        }
    }

    /// Also accepts tokens signed with `key` (a key being retired); new tokens are signed with
    /// the current key only.
    #[must_use]
    pub fn previous(self, key: TokenKey) -> Self {
        let mut keys = Arc::unwrap_or_clone(self.inner);
        keys.previous.push(keyed(&keys.scope, key));
        Self {
            inner: Arc::new(keys),
        }
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// The token for `mark`.
    pub fn issue(&self, mark: Mark) -> String {
        let mut buf = [0u8; POSITION_LEN];
        let len = self.encode(mark, &mut buf);
        // Only ASCII digits and letters were written.
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    /// Writes the token for `mark` into `buf`, returning its length.
    fn encode(&self, mark: Mark, buf: &mut [u8; POSITION_LEN]) -> usize {
        buf[0] = VERSION;
        let body = match mark {
            Mark::Position(p) => {
                buf[1] = b'e';
                hex16(p.commit, &mut buf[2..18]);
                hex16(p.index, &mut buf[18..34]);
                34
            }
            Mark::Lsn(l) => {
                buf[1] = b'w';
                hex16(l.0, &mut buf[2..18]);
                18
            }
        };
        let tag = tag(&self.inner.current, mark);
        hex16(tag, &mut buf[body..body + 16]);
        body + 16
    }

    /// The token for `mark` as a header value.
    pub fn header_value(&self, mark: Mark) -> http::HeaderValue {
        let mut buf = [0u8; POSITION_LEN];
        let len = self.encode(mark, &mut buf);
        http::HeaderValue::from_bytes(&buf[..len])
            .unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    /// Reads and verifies a token.
    ///
    /// # Errors
    ///
    /// A [`TokenError`] when the token is malformed or its tag does not match any key.
    pub fn verify(&self, token: &str) -> Result<Mark, TokenError> {
        self.verify_bytes(token.as_bytes())
    }

    /// [`verify`](Self::verify) for the raw bytes of a header or cookie value.
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify).
    pub fn verify_bytes(&self, token: &[u8]) -> Result<Mark, TokenError> {
        let (mark, tag_at) = match (token.len(), token.first(), token.get(1)) {
            (POSITION_LEN, Some(&VERSION), Some(b'e')) => (
                Mark::Position(GlobalPosition::new(
                    unhex16(&token[2..18])?,
                    unhex16(&token[18..34])?,
                )),
                34,
            ),
            (LSN_LEN, Some(&VERSION), Some(b'w')) => (Mark::Lsn(Lsn(unhex16(&token[2..18])?)), 18),
            (_, Some(c), _) if c.is_ascii_digit() && *c != VERSION => {
                return Err(TokenError::new(Reason::Version));
            }
            _ => return Err(TokenError::malformed()),
        };
        let given = unhex16(&token[tag_at..tag_at + 16])?;
        let keys = &self.inner;
        if tag(&keys.current, mark) == given || keys.previous.iter().any(|h| tag(h, mark) == given)
        {
            Ok(mark)
        } else {
            Err(TokenError::new(Reason::Forged))
        }
    }

    /// [`verify_bytes`](Self::verify_bytes), then checks that the mark is of `kind`.
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify), and a [`TokenError`] when the kind differs (a replica
    /// token sent to a read model, say).
    pub fn verify_kind(&self, token: &[u8], kind: MarkKind) -> Result<Mark, TokenError> {
        let mark = self.verify_bytes(token)?;
        if mark.kind() == kind {
            Ok(mark)
        } else {
            Err(TokenError::new(Reason::Kind))
        }
    }
}

fn tag(keyed: &SipHasher24, mark: Mark) -> u64 {
    let mut h = *keyed;
    // Whole words: SipHash takes 8-byte words, and the kind word keeps the two kinds apart
    // (`e` and `w` in the low byte, the number of words after it above).
    match mark {
        Mark::Position(p) => {
            h.write_u64(u64::from(b'e') | (2 << 8));
            h.write_u64(p.commit);
            h.write_u64(p.index);
        }
        Mark::Lsn(l) => {
            h.write_u64(u64::from(b'w') | (1 << 8));
            h.write_u64(l.0);
        }
    }
    h.finish()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex16(v: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate().take(16) {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Eight lowercase hex digits (in memory order, read as a little-endian word) to their value,
/// or `None` for any other byte. SWAR ("SIMD within a register"): every byte is range-checked
/// and converted at once, then the nibbles are packed in three shift-and-mask steps. The check
/// sits on every read that carries a token; a loop over the digits cost about ten times more.
#[inline]
fn unhex8(word: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // With every byte below 0x80, the high bit of byte + (0x80 - lo) says byte >= lo.
    let at_least = |lo: u8| word.wrapping_add(ONES * u64::from(0x80 - lo)) & HIGH;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if word & HIGH != 0 || (digit | letter) != HIGH {
        return None;
    }
    // '0'..='9' are 0x30..=0x39, 'a'..='f' are 0x61..=0x66: the low nibble, plus 9 for letters.
    let values = (word & (ONES * 0x0f)) + ((word >> 6) & ONES) * 9;
    // Pairs of nibbles into bytes, pairs of bytes into 16-bit halves, then the two halves.
    let x = ((values & 0x0f00_0f00_0f00_0f00) >> 8) | ((values & 0x000f_000f_000f_000f) << 4);
    let x = ((x & 0x00ff_0000_00ff_0000) >> 16) | ((x & 0x0000_00ff_0000_00ff) << 8);
    let x = ((x & 0x0000_ffff_0000_0000) >> 32) | ((x & 0x0000_0000_0000_ffff) << 16);
    u32::try_from(x).ok()
}

/// Sixteen lowercase hex digits (the only spelling [`Tokens`] writes) to a `u64`.
#[inline]
fn unhex16(s: &[u8]) -> Result<u64, TokenError> {
    let Ok(digits) = <&[u8; 16]>::try_from(s) else {
        return Err(TokenError::malformed());
    };
    let (high, low) = digits.split_at(8);
    let word = |half: &[u8]| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(half);
        unhex8(u64::from_le_bytes(bytes))
    };
    match (word(high), word(low)) {
        (Some(high), Some(low)) => Ok((u64::from(high) << 32) | u64::from(low)),
        _ => Err(TokenError::malformed()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Malformed,
    Version,
    Forged,
    Kind,
}

/// A consistency token that cannot be used: malformed, of an unknown version, not signed by
/// this server's key for this scope, or of the wrong kind for the read side. Answered with
/// `400 Bad Request` by core's HTTP mapping (registered when a layer is built).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenError {
    reason: Reason,
}

impl TokenError {
    fn new(reason: Reason) -> Self {
        Self { reason }
    }

    fn malformed() -> Self {
        Self::new(Reason::Malformed)
    }

    /// True when the token was well formed but its tag did not verify (forged, or signed by
    /// a key this server no longer accepts).
    pub fn is_forged(&self) -> bool {
        self.reason == Reason::Forged
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.reason {
            Reason::Malformed => "malformed consistency token",
            Reason::Version => "consistency token of an unknown version",
            Reason::Forged => "consistency token not signed by this server",
            Reason::Kind => "consistency token of another kind than this read side follows",
        })
    }
}

impl Error for TokenError {}

impl IntoErrorResponse for TokenError {
    fn error_mapping(&self) -> ErrorMapping {
        ErrorMapping::new(
            StatusCode::BAD_REQUEST,
            match self.reason {
                Reason::Malformed | Reason::Version => "malformed consistency token",
                Reason::Forged | Reason::Kind => "invalid consistency token",
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: TokenKey = TokenKey::new(*b"0123456789abcdef");

    #[test]
    fn tokens_round_trip_at_the_extremes() {
        let t = Tokens::new("s", KEY);
        for m in [
            Mark::Position(GlobalPosition::START),
            Mark::Position(GlobalPosition::new(u64::MAX, u64::MAX)),
            Mark::Position(GlobalPosition::new(1, 0x0123_4567_89ab_cdef)),
            Mark::Lsn(Lsn(0)),
            Mark::Lsn(Lsn(u64::MAX)),
        ] {
            let token = t.issue(m);
            assert_eq!(t.verify(&token), Ok(m));
            assert_eq!(t.header_value(m).as_bytes(), token.as_bytes());
            assert_eq!(t.verify_kind(token.as_bytes(), m.kind()), Ok(m));
        }
    }

    #[test]
    fn every_changed_character_is_refused() {
        let t = Tokens::new("s", KEY);
        for m in [
            Mark::Position(GlobalPosition::new(7, 99)),
            Mark::Lsn(Lsn(0x1_0000_00a0)),
        ] {
            let token = t.issue(m).into_bytes();
            for i in 0..token.len() {
                for c in [b'0', b'7', b'f', b'A', b'x', b'.'] {
                    if token[i] == c {
                        continue;
                    }
                    let mut bad = token.clone();
                    bad[i] = c;
                    assert!(
                        t.verify_bytes(&bad).is_err(),
                        "{}",
                        String::from_utf8_lossy(&bad)
                    );
                }
            }
            // Truncated, extended, empty.
            assert!(t.verify_bytes(&token[..token.len() - 1]).is_err());
            let mut long = token.clone();
            long.push(b'0');
            assert!(t.verify_bytes(&long).is_err());
            assert!(t.verify_bytes(b"").is_err());
        }
    }

    #[test]
    fn errors_name_the_reason_and_map_to_400() {
        let t = Tokens::new("s", KEY);
        let m = Mark::Lsn(Lsn(5));
        let token = t.issue(m);
        let forged = Tokens::new("s", TokenKey::new([9; 16])).issue(m);
        let e = t.verify(&forged).unwrap_err();
        assert!(e.is_forged());
        assert_eq!(e.to_string(), "consistency token not signed by this server");
        assert_eq!(e.error_mapping().status, StatusCode::BAD_REQUEST);
        assert_eq!(e.error_mapping().message, "invalid consistency token");
        let e = t.verify("2w0000000000000005aaaaaaaaaaaaaaaa").unwrap_err();
        assert_eq!(e.to_string(), "consistency token of an unknown version");
        assert!(!e.is_forged());
        let e = t.verify("hello").unwrap_err();
        assert_eq!(e.to_string(), "malformed consistency token");
        assert_eq!(e.error_mapping().message, "malformed consistency token");
        let e = t
            .verify_kind(token.as_bytes(), MarkKind::Position)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "consistency token of another kind than this read side follows"
        );
        assert_eq!(e.error_mapping().message, "invalid consistency token");
        // Uppercase hex is not the spelling tokens are written in.
        assert!(
            t.verify(&token.to_uppercase().replacen('W', "w", 1))
                .is_err()
        );
    }

    #[test]
    fn previous_keys_verify_but_do_not_sign() {
        let old = TokenKey::new([1; 16]);
        let m = Mark::Position(GlobalPosition::new(0, 3));
        let old_token = Tokens::new("s", old).issue(m);
        let t = Tokens::new("s", KEY).previous(old);
        assert_eq!(t.verify(&old_token), Ok(m));
        assert_ne!(t.issue(m), old_token);
        assert!(Tokens::new("s", KEY).verify(&old_token).is_err());
    }

    #[test]
    fn the_word_at_a_time_hex_parser_agrees_with_a_plain_one() {
        let plain = |s: &[u8]| -> Option<u64> {
            if s.len() != 16 {
                return None;
            }
            s.iter().try_fold(0u64, |v, &c| {
                let n = match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    _ => return None,
                };
                Some((v << 4) | u64::from(n))
            })
        };
        let mut rng = tower_patterns_core::rng::SplitMix64::new(7);
        for round in 0..20_000 {
            let v = rng.next_u64();
            let mut text = format!("{v:016x}").into_bytes();
            assert_eq!(unhex16(&text).ok(), Some(v));
            // Every byte value at a random place, and a few wrong lengths.
            let at = (rng.next_u64() % 16) as usize;
            text[at] = (round % 256) as u8;
            assert_eq!(unhex16(&text).ok(), plain(&text), "{text:?}");
        }
        for bad in [&b""[..], b"0", b"0123456789abcde", b"0123456789abcdef0"] {
            assert_eq!(unhex16(bad).ok(), None);
        }
        assert_eq!(unhex16(b"ffffffffffffffff").ok(), Some(u64::MAX));
        assert_eq!(unhex16(b"0000000000000000").ok(), Some(0));
        assert_eq!(
            unhex16(b"0123456789abcdef").ok(),
            Some(0x0123_4567_89ab_cdef)
        );
    }

    #[test]
    fn keys_parse_from_hex_only() {
        assert_eq!(
            TokenKey::from_hex("000102030405060708090A0B0C0D0E0F").unwrap(),
            TokenKey::new([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
        );
        for bad in [
            "",
            "00",
            "000102030405060708090a0b0c0d0e0g",
            "000102030405060708090a0b0c0d0e0f00",
        ] {
            assert!(TokenKey::from_hex(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{:?}", KEY), "TokenKey(..)");
        assert_eq!(TokenKey::from_env("TP_TEST_UNSET_TOKEN_KEY_VAR"), Ok(None));
        assert_eq!(
            TokenKey::from_env("PATH").map_err(|e| e.to_string().contains("PATH")),
            Err(true)
        );
        assert_ne!(TokenKey::random().unwrap(), TokenKey::random().unwrap());
        let (a, b) = (TokenKey::random().unwrap(), TokenKey::random().unwrap());
        assert_ne!(a.k0, a.k1);
        assert_ne!(a.k0, b.k0);
    }
}
