//! The states of a circuit and the word that packs a breaker's state, generation, ramp stage
//! and half-open probe counters into one `AtomicU64` (see `machine.rs`); what a call is
//! admitted as.

use std::fmt;

/// The state of a circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass and are counted.
    Closed,
    /// Calls are rejected until the open duration elapses.
    Open,
    /// A limited number of probe calls (or a ramp of traffic) decide whether to close.
    HalfOpen,
    /// Forced open through the handle: every call is rejected until released.
    ForcedOpen,
    /// Forced closed through the handle: every call passes and nothing is counted.
    Disabled,
}

impl State {
    /// `closed`, `open`, `half_open`, `forced_open` or `disabled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
        }
    }

    pub(crate) const ALL: [Self; 5] = [
        Self::Closed,
        Self::Open,
        Self::HalfOpen,
        Self::ForcedOpen,
        Self::Disabled,
    ];

    #[inline]
    pub(crate) const fn code(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::Disabled => 4,
        }
    }

    const fn from_code(code: u64) -> Self {
        match code {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            _ => Self::Disabled,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Layout of the state word, low bits first:
// code 3 | stage 3 | issued 12 | successes 12 | failures 12 | generation 22.
pub(crate) const CODE_MASK: u64 = 0b111;
pub(crate) const STAGE_SHIFT: u32 = 3;
pub(crate) const ISSUED_SHIFT: u32 = 6;
pub(crate) const SUCC_SHIFT: u32 = 18;
pub(crate) const FAIL_SHIFT: u32 = 30;
pub(crate) const GEN_SHIFT: u32 = 42;
pub(crate) const FIELD_MASK: u64 = 0xfff;
pub(crate) const STAGE_MASK: u64 = 0b111;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(pub(crate) u64);

impl Word {
    #[inline]
    pub(crate) const fn new(state: State, generation: u32, stage: u32) -> Self {
        Self(
            state.code()
                | ((stage as u64 & STAGE_MASK) << STAGE_SHIFT)
                | ((generation as u64) << GEN_SHIFT),
        )
    }
    #[inline]
    pub(crate) const fn state(self) -> State {
        State::from_code(self.0 & CODE_MASK)
    }
    /// Closed, without decoding the state (the hot path asks only this).
    #[inline]
    pub(crate) const fn is_closed(self) -> bool {
        self.0 & CODE_MASK == State::Closed.code()
    }
    #[inline]
    pub(crate) const fn stage(self) -> u32 {
        ((self.0 >> STAGE_SHIFT) & STAGE_MASK) as u32
    }
    #[inline]
    pub(crate) const fn issued(self) -> u64 {
        (self.0 >> ISSUED_SHIFT) & FIELD_MASK
    }
    #[inline]
    pub(crate) const fn successes(self) -> u64 {
        (self.0 >> SUCC_SHIFT) & FIELD_MASK
    }
    #[inline]
    pub(crate) const fn failures(self) -> u64 {
        (self.0 >> FAIL_SHIFT) & FIELD_MASK
    }
    #[inline]
    pub(crate) const fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }
    #[inline]
    pub(crate) const fn next_generation(self) -> u32 {
        (self.generation() + 1) & ((1 << (64 - GEN_SHIFT)) - 1)
    }
    #[inline]
    pub(crate) const fn same_phase(self, other: Self) -> bool {
        self.0 & CODE_MASK == other.0 & CODE_MASK
            && self.generation() == other.generation()
            && self.stage() == other.stage()
    }
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Word")
            .field("state", &self.state())
            .field("generation", &self.generation())
            .field("stage", &self.stage())
            .field("issued", &self.issued())
            .field("successes", &self.successes())
            .field("failures", &self.failures())
            .finish()
    }
}

/// What a call was admitted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum PermitKind {
    /// Counted in the closed window.
    Closed,
    /// A half-open probe holding one of the permitted slots.
    Probe,
    /// A half-open ramp call: judged, but holds no slot.
    RampProbe,
    /// Passed without being counted (disabled, or metrics-only while the circuit is open).
    Free,
}

/// The admission of one call; give it back to [`Machine::record`](crate::__private::Machine::record) or
/// [`Machine::release`](crate::__private::Machine::release).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    /// The generation of the state machine the call was admitted in.
    pub generation: u32,
    /// What the call was admitted as.
    pub kind: PermitKind,
}

/// Whether a call may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Admitted.
    Permit(Permit),
    /// Rejected; the circuit stays open for this many more nanoseconds, when known.
    Rejected(Option<u64>),
}
