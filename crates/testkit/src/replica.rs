//! The streaming replicas of the test PostgreSQL, and a way to hold their replay back.
//!
//! When `scripts/test` starts PostgreSQL itself, it also starts two hot-standby replicas that
//! stream its WAL, waits until each has replayed what the primary had, and exports
//! `TP_POSTGRES_REPLICA_URLS` (their URLs, comma-separated) and `TP_POSTGRES_REPLICA_PIDS`
//! (their postmasters' PIDs, in the same order). [`postgres_replicas`] reads both, skipping or
//! failing the test like [`server_url`] when the URLs are missing.
//!
//! [`Replica::pause_replay`] makes a replica lag on demand: it stops (`SIGSTOP`) the replica's
//! startup process, the one that replays WAL, and nothing else. The replica keeps answering
//! queries and keeps receiving WAL from the primary, but what it shows stays where it was until
//! the returned [`ReplayPaused`] guard is dropped. Linux only (it finds the process in `/proc`).
//!
//! ```no_run
//! use tower_patterns_testkit::postgres_replicas;
//!
//! fn reads_lag_behind_writes() {
//!     let Some(replicas) = postgres_replicas() else { return };
//!     let paused = replicas[0].pause_replay();
//!     // ... write on the primary: replicas[0] does not show it ...
//!     drop(paused);
//!     // ... replicas[0] catches up ...
//! }
//! ```

use std::{fmt, process::Command};

use crate::servers::{Server, server_url, with_database};

/// The variable that holds the replicas' postmaster PIDs, comma-separated, in the order of
/// their URLs in `TP_POSTGRES_REPLICA_URLS`.
pub const REPLICA_PIDS_VAR: &str = "TP_POSTGRES_REPLICA_PIDS";

/// One streaming replica of the test PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Its URL (`postgres://postgres@127.0.0.1:55433/postgres` under `scripts/test`).
    pub url: String,
    /// Its postmaster's PID.
    pub pid: u32,
}

impl Replica {
    /// Its URL with the database replaced by `db`: the replica of a database made on the
    /// primary (by `fresh_postgres`, say) has the same name.
    pub fn database(&self, db: &str) -> String {
        with_database(&self.url, db)
    }

    /// Stops the replica's replay until the returned guard is dropped: the replica still
    /// answers queries and still receives WAL, but shows nothing written on the primary from
    /// now on (nor anything it had received and not yet replayed).
    ///
    /// # Panics
    ///
    /// When the postmaster has no startup process (it is not a standby, or not running), or
    /// the process cannot be stopped (`kill -STOP` fails, say for lack of permission).
    pub fn pause_replay(&self) -> ReplayPaused {
        let startup = startup_process(self.pid).unwrap_or_else(|| {
            panic!(
                "no startup process under the postmaster {} of the replica {}: is it a running standby?",
                self.pid, self.url
            )
        });
        signal("-STOP", startup).unwrap_or_else(|e| {
            panic!(
                "stopping the startup process {startup} of the replica {}: {e}",
                self.url
            )
        });
        ReplayPaused { startup }
    }
}

/// The replica's replay stays paused while this lives; dropping it resumes the replay
/// (`SIGCONT` to the startup process), on a panic too. From [`Replica::pause_replay`].
#[must_use = "the replay resumes as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ReplayPaused {
    startup: u32,
}

impl ReplayPaused {
    /// The PID of the stopped startup process.
    pub const fn startup_pid(&self) -> u32 {
        self.startup
    }
}

impl Drop for ReplayPaused {
    fn drop(&mut self) {
        if let Err(e) = signal("-CONT", self.startup) {
            // Not a panic: this may run while a test is already unwinding. `scripts/test`
            // wakes the replicas' children again before stopping them.
            eprintln!(
                "resuming the startup process {}: {e} (the replica stays paused)",
                self.startup
            );
        }
    }
}

/// The streaming replicas of the test PostgreSQL, in the order `scripts/test` exported them;
/// `None` (skipped, see [`server_url`]) when `TP_POSTGRES_REPLICA_URLS` is not set.
///
/// # Panics
///
/// When the URLs are missing and `TP_REQUIRE_SERVICES=1` (the test fails), or when
/// `TP_POSTGRES_REPLICA_PIDS` does not hold one PID per URL.
pub fn postgres_replicas() -> Option<Vec<Replica>> {
    let urls = server_url(Server::PostgresReplicas)?;
    let pids = std::env::var(REPLICA_PIDS_VAR).ok();
    Some(pair(&urls, pids.as_deref()))
}

/// Pairs comma-separated URLs with comma-separated PIDs.
fn pair(urls: &str, pids: Option<&str>) -> Vec<Replica> {
    let urls = split(urls);
    let pids = split(pids.unwrap_or_default());
    assert_eq!(
        urls.len(),
        pids.len(),
        "{} holds {} URL(s) but {REPLICA_PIDS_VAR} holds {} PID(s): they must pair up, in order",
        Server::PostgresReplicas.env_var(),
        urls.len(),
        pids.len(),
    );
    urls.into_iter()
        .zip(pids)
        .map(|(url, pid)| Replica {
            url: url.to_owned(),
            pid: pid.parse().unwrap_or_else(|_| {
                panic!("{REPLICA_PIDS_VAR} holds {pid:?}, which is not a process id")
            }),
        })
        .collect()
}

fn split(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The child of `postmaster` whose command line starts with `postgres: startup`.
fn startup_process(postmaster: u32) -> Option<u32> {
    children(postmaster).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.starts_with(b"postgres: startup"))
    })
}

/// The children of `parent`: from `/proc/<pid>/task/<tid>/children` (one per thread) where
/// the kernel has it, else by the parent PID field of every `/proc/<pid>/stat`.
fn children(parent: u32) -> Vec<u32> {
    let lists: Vec<String> = std::fs::read_dir(format!("/proc/{parent}/task"))
        .into_iter()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .collect();
    if !lists.is_empty() {
        return lists
            .iter()
            .flat_map(|list| list.split_whitespace())
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(parent)
        })
        .collect()
}

/// The parent PID field of a `/proc/<pid>/stat` line: the second field after the command
/// name, which is in parentheses and may itself hold spaces and parentheses.
fn parent_of(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `kill <sig> <pid>`.
fn signal(sig: &str, pid: u32) -> Result<(), SignalError> {
    let out = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .output()
        .map_err(|e| SignalError(format!("running kill: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SignalError(format!(
            "kill {sig} {pid} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[derive(Debug)]
struct SignalError(String);

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pair_with_pids_in_order() {
        let replicas = pair(
            "postgres://postgres@127.0.0.1:55433/postgres, postgres://postgres@127.0.0.1:55434/postgres",
            Some("101,202"),
        );
        assert_eq!(
            replicas,
            [
                Replica {
                    url: "postgres://postgres@127.0.0.1:55433/postgres".into(),
                    pid: 101
                },
                Replica {
                    url: "postgres://postgres@127.0.0.1:55434/postgres".into(),
                    pid: 202
                },
            ]
        );
        assert_eq!(
            replicas[1].database("tp_x"),
            "postgres://postgres@127.0.0.1:55434/tp_x"
        );
    }

    #[test]
    fn a_count_mismatch_or_a_bad_pid_panics_with_the_reason() {
        let message = |f: fn()| {
            let err = std::panic::catch_unwind(f).expect_err("expected a panic");
            err.downcast_ref::<String>().cloned().unwrap_or_default()
        };
        let m = message(|| drop(pair("postgres://a/x,postgres://b/x", Some("1"))));
        assert!(m.contains("2 URL(s)") && m.contains("1 PID(s)"), "{m}");
        let m = message(|| drop(pair("postgres://a/x", None)));
        assert!(m.contains(REPLICA_PIDS_VAR), "{m}");
        let m = message(|| drop(pair("postgres://a/x", Some("12x"))));
        assert!(
            m.contains("\"12x\"") && m.contains("not a process id"),
            "{m}"
        );
    }

    #[test]
    fn the_parent_pid_is_read_past_an_odd_command_name() {
        assert_eq!(parent_of("42 (a) b (c)) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("42 (postgres) S 1 42"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn children_are_found_in_proc() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let found = children(std::process::id()).contains(&child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found, "the spawned child is listed");
        assert_eq!(startup_process(std::process::id()), None);
    }
}
