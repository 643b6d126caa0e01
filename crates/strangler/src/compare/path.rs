//! JSON Pointer paths (RFC 6901) with a `*` wildcard, compiled into one deterministic automaton
//! so the walk over a body takes one table step per key, whatever the number of paths.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

/// The deepest path the walk follows, in segments (serde_json refuses deeper documents
/// anyway); also the width of [`PathBuf::indices`].
pub(super) const MAX_DEPTH: usize = 128;

/// The most automaton states the paths may compile into (several wildcards at different depths
/// multiply them); far above what a real configuration needs.
const MAX_STATES: usize = 4096;

/// One segment of a configured path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Pattern {
    /// Exactly this key (or this array index, written in decimal).
    Key(Box<str>),
    /// Any key or index.
    Any,
}

/// Parses a JSON Pointer with `*` wildcards: `""` is the whole document, otherwise each
/// segment follows a `/`, with `~0` for `~` and `~1` for `/`; a segment that is exactly `*`
/// matches any key or index.
pub(super) fn parse(pointer: &str) -> Result<Vec<Pattern>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "{pointer:?} is not a JSON Pointer: it must be empty or start with '/'"
        ));
    };
    let mut out = Vec::new();
    for raw in rest.split('/') {
        if raw == "*" {
            out.push(Pattern::Any);
            continue;
        }
        let mut key = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '~' {
                key.push(c);
                continue;
            }
            match chars.next() {
                Some('0') => key.push('~'),
                Some('1') => key.push('/'),
                _ => {
                    return Err(format!(
                        "{pointer:?} is not a JSON Pointer: '~' must be followed by 0 or 1"
                    ));
                }
            }
        }
        out.push(Pattern::Key(key.into()));
    }
    if out.len() > MAX_DEPTH {
        return Err(format!(
            "{pointer:?} is deeper than {MAX_DEPTH} segments, which no compared body reaches"
        ));
    }
    Ok(out)
}

/// Appends `key` to a pointer, escaped as RFC 6901 says.
pub(super) fn push_escaped(out: &mut String, key: &str) {
    out.push('/');
    for c in key.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

/// A segment of the path being walked: borrowed from the document, so walking allocates
/// nothing; a path is only written out when a difference is found.
#[derive(Clone, Copy, Debug)]
pub(super) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The path being walked, as a chain of frames on the call stack.
#[derive(Clone, Copy, Debug)]
pub(super) struct Frame<'a> {
    pub(super) parent: Option<&'a Frame<'a>>,
    pub(super) seg: Option<Seg<'a>>,
    pub(super) depth: usize,
}

impl<'a> Frame<'a> {
    pub(super) const ROOT: Frame<'static> = Frame {
        parent: None,
        seg: None,
        depth: 0,
    };

    pub(super) fn child(&'a self, seg: Seg<'a>) -> Frame<'a> {
        Frame {
            parent: Some(self),
            seg: Some(seg),
            depth: self.depth + 1,
        }
    }

    /// The path as a JSON Pointer, and which of its segments are array indices.
    pub(super) fn to_path(self) -> PathBuf {
        let mut segs = Vec::with_capacity(self.depth);
        let mut at = Some(&self);
        while let Some(frame) = at {
            if let Some(seg) = frame.seg {
                segs.push(seg);
            }
            at = frame.parent;
        }
        let mut pointer = String::new();
        let mut indices = 0u128;
        for (i, seg) in segs.iter().rev().enumerate() {
            match seg {
                Seg::Key(k) => push_escaped(&mut pointer, k),
                Seg::Index(n) => {
                    let _ = write!(pointer, "/{n}");
                    if i < MAX_DEPTH {
                        indices |= 1 << i;
                    }
                }
            }
        }
        PathBuf { pointer, indices }
    }
}

/// A written-out path: the pointer, and bit `i` set when segment `i` is an array index (so
/// noise found in one array element can be matched against every element).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PathBuf {
    pub(super) pointer: String,
    pub(super) indices: u128,
}

/// Whether the path `prefix` (with its index bits) covers `path`: every segment of `prefix`
/// is in `path`, an array index matching any array index.
pub(super) fn covers(prefix: &str, prefix_indices: u128, path: &str, path_indices: u128) -> bool {
    let mut ps = segments(prefix);
    let mut qs = segments(path);
    let mut i = 0usize;
    loop {
        let Some(p) = ps.next() else { return true };
        let Some(q) = qs.next() else { return false };
        let bit = if i < MAX_DEPTH { 1u128 << i } else { 0 };
        let (p_index, q_index) = (prefix_indices & bit != 0, path_indices & bit != 0);
        if p_index != q_index || (!p_index && p != q) {
            return false;
        }
        i += 1;
    }
}

fn segments(pointer: &str) -> impl Iterator<Item = &str> {
    pointer.split('/').skip(1)
}

/// What a configured path asks for at the place it names.
#[derive(Clone, Debug)]
pub(super) enum Rule {
    Ignore,
    Uuid,
    Timestamp,
    Tolerance(f64),
    /// The custom normaliser with this index.
    Custom(usize),
}

/// One state of the compiled paths: where the walk is, as far as the paths are concerned.
#[derive(Debug, Default)]
pub(super) struct State {
    keys: HashMap<Box<str>, u32>,
    other: Option<u32>,
    pub(super) ignore: bool,
    pub(super) uuid: bool,
    pub(super) timestamp: bool,
    pub(super) tolerance: Option<f64>,
    pub(super) customs: Box<[usize]>,
}

/// The configured paths compiled: a deterministic automaton over path segments.
#[derive(Debug, Default)]
pub(super) struct Rules {
    states: Vec<State>,
    root: Option<u32>,
}

#[derive(Default)]
struct Node {
    keys: BTreeMap<Box<str>, usize>,
    any: Option<usize>,
    rules: Vec<(usize, Rule)>,
}

impl Rules {
    /// Compiles `(path, rule)` pairs; a later tolerance at the same path replaces an earlier
    /// one, custom normalisers run in the order given.
    pub(super) fn compile(paths: &[(Vec<Pattern>, Rule)]) -> Result<Self, String> {
        if paths.is_empty() {
            return Ok(Self::default());
        }
        // A trie of the paths, wildcards as their own branch.
        let mut nodes = vec![Node::default()];
        for (order, (pattern, rule)) in paths.iter().enumerate() {
            let mut at = 0;
            for seg in pattern {
                let next = match seg {
                    Pattern::Key(k) => nodes[at].keys.get(k).copied(),
                    Pattern::Any => nodes[at].any,
                };
                at = match next {
                    Some(n) => n,
                    None => {
                        nodes.push(Node::default());
                        let n = nodes.len() - 1;
                        match seg {
                            Pattern::Key(k) => {
                                nodes[at].keys.insert(k.clone(), n);
                            }
                            Pattern::Any => nodes[at].any = Some(n),
                        }
                        n
                    }
                };
            }
            nodes[at].rules.push((order, rule.clone()));
        }
        // Subset construction: a state is the set of trie nodes the path so far reaches.
        let mut rules = Self::default();
        let mut ids: HashMap<Vec<usize>, u32> = HashMap::new();
        let mut work: Vec<Vec<usize>> = Vec::new();
        let root = rules.intern(&nodes, vec![0], &mut ids, &mut work)?;
        rules.root = Some(root);
        while let Some(set) = work.pop() {
            let id = ids[&set];
            let keys: BTreeSet<&Box<str>> =
                set.iter().flat_map(|&n| nodes[n].keys.keys()).collect();
            let anys: Vec<usize> = set.iter().filter_map(|&n| nodes[n].any).collect();
            for key in keys {
                let mut to: Vec<usize> = set
                    .iter()
                    .filter_map(|&n| nodes[n].keys.get(key).copied())
                    .chain(anys.iter().copied())
                    .collect();
                to.sort_unstable();
                to.dedup();
                let next = rules.intern(&nodes, to, &mut ids, &mut work)?;
                rules.states[id as usize].keys.insert(key.clone(), next);
            }
            if !anys.is_empty() {
                let mut to = anys;
                to.sort_unstable();
                to.dedup();
                let next = rules.intern(&nodes, to, &mut ids, &mut work)?;
                rules.states[id as usize].other = Some(next);
            }
        }
        Ok(rules)
    }

    fn intern(
        &mut self,
        nodes: &[Node],
        set: Vec<usize>,
        ids: &mut HashMap<Vec<usize>, u32>,
        work: &mut Vec<Vec<usize>>,
    ) -> Result<u32, String> {
        if let Some(&id) = ids.get(&set) {
            return Ok(id);
        }
        if self.states.len() >= MAX_STATES {
            return Err(format!(
                "the paths' wildcards combine into more than {MAX_STATES} cases; use fewer wildcards"
            ));
        }
        let mut found: Vec<&(usize, Rule)> = set.iter().flat_map(|&n| &nodes[n].rules).collect();
        found.sort_by_key(|(order, _)| *order);
        let mut state = State::default();
        let mut customs = Vec::new();
        for (_, rule) in found {
            match rule {
                Rule::Ignore => state.ignore = true,
                Rule::Uuid => state.uuid = true,
                Rule::Timestamp => state.timestamp = true,
                Rule::Tolerance(t) => state.tolerance = Some(*t),
                Rule::Custom(i) => customs.push(*i),
            }
        }
        state.customs = customs.into();
        let id = u32::try_from(self.states.len()).map_err(|_| "too many paths".to_owned())?;
        self.states.push(state);
        ids.insert(set.clone(), id);
        work.push(set);
        Ok(id)
    }

    /// The state at the document's root, if any path is configured.
    pub(super) fn root(&self) -> Option<u32> {
        self.root
    }

    pub(super) fn state(&self, id: u32) -> &State {
        &self.states[id as usize]
    }

    /// The state after stepping from `from` over `seg` (none when no path goes on from there).
    pub(super) fn step(&self, from: u32, seg: Seg<'_>) -> Option<u32> {
        let state = self.state(from);
        let found = match seg {
            Seg::Key(k) => state.keys.get(k),
            Seg::Index(i) if !state.keys.is_empty() => {
                let mut buf = [0u8; 20];
                state.keys.get(decimal(i, &mut buf))
            }
            Seg::Index(_) => None,
        };
        found.copied().or(state.other)
    }
}

/// `n` in decimal, written into `buf` without allocating.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Pattern {
        Pattern::Key(s.into())
    }

    #[test]
    fn parses_pointers_with_escapes_and_wildcards() {
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("/"), Ok(vec![key("")]));
        assert_eq!(
            parse("/a~1b/*/m~0n/0"),
            Ok(vec![key("a/b"), Pattern::Any, key("m~n"), key("0")])
        );
        assert!(parse("a").is_err());
        assert!(parse("/a~2").is_err());
        assert!(parse("/a~").is_err());
        assert!(parse(&"/a".repeat(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn decimal_writes_indices() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), "0");
        assert_eq!(decimal(407, &mut buf), "407");
        assert_eq!(decimal(usize::MAX, &mut buf), usize::MAX.to_string());
    }

    #[test]
    fn a_literal_and_a_wildcard_at_one_level_both_apply() {
        let rules = Rules::compile(&[
            (parse("/items/*/id").unwrap(), Rule::Uuid),
            (parse("/items/0/id").unwrap(), Rule::Timestamp),
            (parse("/items/1").unwrap(), Rule::Ignore),
        ])
        .unwrap();
        let root = rules.root().unwrap();
        let items = rules.step(root, Seg::Key("items")).unwrap();
        let first = rules.step(items, Seg::Index(0)).unwrap();
        let id = rules.state(rules.step(first, Seg::Key("id")).unwrap());
        assert!(id.uuid && id.timestamp && !id.ignore);
        let second = rules.step(items, Seg::Index(1)).unwrap();
        assert!(rules.state(second).ignore);
        let third = rules.step(items, Seg::Index(2)).unwrap();
        let id = rules.state(rules.step(third, Seg::Key("id")).unwrap());
        assert!(id.uuid && !id.timestamp);
        assert_eq!(rules.step(third, Seg::Key("name")), None);
        assert_eq!(rules.step(root, Seg::Key("meta")), None);
    }

    #[test]
    fn frames_write_escaped_pointers_with_index_bits() {
        let root = Frame::ROOT;
        let a = root.child(Seg::Key("a/b"));
        let i = a.child(Seg::Index(3));
        let c = i.child(Seg::Key("~c"));
        let path = c.to_path();
        assert_eq!(path.pointer, "/a~1b/3/~0c");
        assert_eq!(path.indices, 0b010);
        assert_eq!(Frame::ROOT.to_path(), PathBuf::default());
    }

    #[test]
    fn covers_generalises_indices_only() {
        assert!(covers("/items/0/ts", 0b010, "/items/7/ts", 0b010));
        assert!(covers("/items/0", 0b10, "/items/7/ts/x", 0b010));
        assert!(covers("", 0, "/anything", 0));
        assert!(!covers("/items/0/ts", 0b010, "/items/7/id", 0b010));
        // A key "0" of an object is not an array index.
        assert!(!covers("/items/0", 0b00, "/items/7", 0b10));
        assert!(!covers("/items/0/ts", 0b010, "/items/0", 0b10));
    }
}
