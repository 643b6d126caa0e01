//! Mutants of the sample configuration file (lines deleted, duplicated, swapped or added,
//! characters replaced, the file cut short, values retyped) never make the parser panic, and
//! every refusal points at a line and column that exist in the mutant.

use std::{ops::Range, path::PathBuf};

use proptest::prelude::*;
use tower_patterns_gateway::GatewayConfig;

fn sample() -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "../../examples/gateway/gateway.toml",
    ]
    .iter()
    .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A position: taken modulo the number of places there are.
type Index = usize;

fn pick(i: Index, places: usize) -> usize {
    i % places
}

/// One change to a file.
#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    InsertBogus(Index),
    ReplaceChar(Index, char),
    Truncate(Index),
    /// A quoted string value becomes `5`, a number becomes `"x"`.
    Retype(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<usize>().prop_map(Mutation::InsertBogus),
        (
            any::<usize>(),
            prop::sample::select(vec!['=', '[', ']', '"', '{', '}', ',', '\n', '0', 'a'])
        )
            .prop_map(|(i, c)| Mutation::ReplaceChar(i, c)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::Retype),
    ]
}

/// The byte ranges of the values after `= ` that are quoted strings or numbers.
fn values(text: &str) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    for (eq, _) in text.match_indices("= ") {
        let start = eq + 2;
        let rest = &text[start..];
        if let Some(quoted) = rest.strip_prefix('"') {
            if let Some(end) = quoted.find(['"', '\n']) {
                found.push(start..start + end + 2);
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if end > 0 {
                found.push(start..start + end);
            }
        }
    }
    found
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    match m {
        Mutation::DeleteLine(i) if !lines.is_empty() => {
            let at = pick(*i, lines.len());
            lines.remove(at);
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let i = pick(*i, lines.len());
            lines.insert(i, lines[i]);
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => {
            let n = lines.len();
            lines.swap(pick(*a, n), pick(*b, n));
        }
        Mutation::InsertBogus(i) => {
            let at = pick(*i, lines.len() + 1);
            lines.insert(at, "bogus = 1\n");
        }
        Mutation::ReplaceChar(i, c) => {
            let chars: Vec<(usize, char)> = text.char_indices().collect();
            if chars.is_empty() {
                return text.to_owned();
            }
            let (at, old) = chars[pick(*i, chars.len())];
            return format!("{}{c}{}", &text[..at], &text[at + old.len_utf8()..]);
        }
        Mutation::Truncate(i) => {
            let boundaries: Vec<usize> = text
                .char_indices()
                .map(|(at, _)| at)
                .chain([text.len()])
                .collect();
            return text[..boundaries[pick(*i, boundaries.len())]].to_owned();
        }
        Mutation::Retype(i) => {
            let found = values(text);
            if found.is_empty() {
                return text.to_owned();
            }
            let range = found[pick(*i, found.len())].clone();
            let new = if text[range.clone()].starts_with('"') {
                "5"
            } else {
                "\"x\""
            };
            return format!("{}{new}{}", &text[..range.start], &text[range.end..]);
        }
        _ => {}
    }
    lines.concat()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// One to three mutations of the sample: the parser returns, and an error's line is one of
    /// the mutant's (or the one after its last newline), its column one on that line, and its
    /// `Display` starts with `file:line:column:`.
    #[test]
    fn mutants_of_the_sample_are_refused_at_a_place_in_them(
        mutations in prop::collection::vec(mutation(), 1..=3),
    ) {
        let mut mutant = sample();
        for m in &mutations {
            mutant = apply(&mutant, m);
        }
        if let Err(e) = GatewayConfig::parse(&mutant, "mutated.toml") {
            let lines: Vec<&str> = mutant.split('\n').collect();
            prop_assert!(
                (1..=mutant.lines().count() + 1).contains(&e.line()),
                "line {} of {}: {e}", e.line(), lines.len()
            );
            let line_chars = lines.get(e.line() - 1).map_or(0, |l| l.chars().count());
            prop_assert!(
                (1..=line_chars + 1).contains(&e.column()),
                "column {} of a line of {line_chars} characters: {e}", e.column()
            );
            prop_assert_eq!(e.file(), "mutated.toml");
            let display = e.to_string();
            let prefix = format!("mutated.toml:{}:{}: ", e.line(), e.column());
            prop_assert!(display.starts_with(&prefix), "{display}");
            prop_assert!(display.ends_with(e.message()), "{display}");
        }
    }
}

/// Every kind of mutation changes the sample, and a retyped value is refused at its line.
#[test]
fn each_mutation_changes_the_sample() {
    let text = sample();
    let first = 0;
    let all = [
        Mutation::DeleteLine(first),
        Mutation::DuplicateLine(first),
        Mutation::SwapLines(first, 5),
        Mutation::InsertBogus(first),
        Mutation::ReplaceChar(first, '='),
        Mutation::Truncate(100),
        Mutation::Retype(first),
    ];
    for m in &all {
        assert_ne!(apply(&text, m), text, "{m:?}");
    }
    // The first value of the sample is server.listen's address.
    let e =
        GatewayConfig::parse(&apply(&text, &Mutation::Retype(first)), "mutated.toml").unwrap_err();
    assert_eq!(e.key(), "server.listen");
    assert_eq!(
        e.line(),
        text.lines()
            .position(|l| l.starts_with("listen = "))
            .unwrap()
            + 1
    );
}
