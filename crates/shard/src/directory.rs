//! A directory of 16,384 slots (Redis Cluster's), each owned by a shard, and the live
//! migration of slots between shards.
//!
//! The table is versioned and swapped whole through `arc-swap`: the request path reads it
//! with no lock, and a change (resize, migration step) publishes a new version. While a slot
//! migrates, reads go to the new shard first and fall back to the old one, so no key is
//! unreadable during the move; once its keys are copied, [`Directory::complete`] makes the new
//! shard the only owner.
//!
//! # Concurrent changes
//!
//! Changes are read-copy-update with a compare-and-swap: a writer copies the table it loaded,
//! checks its moves against that copy, and publishes the result only if the table is still the
//! one it loaded (compared by `Arc` pointer); otherwise it starts again from the newer table.
//! So concurrent [`begin`](Directory::begin) and [`complete`](Directory::complete) calls lose
//! no update, each is checked against the table it replaces (two writers cannot both begin
//! the same move), and every published change bumps the version by exactly one. The pointer
//! comparison cannot be fooled by a freed and reused allocation (ABA): the writer holds the
//! `Arc` it compares against, so that table stays alive until the swap is decided.
//!
//! Why not a mutex for writers: it would be as correct, but the compare-and-swap keeps the
//! whole directory free of locks, so a writer descheduled in the middle of a change (a table
//! copy is 16,384 slots) holds back no other writer. The cost is a repeated copy when two
//! writers collide, which is cheap for the rare operator-driven changes this table sees.
//!
//! ```
//! use tower_patterns_shard::{Directory, Route, Strategy, ShardKey};
//!
//! let dir = Directory::new(3).unwrap();
//! let moves = dir.plan_resize(4);           // slots that move to the new shard
//! assert!(moves.len() >= 16_384 / 4 - 1 && moves.len() <= 16_384 / 4 + 1);
//! dir.begin(&moves).unwrap();               // dual reads from now on
//! let slot = moves[0].slot;
//! let key = (0u64..).find(|k| k.slot() == slot).unwrap();
//! assert_eq!(dir.route(&key), Route::Migrating { to: 3, from: moves[0].from });
//! dir.complete(&moves).unwrap();
//! assert_eq!(dir.route(&key), Route::To(3));
//! ```

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tower_patterns_core::ConfigError;

use crate::{Route, ShardKey, Strategy, key::SLOTS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Stable(u16),
    Migrating { from: u16, to: u16 },
}

#[derive(Debug)]
struct Table {
    version: u64,
    shards: usize,
    slots: Box<[Slot]>,
}

/// A slot moving from one shard to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotMove {
    /// The slot.
    pub slot: u16,
    /// Its owner now.
    pub from: usize,
    /// Its owner after the move.
    pub to: usize,
}

impl SlotMove {
    /// The slot as an index and both shards as the table stores them, or why the move is
    /// impossible: a slot past the last (16,383) or a shard past the most a directory has
    /// (16,384), which would index out of the table or be cut short.
    fn checked(&self) -> Result<(usize, u16, u16), ConfigError> {
        let slot = usize::from(self.slot);
        if slot >= SLOTS || self.from >= SLOTS || self.to >= SLOTS {
            return Err(ConfigError::new(
                "migration",
                format!(
                    "slot {} from shard {} to {} is out of range (slots and shards below {SLOTS})",
                    self.slot, self.from, self.to
                ),
            ));
        }
        // Both shards are below SLOTS (16,384), so they fit a u16.
        Ok((slot, self.from as u16, self.to as u16))
    }
}

/// The slot directory; see the [module docs](self).
#[derive(Debug)]
pub struct Directory {
    table: ArcSwap<Table>,
}

impl Directory {
    /// `n` shards owning equal runs of slots.
    ///
    /// # Errors
    ///
    /// When `n` is 0 or above the number of slots.
    pub fn new(n: usize) -> Result<Self, ConfigError> {
        if n == 0 || n > SLOTS {
            return Err(ConfigError::new("shards", "must be in 1..=16384"));
        }
        let slots = (0..SLOTS)
            .map(|s| Slot::Stable((s * n / SLOTS) as u16))
            .collect();
        Ok(Self {
            table: ArcSwap::from_pointee(Table {
                version: 0,
                shards: n,
                slots,
            }),
        })
    }

    /// The table's version (bumped by every change).
    pub fn version(&self) -> u64 {
        self.table.load().version
    }

    /// The owner of each slot (the new owner while migrating).
    pub fn owners(&self) -> Vec<usize> {
        self.table
            .load()
            .slots
            .iter()
            .map(|s| match *s {
                Slot::Stable(o) | Slot::Migrating { to: o, .. } => o as usize,
            })
            .collect()
    }

    /// The slots to move so that `n` shards own equal shares, moving as few as possible:
    /// only slots of shards above their new share move, only to shards below it.
    pub fn plan_resize(&self, n: usize) -> Vec<SlotMove> {
        let n = n.clamp(1, SLOTS);
        let owners = self.owners();
        let target = |shard: usize| SLOTS / n + usize::from(shard < SLOTS % n);
        let mut counts = vec![0usize; n.max(self.table.load().shards)];
        for &o in &owners {
            counts[o] += 1;
        }
        let mut moves = Vec::new();
        let mut receivers = (0..n)
            .filter(|s| counts[*s] < target(*s))
            .collect::<Vec<_>>();
        for (slot, &owner) in owners.iter().enumerate() {
            let over = owner >= n || counts[owner] > target(owner);
            if !over {
                continue;
            }
            let Some(&to) = receivers.first() else { break };
            counts[owner] -= 1;
            counts[to] += 1;
            moves.push(SlotMove {
                slot: slot as u16,
                from: owner,
                to,
            });
            if counts[to] >= target(to) {
                receivers.remove(0);
            }
        }
        moves
    }

    /// Publishes `f` applied to a copy of the current table, retrying from the newer table
    /// when another change was published in between (see the [module docs](self)). `f`
    /// returns the new number of shards, or an error that leaves the table as it is.
    fn update(
        &self,
        f: impl Fn(usize, &mut [Slot]) -> Result<usize, ConfigError>,
    ) -> Result<(), ConfigError> {
        let mut current = self.table.load_full();
        loop {
            let mut slots = current.slots.to_vec();
            let shards = f(current.shards, &mut slots)?;
            let next = Arc::new(Table {
                version: current.version + 1,
                shards,
                slots: slots.into_boxed_slice(),
            });
            let previous = self.table.compare_and_swap(&current, next);
            if Arc::ptr_eq(&current, &previous) {
                return Ok(());
            }
            current = Guard::into_inner(previous);
        }
    }

    /// Starts moving slots: reads go to the new shard first, the old one as fallback.
    ///
    /// # Errors
    ///
    /// When a move does not start from the slot's current owner.
    pub fn begin(&self, moves: &[SlotMove]) -> Result<(), ConfigError> {
        self.update(|shards, slots| {
            for m in moves {
                let (slot, from, to) = m.checked()?;
                match slots[slot] {
                    Slot::Stable(o) if o == from => {
                        slots[slot] = Slot::Migrating { from, to };
                    }
                    _ => {
                        return Err(ConfigError::new(
                            "migration",
                            format!("slot {} is not owned by shard {}", m.slot, m.from),
                        ));
                    }
                }
            }
            Ok(moves.iter().map(|m| m.to + 1).fold(shards, usize::max))
        })
    }

    /// Finishes moving slots: the new shard is the only owner.
    ///
    /// # Errors
    ///
    /// When a slot is not migrating as described.
    pub fn complete(&self, moves: &[SlotMove]) -> Result<(), ConfigError> {
        self.update(|shards, slots| {
            for m in moves {
                let (slot, from, to) = m.checked()?;
                if slots[slot] != (Slot::Migrating { from, to }) {
                    return Err(ConfigError::new(
                        "migration",
                        format!("slot {} is not migrating {} → {}", m.slot, m.from, m.to),
                    ));
                }
                slots[slot] = Slot::Stable(to);
            }
            Ok(shards)
        })
    }
}

impl Strategy for Directory {
    fn kind(&self) -> &'static str {
        "directory"
    }

    fn migrating_slots(&self) -> usize {
        self.table
            .load()
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Migrating { .. }))
            .count()
    }

    fn shards(&self) -> usize {
        self.table.load().shards
    }

    #[inline]
    fn route<K: ShardKey + ?Sized>(&self, key: &K) -> Route {
        match self.table.load().slots[key.slot() as usize] {
            Slot::Stable(s) => Route::To(s as usize),
            Slot::Migrating { from, to } => Route::Migrating {
                to: to as usize,
                from: from as usize,
            },
        }
    }
}

/// The keys (of a sample) that a change of strategy moves.
#[derive(Clone, Debug, PartialEq)]
pub struct MovePlan {
    /// `(key index, from, to)` for every key that moves.
    pub moved: Vec<(usize, usize, usize)>,
    /// Keys looked at.
    pub total: usize,
}

impl MovePlan {
    /// The fraction of keys that move.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.moved.len() as f64 / self.total as f64
        }
    }
}

/// Which of `keys` move when placement changes from `old` to `new` (for example from 16 to 17
/// shards), and what fraction that is.
///
/// ```
/// use tower_patterns_shard::{plan_moves, Jump, Modulo};
///
/// let keys: Vec<u64> = (0..10_000).collect();
/// let jump = plan_moves(&Jump::new(16), &Jump::new(17), &keys);
/// let modulo = plan_moves(&Modulo::new(16), &Modulo::new(17), &keys);
/// assert!((jump.fraction() - 1.0 / 17.0).abs() < 0.01);
/// assert!((modulo.fraction() - 16.0 / 17.0).abs() < 0.02);
/// ```
pub fn plan_moves<A: Strategy, B: Strategy, K: ShardKey>(old: &A, new: &B, keys: &[K]) -> MovePlan {
    let moved = keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let (from, to) = (old.route(k).shard(), new.route(k).shard());
            (from != to).then_some((i, from, to))
        })
        .collect();
    MovePlan {
        moved,
        total: keys.len(),
    }
}
