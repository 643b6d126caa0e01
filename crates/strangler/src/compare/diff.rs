//! The differences found between two answers, and the noise baseline that removes some.

use std::fmt;

use http::HeaderName;

use super::path::{PathBuf, covers};

/// How long a shown value gets, in characters, before it is cut with `…`.
pub(super) const SHOWN_CHARS: usize = 200;

/// What differs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DifferenceKind {
    /// The status codes.
    Status,
    /// The values of this header (all its values, in order).
    Header(HeaderName),
    /// The JSON bodies, at [`Difference::path`].
    Body(BodyChange),
    /// The bodies as bytes (when either is not JSON, or is over
    /// [`max_body`](super::ComparatorBuilder::max_body)): they first differ at byte `offset`.
    Bytes {
        /// The first byte at which the bodies differ (the shorter one's length when it is a
        /// prefix of the other).
        offset: usize,
    },
}

/// How two JSON bodies differ at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BodyChange {
    /// The legacy answer has this object key; the new one does not.
    Missing,
    /// The new answer has this object key; the legacy one does not.
    Extra,
    /// The values are of different JSON types (a string and a number, an object and null).
    Type,
    /// Two strings, numbers or booleans differ.
    Value,
    /// Two arrays have different lengths (their common elements are compared too).
    Length,
    /// The values are nested deeper than the comparison follows (128 levels); they were not
    /// compared.
    TooDeep,
}

impl BodyChange {
    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Extra => "extra",
            Self::Type => "type",
            Self::Value => "value",
            Self::Length => "length",
            Self::TooDeep => "too deep",
        }
    }
}

/// One difference between the legacy and the new answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    kind: DifferenceKind,
    path: PathBuf,
    legacy: String,
    new: String,
}

impl Difference {
    pub(super) fn make(kind: DifferenceKind, path: PathBuf, legacy: String, new: String) -> Self {
        Self {
            kind,
            path,
            legacy,
            new,
        }
    }

    /// What differs.
    pub fn kind(&self) -> &DifferenceKind {
        &self.kind
    }

    /// Where in the JSON bodies, as a JSON Pointer (RFC 6901: `""` is the whole body, `~0` and
    /// `~1` stand for `~` and `/` in keys); `""` for the status, headers and bytes.
    pub fn path(&self) -> &str {
        &self.path.pointer
    }

    /// The legacy side, shown short: the status code, the header's values joined by `, `, the
    /// JSON value, `N elements` for an array's length, `N bytes: ...` from the first differing
    /// byte, or `(missing)`. Cut at about 200 characters.
    pub fn legacy(&self) -> &str {
        &self.legacy
    }

    /// The new side, shown as [`legacy`](Self::legacy) is.
    #[allow(clippy::new_ret_no_self)] // the new side's value, beside `legacy()`
    pub fn new(&self) -> &str {
        &self.new
    }

    /// Whether the noise difference `noise` covers this one.
    fn is_covered_by(&self, noise: &Self) -> bool {
        use DifferenceKind::{Body, Bytes, Header, Status};
        match (&noise.kind, &self.kind) {
            (Status, Status) => true,
            (Header(a), Header(b)) => a == b,
            // Legacy's body differs from itself as bytes (or as a whole): no body difference
            // says anything.
            (Bytes { .. }, Body(_) | Bytes { .. }) => true,
            (Body(_), Bytes { .. }) => noise.path.pointer.is_empty(),
            (Body(_), Body(_)) => covers(
                &noise.path.pointer,
                noise.path.indices,
                &self.path.pointer,
                self.path.indices,
            ),
            _ => false,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DifferenceKind::Status => f.write_str("status")?,
            DifferenceKind::Header(name) => write!(f, "header {name}")?,
            DifferenceKind::Body(change) if self.path.pointer.is_empty() => {
                write!(f, "body (root) {}", change.as_str())?;
            }
            DifferenceKind::Body(change) => {
                write!(f, "body {} {}", self.path.pointer, change.as_str())?;
            }
            DifferenceKind::Bytes { offset } => write!(f, "bytes at {offset}")?,
        }
        write!(f, ": {} -> {}", self.legacy, self.new)
    }
}

/// The differences [`Comparator::compare`](super::Comparator::compare) found, in order:
/// status, headers, then the body (in the legacy body's order, a key only the new body has
/// after the legacy keys of its object).
///
/// Empty (the common case) it holds no allocation. At most
/// [`max_differences`](super::ComparatorBuilder::max_differences) are kept;
/// [`omitted`](Self::omitted) counts the rest. [`Display`](fmt::Display) writes one line for
/// a log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Differences {
    items: Vec<Difference>,
    omitted: usize,
}

impl Differences {
    /// No differences.
    pub const fn none() -> Self {
        Self {
            items: Vec::new(),
            omitted: 0,
        }
    }

    /// Whether no difference was found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.omitted == 0
    }

    /// How many differences are kept (not counting [`omitted`](Self::omitted) ones).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// How many more differences were found than were kept.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// The kept differences, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Difference> {
        self.items.iter()
    }

    /// These differences without those the noise baseline `noise` explains, where `noise` is
    /// the legacy answer compared with a second legacy answer to the same request (as Diffy
    /// does): a field legacy does not agree with itself on (a timestamp, a nonce, a request
    /// id) says nothing about the new side.
    ///
    /// A difference is dropped when `noise` has one
    /// - of the status, for the status;
    /// - of the same header, for that header;
    /// - in the body at the same path or a path above it, array indices counting as any index:
    ///   noise at `/items/2/ts` drops differences at `/items/0/ts` and `/items/7/ts/nanos`,
    ///   since what varies in one element of a list varies in the others; noise at `/meta`
    ///   drops everything under `/meta`;
    /// - of the whole body (bytes, or at the root), for every body difference.
    ///
    /// [`omitted`](Self::omitted) differences are counted as they were: which of them were
    /// noise is not known.
    pub fn without_noise(&self, noise: &Differences) -> Differences {
        if noise.is_empty() {
            return self.clone();
        }
        Differences {
            items: self
                .items
                .iter()
                .filter(|d| !noise.items.iter().any(|n| d.is_covered_by(n)))
                .cloned()
                .collect(),
            omitted: self.omitted,
        }
    }
}

impl<'a> IntoIterator for &'a Differences {
    type Item = &'a Difference;
    type IntoIter = std::slice::Iter<'a, Difference>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

impl IntoIterator for Differences {
    type Item = Difference;
    type IntoIter = std::vec::IntoIter<Difference>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl fmt::Display for Differences {
    /// `no differences`, or `N differences: a; b; c` (`and M more` when some were omitted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no differences");
        }
        let total = self.items.len() + self.omitted;
        let noun = if total == 1 {
            "difference"
        } else {
            "differences"
        };
        write!(f, "{total} {noun}: ")?;
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{d}")?;
        }
        if self.omitted > 0 {
            write!(f, "; and {} more", self.omitted)?;
        }
        Ok(())
    }
}

/// Collects differences up to a limit.
#[derive(Debug)]
pub(super) struct Sink {
    out: Differences,
    max: usize,
}

impl Sink {
    pub(super) fn new(max: usize) -> Self {
        Self {
            out: Differences::none(),
            max,
        }
    }

    /// Whether another difference would be kept (if not, it is only counted, and the caller
    /// need not build it).
    pub(super) fn wants(&self) -> bool {
        self.out.items.len() < self.max
    }

    /// Counts a difference, building it with `make` only when it is kept.
    pub(super) fn push(&mut self, make: impl FnOnce() -> Difference) {
        if self.wants() {
            self.out.items.push(make());
        } else {
            self.out.omitted += 1;
        }
    }

    pub(super) fn finish(self) -> Differences {
        self.out
    }
}

/// `s` cut to [`SHOWN_CHARS`] characters, with `…` when cut.
pub(super) fn shorten(mut s: String) -> String {
    if let Some((at, _)) = s.char_indices().nth(SHOWN_CHARS) {
        s.truncate(at);
        s.push('…');
    }
    s
}

/// An `io::Write` target that keeps the first [`SHOWN_CHARS`] characters' worth of bytes and
/// then refuses more, so showing a large value costs no more than its first part.
#[derive(Debug, Default)]
pub(super) struct Shown {
    buf: Vec<u8>,
}

/// UTF-8 takes at most 4 bytes a character: this many bytes hold more than the shown
/// characters, so a character cut at the end is never shown.
const SHOWN_BYTES: usize = SHOWN_CHARS * 4 + 4;

impl Shown {
    /// The text written, cut with `…` if it was longer.
    pub(super) fn into_string(self) -> String {
        shorten(String::from_utf8_lossy(&self.buf).into_owned())
    }
}

impl std::io::Write for Shown {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = SHOWN_BYTES.saturating_sub(self.buf.len());
        if room == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
