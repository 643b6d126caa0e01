//! Shard keys and the stable hash every strategy places them by.
//!
//! The hash is XXH3-64 with a fixed seed, so every process, on every machine and every
//! version of this crate, places a key on the same shard (unlike `std`'s `DefaultHasher`,
//! whose algorithm may change, or hashers seeded at random per process).
//!
//! ```
//! use tower_patterns_shard::ShardKey;
//!
//! assert_eq!("user-42".hash64(), "user-42".hash64());
//! assert_eq!(42u64.ordinal(), 42); // numbers keep their order for range sharding
//! assert_eq!("{user-42}.cart".slot(), "{user-42}.orders".slot()); // Redis hash tags
//! ```

use std::borrow::Cow;

use crc::{CRC_16_XMODEM, Crc};
use tower_patterns_core::key::AsciiKey;

/// The placement hash's seed: fixed forever (changing it moves every key).
pub const SEED: u64 = 0x7e72_5348_4152_4453;

/// The number of directory slots, as in Redis Cluster.
pub const SLOTS: usize = 16_384;

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// XXH3-64 of `bytes` with the fixed [`SEED`].
#[inline]
pub fn stable_hash(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot_with_seed(SEED, bytes)
}

/// Redis Cluster's slot of a key: CRC16 (XMODEM) of the key, or of its `{hash tag}` if it has
/// a non-empty one, modulo 16,384.
pub fn redis_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    CRC16.checksum(tagged) % SLOTS as u16
}

/// A key that can be placed on a shard.
pub trait ShardKey {
    /// The bytes that identify the key.
    fn key_bytes(&self) -> Cow<'_, [u8]>;

    /// The stable placement hash.
    #[inline]
    fn hash64(&self) -> u64 {
        stable_hash(&self.key_bytes())
    }

    /// The position for range sharding: the number itself for numbers, the hash otherwise.
    #[inline]
    fn ordinal(&self) -> u64 {
        self.hash64()
    }

    /// The directory slot (Redis Cluster's, hash tags included).
    fn slot(&self) -> u16 {
        redis_slot(&self.key_bytes())
    }

    /// The region, for geo sharding.
    fn region(&self) -> Option<&str> {
        None
    }
}

impl ShardKey for str {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl ShardKey for String {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl ShardKey for [u8] {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl ShardKey for AsciiKey {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_str().as_bytes())
    }
}

impl ShardKey for u64 {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.to_le_bytes().to_vec())
    }

    #[inline]
    fn hash64(&self) -> u64 {
        stable_hash(&self.to_le_bytes())
    }

    fn ordinal(&self) -> u64 {
        *self
    }

    #[inline]
    fn slot(&self) -> u16 {
        // From the bytes on the stack: no allocation per routed request.
        redis_slot(&self.to_le_bytes())
    }
}

impl<K: ShardKey + ?Sized> ShardKey for &K {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        (**self).key_bytes()
    }
    fn hash64(&self) -> u64 {
        (**self).hash64()
    }
    fn ordinal(&self) -> u64 {
        (**self).ordinal()
    }
    fn slot(&self) -> u16 {
        (**self).slot()
    }
    fn region(&self) -> Option<&str> {
        (**self).region()
    }
}

/// A key with its region, for [`Geo`](crate::Geo) sharding (sharding for a billion users: by region,
/// then by user within the region).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GeoKey<K> {
    /// The region (`eu`, `us`, ...).
    pub region: String,
    /// The key within the region.
    pub key: K,
}

impl<K: ShardKey> ShardKey for GeoKey<K> {
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        self.key.key_bytes()
    }
    fn hash64(&self) -> u64 {
        self.key.hash64()
    }
    fn ordinal(&self) -> u64 {
        self.key.ordinal()
    }
    fn slot(&self) -> u16 {
        self.key.slot()
    }
    fn region(&self) -> Option<&str> {
        Some(&self.region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_slots_match_redis() {
        // CRC16-XMODEM's check value (the Redis Cluster specification's test vector: 0x31C3).
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
        assert_eq!(usize::from(redis_slot(b"123456789")), 0x31C3 % SLOTS);
        assert_eq!(redis_slot(b"123456789"), 12_739);
        // `CLUSTER KEYSLOT` values, as given by the Redis documentation or computed with a
        // reference CRC16-XMODEM checked against the test vector above.
        assert_eq!(redis_slot(b"foo"), 12_182);
        assert_eq!(redis_slot(b"bar"), 5_061);
        assert_eq!(redis_slot(b""), 0);
        assert_eq!(redis_slot(b"user1000"), 3_443);
        // A hash tag: only the part between the first `{` and the next `}` is hashed.
        assert_eq!(redis_slot(b"{user1000}.following"), 3_443);
        assert_eq!(redis_slot(b"{user1000}.followers"), 3_443);
        assert_eq!(redis_slot(b"foo{bar}{zap}"), 5_061, "the first tag: bar");
        assert_eq!(
            redis_slot(b"}{x}"),
            redis_slot(b"x"),
            "a closing brace before the opening one is no tag"
        );
        assert_eq!(redis_slot(b"x"), 16_287);
        // The specification's edge cases: an empty tag hashes the whole key; a tag may contain
        // a `{`; an unclosed `{` is no tag.
        assert_eq!(redis_slot(b"foo{}{bar}"), 8_363, "empty tag: whole key");
        assert_ne!(redis_slot(b"foo{}{bar}"), redis_slot(b"bar"));
        assert_eq!(
            redis_slot(b"foo{{bar}}zap"),
            4_015,
            "the tag is the opening brace and bar"
        );
        assert_eq!(redis_slot(b"{bar"), 4_015);
        assert_eq!(redis_slot(b"a{b"), 13_340, "unclosed: whole key");
        assert_eq!(redis_slot(b"{"), 4_092);
        assert_eq!(redis_slot(b"{}"), 15_257);
        // Numbers are hashed from their little-endian bytes.
        assert_eq!(7u64.slot(), redis_slot(&7u64.to_le_bytes()));
    }

    #[test]
    fn the_placement_hash_is_pinned() {
        // Changing the hash or its seed would move every key of every user: pinned here.
        assert_eq!("user-1".hash64(), 0xc74e_139b_c2a9_ae06);
        assert_eq!(42u64.hash64(), 0xefa6_a7ed_ea82_e029);
        assert_eq!(stable_hash(b""), 0x52ed_4b46_95f4_afc9);
    }
}
