//! The listeners: HTTP/1.1 on hyper with a header read timeout, keep-alive and a graceful
//! drain; and the admin listener.

use std::{
    convert::Infallible,
    future::Future,
    io,
    sync::{Arc, atomic::Ordering},
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};

use super::Gateway;

impl Gateway {
    /// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops accepting, marks
    /// itself not ready and lets requests in flight finish (up to `server.drain_timeout`,
    /// default 30 s).
    ///
    /// A client that does not send a request's headers within `server.header_read_timeout`
    /// (default 10 s) has its connection closed: a slow client cannot hold a connection. The
    /// settings of a connection are those of the generation current when it was accepted.
    ///
    /// # Errors
    ///
    /// An error of `accept` that is not about one connection (the listener failed).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        // At most `server.max_connections` open at once: past it, the listener's backlog waits.
        let max = self.shared.current.load().settings.max_connections;
        let open = Arc::new(Semaphore::new(max));
        tracing::info!(gateway = %self.name(), address = ?listener.local_addr().ok(), "listening");
        loop {
            let permit = tokio::select! {
                permit = open.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        accept_failed(&e).await?;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let settings = self.shared.current.load().settings.clone();
            let gateway = self.clone();
            let client = super::service::Peer::new(peer);
            let service = service_fn(move |req| {
                let fut = gateway.serve_one(req, Some(client.clone()));
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_read_timeout)
                .keep_alive(true);
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
        self.shared.draining.store(true, Ordering::Relaxed);
        let drain = self.shared.current.load().settings.drain_timeout;
        tracing::info!(gateway = %self.name(), "draining");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!(gateway = %self.name(), "drained"),
            () = tokio::time::sleep(drain) => tracing::warn!(gateway = %self.name(), "drain timed out; closing"),
        }
        Ok(())
    }

    /// Serves the admin routes on `listener` until `shutdown` completes: `/healthz` (200
    /// while the process serves), `/readyz` (503 while draining), `/metrics` (Prometheus
    /// text; with `admin.token_env` set, only with that bearer token).
    ///
    /// # Errors
    ///
    /// An error of `accept` that is not about one connection.
    pub async fn serve_admin(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        accept_failed(&e).await?;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let gateway = self.clone();
            let service = service_fn(move |req| {
                let res = crate::admin::answer(&gateway, &req);
                async move { Ok::<_, Infallible>(res) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }
}

/// After a failed `accept`: go on at once when it was about one connection, after a pause
/// when the process is out of file descriptors (so the loop does not spin while others
/// close), and stop on anything else.
async fn accept_failed(e: &io::Error) -> io::Result<()> {
    match e.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {
            tracing::debug!(error = %e, "accept failed for one connection");
            Ok(())
        }
        _ if e.raw_os_error().is_some_and(|c| c == 24 || c == 23) => {
            // EMFILE, ENFILE
            tracing::warn!(error = %e, "out of file descriptors; accepting again in 100 ms");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Ok(())
        }
        _ => Err(io::Error::new(e.kind(), e.to_string())),
    }
}
