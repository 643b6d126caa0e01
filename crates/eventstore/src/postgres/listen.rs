//! The connection that listens for appends, as a wake-up for readers.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_postgres::NoTls;

/// Keeps a connection that LISTENs for appends and bumps `head`; reconnects after failures.
pub(super) async fn listen(config: tokio_postgres::Config, head: watch::Sender<u64>) {
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let listening = async {
                client.batch_execute("LISTEN tp_events").await?;
                // Keep the client alive while messages flow.
                std::future::pending::<()>().await;
                Ok::<_, tokio_postgres::Error>(())
            };
            tokio::pin!(listening);
            loop {
                tokio::select! {
                    res = &mut listening => { let _ = res; break; }
                    msg = messages.next() => match msg {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                            head.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
