//! Hot reload: a new file is read, checked and compiled beside the running configuration,
//! then swapped in; requests in flight keep the generation they started with. A file that
//! does not pass is refused with one log line naming the file, line and key, and the running
//! configuration stays.

use std::{path::Path, sync::atomic::Ordering, time::Duration};

use tokio::task::JoinHandle;

use super::Gateway;
use crate::{
    compile::compile,
    config::{ConfigFileError, GatewayConfig},
};

/// Swaps a [`Gateway`]'s configuration; see [`Gateway::reloader`].
#[derive(Clone, Debug)]
pub struct Reloader {
    gateway: Gateway,
}

impl Reloader {
    pub(crate) fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }

    /// Reads the gateway's file again and swaps it in.
    ///
    /// # Errors
    ///
    /// The file's first problem (or that the gateway was built from a parsed configuration
    /// and has no file); the running configuration stays.
    pub fn reload_now(&self) -> Result<u64, ConfigFileError> {
        let Some(path) = self.gateway.shared.path.clone() else {
            return Err(ConfigFileError::whole(
                "(none)",
                "this gateway was built without a file",
            ));
        };
        self.swap(GatewayConfig::from_file(&path))
    }

    /// Swaps in `config`, a configuration already parsed.
    ///
    /// # Errors
    ///
    /// A problem found while compiling it (an unset secret, an unreadable key file); the
    /// running configuration stays.
    pub fn apply(&self, config: GatewayConfig) -> Result<u64, ConfigFileError> {
        self.swap(Ok(config))
    }

    fn swap(&self, config: Result<GatewayConfig, ConfigFileError>) -> Result<u64, ConfigFileError> {
        let shared = &self.gateway.shared;
        let _one_at_a_time = shared
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = shared.current.load_full();
        let next = current.generation + 1;
        let compiled =
            config.and_then(|c| compile(&shared.name, c, Some(&current), next, shared.seed));
        match compiled {
            Ok(compiled) => {
                shared.current.store(compiled.into());
                shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tower_patterns_gateway_reloads_total", "name" => shared.name.to_string(), "outcome" => "ok").increment(1);
                metrics::gauge!("tower_patterns_gateway_config_generation", "name" => shared.name.to_string()).set(next as f64);
                tracing::info!(gateway = %shared.name, generation = next, "configuration reloaded");
                Ok(next)
            }
            Err(e) => {
                shared.reloads_refused.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tower_patterns_gateway_reloads_total", "name" => shared.name.to_string(), "outcome" => "refused").increment(1);
                tracing::error!(
                    gateway = %shared.name,
                    file = e.file(),
                    line = e.line(),
                    key = e.key(),
                    "configuration refused; keeping generation {}: {e}",
                    current.generation,
                );
                *shared
                    .last_refusal
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Watches the file (and the key files it names) every `reload.poll_interval` and
    /// reloads when one's content changes; survives editors that replace the file. Returns
    /// `None` when the gateway has no file or polling is off.
    pub fn spawn_watch(&self) -> Option<JoinHandle<()>> {
        let path = self.gateway.shared.path.clone()?;
        let interval = self.gateway.shared.current.load().config.poll_interval();
        if interval.is_zero() {
            return None;
        }
        let this = self.clone();
        // Taken now, not in the task: a change made before the task first runs is seen.
        let mut seen = this.snapshot(&path);
        Some(tokio::spawn(async move {
            loop {
                let interval = this.gateway.shared.current.load().config.poll_interval();
                if interval.is_zero() {
                    // Polling turned off by a reload: look again only for it being turned on.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                tokio::time::sleep(interval.max(Duration::from_millis(10))).await;
                let now = this.snapshot(&path);
                if now != seen {
                    this.reload_off_thread().await;
                    // Taken after the reload, which may watch other key files now.
                    seen = this.snapshot(&path);
                }
            }
        }))
    }

    /// Reloads on a blocking thread: reading files and compiling (keys parsed, pools made)
    /// would otherwise stall the runtime's thread and every request on it.
    async fn reload_off_thread(&self) {
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.reload_now()).await;
    }

    fn snapshot(&self, path: &Path) -> Vec<Option<Vec<u8>>> {
        let mut files = vec![path.to_path_buf()];
        files.extend(self.gateway.shared.current.load().watched.iter().cloned());
        files.iter().map(|f| std::fs::read(f).ok()).collect()
    }

    /// Reloads on SIGHUP (Unix).
    ///
    /// # Errors
    ///
    /// When the signal handler cannot be installed.
    #[cfg(unix)]
    pub fn spawn_sighup(&self) -> std::io::Result<JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!(gateway = %this.gateway.name(), "SIGHUP: reloading");
                this.reload_off_thread().await;
            }
        }))
    }
}
