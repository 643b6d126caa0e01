//! The documentation tells the truth about the code: every guide is linked from the README,
//! every crate is in the README and in `docs/ARCHITECTURE.md`, every example has its line in
//! the README's table of examples, NATS is claimed only with the
//! feature that brings it (`cqrs-nats`), and no page cites the numbering of the material the
//! patterns were first listed in.

use std::{
    fs,
    path::{Path, PathBuf},
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The entries of `dir` (relative to the root) whose name ends with `suffix`, sorted.
fn entries(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

/// Every `.rs` file below `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn the_readme_links_every_guide() {
    let readme = read("README.md");
    let guides = entries("docs/patterns", ".md");
    assert!(guides.len() >= 9, "{guides:?}");
    for guide in guides {
        let link = format!("(docs/patterns/{})", name(&guide));
        assert!(readme.contains(&link), "README.md does not link {link}");
    }
}

#[test]
fn every_crate_is_in_the_readme_and_the_architecture() {
    let readme = read("README.md");
    let architecture = read("docs/ARCHITECTURE.md");
    let crates: Vec<_> = fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    assert!(crates.len() >= 9, "{crates:?}");
    for krate in crates {
        let dir = name(&krate);
        assert!(
            architecture.contains(&format!("crates/{dir}/")),
            "docs/ARCHITECTURE.md does not describe crates/{dir}/"
        );
        // The README is for users: an unpublished crate (the test helpers) is not theirs.
        let published = !read(krate.join("Cargo.toml"))
            .lines()
            .any(|l| l.trim() == "publish = false");
        assert!(
            !published || readme.contains(&format!("`tower-patterns-{dir}`")),
            "README.md does not list tower-patterns-{dir}"
        );
    }
    // Each landed pattern crate has a section of its own, not only a line in the layout.
    for section in [
        "## Core",
        "## The circuit breaker",
        "## The bulkhead",
        "## Retry",
        "## Caching",
        "## Rate limiting",
        "## Multi-tenancy",
        "## Sharding",
        "## Event sourcing",
        "## CQRS",
        "## Eventual consistency",
    ] {
        assert!(
            architecture.contains(section),
            "docs/ARCHITECTURE.md has no {section:?}"
        );
    }
}

#[test]
fn nats_is_claimed_only_with_its_feature() {
    // The feature exists, and brings the client.
    let cqrs = read("crates/cqrs/Cargo.toml");
    assert!(
        cqrs.contains("nats = [\"dep:async-nats\"]"),
        "crates/cqrs has no nats feature"
    );
    let manifest = read("Cargo.toml");
    let description = manifest
        .lines()
        .find(|l| l.starts_with("description"))
        .unwrap();
    for (file, text) in [
        ("README.md", read("README.md")),
        ("src/lib.rs", read("src/lib.rs")),
        ("Cargo.toml", description.to_owned()),
    ] {
        for line in text.lines() {
            let lower = line.to_ascii_lowercase();
            if lower.contains("nats") || lower.contains("jetstream") {
                assert!(
                    lower.contains("cqrs-nats") || lower.contains("planned"),
                    "{file} claims NATS without naming its feature cqrs-nats: {line}"
                );
            }
        }
    }
}

/// Whether `text` cites "Q1" to "Q5" as a word.
fn cites_q(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.windows(2).enumerate().any(|(i, w)| {
        let word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let word_end = bytes
            .get(i + 2)
            .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_');
        w[0] == b'Q' && (b'1'..=b'5').contains(&w[1]) && word_start && word_end
    })
}

#[test]
fn no_page_cites_the_original_numbering() {
    assert!(cites_q("design Q3 (a payment") && cites_q("(Q1)") && !cites_q("Q12 q3 XQ3"));
    let mut files = vec![
        root().join("README.md"),
        root().join("src/lib.rs"),
        root().join("docs/ARCHITECTURE.md"),
    ];
    files.extend(entries("docs/patterns", ".md"));
    // Examples may be folders (`examples/storefront/`): every file below.
    files.extend(rust_files(&root().join("examples")));
    // This file names what it looks for, so it is the one file not read.
    files.extend(
        entries("tests", ".rs")
            .into_iter()
            .filter(|f| name(f) != "docs_claims.rs"),
    );
    for krate in entries("crates", "") {
        files.extend(rust_files(&krate));
    }
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_ascii_lowercase();
            assert!(
                !(lower.contains("the seed") || lower.contains("seed pattern") || cites_q(line)),
                "{}:{}: {line}",
                file.display(),
                n + 1
            );
        }
    }
}

#[test]
fn every_example_is_in_the_readme() {
    let readme = read("README.md");
    let table = readme
        .split("## Examples")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has an Examples section");
    // An example is a file or a directory with a `main.rs` under `examples/`.
    let examples: Vec<String> = fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            if p.is_dir() && p.join("main.rs").is_file() {
                Some(name(&p))
            } else if p.extension().is_some_and(|e| e == "rs") {
                Some(name(&p).trim_end_matches(".rs").to_owned())
            } else {
                None
            }
        })
        .collect();
    assert!(examples.len() >= 15, "{examples:?}");
    for example in examples {
        assert!(
            table.contains(&format!("`{example}`")),
            "README.md's table of examples does not list `{example}`"
        );
    }
}
