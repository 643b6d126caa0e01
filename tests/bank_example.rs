//! The bank example (`examples/bank.rs`) run as a program: each command is a child process (this
//! test binary again, running the example's `run`) in its own working directory, as a user
//! runs it. Money is checked arithmetic: a deposit the balance cannot hold is refused with a
//! typed answer and stores nothing, and the account loads afterwards; the usage touches no file.
#![cfg(feature = "eventstore")]

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

#[allow(dead_code, reason = "the example's `main`: the child calls `run`")]
#[path = "../examples/bank.rs"]
mod bank;

const ARGS: &str = "TP_BANK_EXAMPLE_ARGS";

/// The child: runs the example with the arguments in `TP_BANK_EXAMPLE_ARGS` (one per line)
/// and exits with its status. A no-op unless run as the child.
#[test]
fn child_runs_the_example() {
    let Ok(args) = std::env::var(ARGS) else {
        return;
    };
    let args = args.lines().map(str::to_owned).collect();
    let code = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bank::run(args));
    let status = if code == ExitCode::SUCCESS {
        0
    } else if code == ExitCode::from(2) {
        2
    } else {
        1
    };
    std::process::exit(status);
}

/// Runs `bank ARGS...` in `dir`: its exit status and what it printed.
fn bank(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_runs_the_example",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ARGS, args.join("\n"))
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "bank {args:?} panicked: {stderr}\n{stdout}"
    );
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("bank {args:?} was killed: {stderr}"));
    (code, stdout)
}

/// An empty directory of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tp-bank-example-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn deposits_that_would_overflow_are_refused_and_the_account_still_loads() {
    if std::env::var(ARGS).is_ok() {
        return;
    }
    let dir = TempDir::new("overflow");
    let d = &dir.0;
    let max = u64::MAX.to_string();
    let half = i64::MAX.to_string(); // 2^63 - 1: two of them are u64::MAX - 1

    assert_eq!(bank(d, &["open", "a", "ada"]).0, 0);
    let (code, out) = bank(d, &["deposit", "a", &half]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(bank(d, &["deposit", "a", &half]).0, 0);
    // 2^64 - 2 + 2 does not fit: refused, typed, nothing stored.
    let (code, out) = bank(d, &["deposit", "a", "2"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("a: refused: the balance cannot exceed 18446744073709551615"),
        "{out}"
    );
    let (code, out) = bank(d, &["balance", "a"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("a: balance {} after 3 events", u64::MAX - 1)),
        "{out}"
    );
    // Exactly to the top is fine; one more is refused.
    assert_eq!(bank(d, &["deposit", "a", "1"]).0, 0);
    let (code, out) = bank(d, &["deposit", "a", "1"]);
    assert!(code == 1 && out.contains("refused"), "{out}");
    let (code, out) = bank(d, &["balance", "a"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("a: balance {max} after 4 events")),
        "{out}"
    );
    let (code, out) = bank(d, &["history", "a"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("Deposited").count(), 3, "{out}");

    // u64::MAX at once into an empty account fits; anything more does not.
    assert_eq!(bank(d, &["open", "b", "bo"]).0, 0);
    assert_eq!(bank(d, &["deposit", "b", &max]).0, 0);
    let (code, out) = bank(d, &["deposit", "b", &max]);
    assert!(code == 1 && out.contains("refused"), "{out}");
    let (code, out) = bank(d, &["withdraw", "b", &max]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = bank(d, &["balance", "b"]);
    assert!(
        code == 0 && out.contains("b: balance 0 after 3 events"),
        "{out}"
    );

    // An amount past u64::MAX is not a number the bank takes: refused before any file.
    let (code, out) = bank(d, &["deposit", "b", "18446744073709551616"]);
    assert!(code == 2 && out.contains("invalid amount"), "{out}");
}

#[test]
fn usage_touches_no_file() {
    if std::env::var(ARGS).is_ok() {
        return;
    }
    let dir = TempDir::new("usage");
    let d = &dir.0;
    for args in [
        &[][..],
        &["help"],
        &["deposit", "a"],
        &["deposit", "a", "lots"],
        &["balance", "a", "--at", "someday"],
        // Instants past what the clock holds, and years whose arithmetic would overflow.
        &["balance", "a", "--at", "18446744073709551615"],
        &["balance", "a", "--at", "9223372036854775807-01-01"],
        &["balance", "a", "--at", "-9223372036854775808-01-01"],
        &["balance", "a", "--at", "10000-01-01"],
        &["--db"],
        &["--db", "x.db", "frobnicate"],
    ] {
        let (code, out) = bank(d, args);
        assert_eq!(code, 2, "bank {args:?}: {out}");
        assert!(
            out.contains("usage: bank") || out.contains("invalid amount"),
            "bank {args:?}: {out}"
        );
        assert_eq!(
            files_in(d),
            Vec::<String>::new(),
            "bank {args:?} wrote a file"
        );
    }
    // A real command does create the database where it is told to.
    assert_eq!(bank(d, &["--db", "x.db", "open", "a", "ada"]).0, 0);
    assert!(files_in(d).contains(&"x.db".to_owned()));
}
