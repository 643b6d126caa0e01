//! Keeping a registry's cache in step with the tables: `LISTEN` on their channel.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket, tls::NoTlsStream};
use tower_patterns_core::tenant::TenantId;

use super::registry::{PostgresTenants, store_err};
use crate::{Registry, StoreError, registry::parse_hash};

/// Keeps a [`Registry`] over [`PostgresTenants`] in step with its tables, returned by
/// [`listen`]: a task on its own connection (not one of the pool's) that `LISTEN`s on
/// [`CHANGES_CHANNEL`](super::CHANGES_CHANNEL) and invalidates each changed tenant or key at once, so a revoked key
/// or a suspension applies to the next request rather than when the cache entry expires.
///
/// When the connection drops, everything cached is invalidated (changes may be missed while
/// it is down), and the task reconnects, backing off from 100 ms to 30 s, and invalidates
/// everything again once it listens. Dropping the handle stops the task.
#[derive(Debug)]
pub struct RegistryListener {
    task: tokio::task::JoinHandle<()>,
    notifications: Arc<AtomicU64>,
}

impl RegistryListener {
    /// How many notifications the task has applied so far.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::SeqCst)
    }
}

impl Drop for RegistryListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts keeping `registry` in step with the registry tables of the database `config`
/// names (see [`RegistryListener`]). Returns once the first connection listens, so a change
/// committed after this returns is seen. Call [`PostgresTenants::migrate`] first: it installs
/// the triggers that send the notifications.
///
/// # Errors
///
/// When the first connection or its `LISTEN` fails.
pub async fn listen(
    registry: Registry<PostgresTenants>,
    config: tokio_postgres::Config,
) -> Result<RegistryListener, StoreError> {
    let first = connect_listening(&config).await.map_err(store_err)?;
    let notifications = Arc::new(AtomicU64::new(0));
    let count = notifications.clone();
    let task = tokio::spawn(async move {
        let mut listening = Some(first);
        let mut backoff = FIRST_BACKOFF;
        loop {
            if let Some((client, mut connection, early)) = listening.take() {
                backoff = FIRST_BACKOFF;
                for payload in early {
                    apply(&registry, &payload);
                    count.fetch_add(1, Ordering::SeqCst);
                }
                while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx))
                    .await
                    .and_then(Result::ok)
                {
                    if let AsyncMessage::Notification(note) = message {
                        apply(&registry, note.payload());
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
                drop(client);
                tracing::warn!(
                    target: "tower_patterns::tenant",
                    "tenant registry notifications lost; the cache is cleared until they resume"
                );
                registry.invalidate_all();
            }
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            if let Ok(again) = connect_listening(&config).await {
                // Changes made while no one listened were not announced.
                registry.invalidate_all();
                listening = Some(again);
            }
        }
    });
    Ok(RegistryListener {
        task,
        notifications,
    })
}

/// The wait before the first reconnection of the listener.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The wait after `backoff` when reconnecting failed again: doubled, at most 30 s.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(Duration::from_secs(30))
}

/// A listening connection, and the notifications read while its `LISTEN` completed.
type Listening = (Client, Connection<Socket, NoTlsStream>, Vec<String>);

/// A connection that listens on [`CHANGES_CHANNEL`](super::CHANGES_CHANNEL): the `LISTEN` is sent while the
/// connection is driven by hand, which must go on doing so to receive the notifications.
/// Those that arrive with the `LISTEN`'s answer are kept for the caller to apply.
async fn connect_listening(
    config: &tokio_postgres::Config,
) -> Result<Listening, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut closed = false;
    let mut early = Vec::new();
    {
        let mut statement = std::pin::pin!(client.batch_execute("LISTEN tp_tenant_changes"));
        std::future::poll_fn(|cx| {
            while !closed {
                match connection.poll_message(cx) {
                    Poll::Ready(Some(Ok(AsyncMessage::Notification(note)))) => {
                        early.push(note.payload().to_owned());
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => closed = true,
                    Poll::Pending => break,
                }
            }
            statement.as_mut().poll(cx)
        })
        .await?;
    }
    Ok((client, connection, early))
}

/// Applies one notification: `tenant:<id>`, `key:<hex sha256>`, or anything else (`all`)
/// which clears the whole cache.
fn apply(registry: &Registry<PostgresTenants>, payload: &str) {
    if let Some(id) = payload.strip_prefix("tenant:") {
        // An id that is not a valid tenant id was never cached.
        if let Ok(id) = TenantId::new(id) {
            registry.invalidate(&id);
        }
    } else if let Some(hash) = payload.strip_prefix("key:").and_then(parse_hash) {
        registry.invalidate_api_key(&hash);
    } else {
        registry.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnection_backs_off_doubling_to_thirty_seconds() {
        let mut waits = vec![FIRST_BACKOFF];
        while waits.len() < 11 {
            waits.push(next_backoff(*waits.last().unwrap()));
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [
                100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000
            ]
        );
    }
}
