//! Crash tests with a child process: the test binary runs one of its own tests as the child,
//! reads the lines it prints, and kills it with SIGKILL at a point the lines choose.
//!
//! The child test is a no-op unless its environment variable is set; it prints flushed lines
//! (`ready`, `lease 1234`, `applied 17/42`...) that the parent waits for, never sleeping to
//! guess where the child stands.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_patterns_testkit::process::ChildTest;
//!
//! # async fn parent() {
//! let mut child = ChildTest::spawn("child_appends_until_killed", &[("TP_CHILD", "1")]);
//! let count = child.wait_for("acked ", Duration::from_secs(30)).await; // the text after "acked "
//! child.kill9(); // SIGKILL; asserts the child died of it
//! # let _ = count; }
//! ```

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::sync::mpsc;

/// A child process running one test of the current test binary; see the
/// [module docs](self). Dropping it kills the child if it still runs.
#[derive(Debug)]
pub struct ChildTest {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: PathBuf,
}

impl ChildTest {
    /// Runs test `test` of the current binary (`--exact test --nocapture --test-threads=1`)
    /// with the extra environment `env`; its stdout is read line by line, its stderr goes to
    /// a file (shown by [`stderr`](Self::stderr) and in every panic message).
    ///
    /// # Panics
    ///
    /// When the process cannot be started.
    pub fn spawn(test: &str, env: &[(&str, &str)]) -> Self {
        let stderr = std::env::temp_dir().join(format!(
            "tp-child-{}-{}.stderr",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("a file for the child's stderr"))
            .spawn()
            .expect("start the child test");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            name: test.to_owned(),
            child,
            lines,
            stderr,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The next line the child prints, or `None` when it closed its stdout or `within` passed.
    pub async fn next_line(&mut self, within: Duration) -> Option<String> {
        tokio::time::timeout(within, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// Skips lines until one contains `marker`, and returns the text after it (the test
    /// harness may print its `test ... ` on the same line, before the child's text).
    ///
    /// # Panics
    ///
    /// When no such line comes within `within` (the message holds the child's stderr).
    pub async fn wait_for(&mut self, marker: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_line(left).await {
                Some(line) => {
                    if let Some((_, rest)) = line.split_once(marker) {
                        return rest.trim().to_owned();
                    }
                }
                None => panic!(
                    "child {} printed no line with {marker:?} within {within:?}\n--- its stderr ---\n{}",
                    self.name,
                    self.stderr()
                ),
            }
        }
    }

    /// Whether the child is still running.
    ///
    /// # Panics
    ///
    /// When its status cannot be read.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("the child's status").is_none()
    }

    /// Kills the child with SIGKILL and waits for it.
    ///
    /// # Panics
    ///
    /// When it had exited before, or did not die of SIGKILL.
    pub fn kill9(&mut self) {
        assert!(
            self.is_running(),
            "child {} exited before the kill\n--- its stderr ---\n{}",
            self.name,
            self.stderr()
        );
        self.child.kill().expect("SIGKILL the child");
        let status = self.child.wait().expect("the child's exit status");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt as _;
            assert_eq!(
                status.signal(),
                Some(9),
                "child {} died of SIGKILL ({status})\n--- its stderr ---\n{}",
                self.name,
                self.stderr()
            );
        }
        #[cfg(not(unix))]
        let _ = status;
    }
}

impl Drop for ChildTest {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
}
