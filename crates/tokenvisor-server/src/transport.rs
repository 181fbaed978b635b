//! The HTTP/1 server loop of the admin API (and of the metrics address): a header-read
//! timeout, an idle timeout and a cap on concurrent connections, which `axum::serve`
//! does not offer.
//!
//! - **Header timeout**: a client has this long to send a request's headers, counted from
//!   the connection's start or from the previous response (hyper's `header_read_timeout`);
//!   then the connection is closed. A keep-alive connection waiting for its next request
//!   is closed after it too.
//! - **Idle timeout**: a connection that neither sends nor receives a byte for this long
//!   (a silent request body, a client that does not read its response) is asked to close
//!   (after its request, if one is in flight); still silent for another period, it is
//!   dropped. Event streams send a keep-alive comment every 15 s, so they stay.
//! - **Connection cap**: at most this many connections at once. Over the cap, the loop
//!   stops accepting: new connections wait in the kernel's listen backlog (their TCP
//!   handshake completes, their request is read) until one closes. Nothing is refused
//!   outright, so a burst of clients is served late rather than failed, while the
//!   timeouts above free the slots that slow or silent clients hold.
//!
//! The peer address reaches the handlers as `ConnectInfo<SocketAddr>` (the auth throttle
//! and the audit trail use it). On shutdown the loop stops accepting, every connection
//! finishes its in-flight request and closes (event streams end on the same signal),
//! and [`serve`] returns when all are closed.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Timeouts and the connection cap of a listener.
#[derive(Debug, Clone, Copy)]
pub struct TransportLimits {
    /// `TOKENVISOR_ADMIN_HEADER_TIMEOUT`: longest wait for a request's headers.
    pub header_timeout: Duration,
    /// `TOKENVISOR_ADMIN_IDLE_TIMEOUT`: longest silence (no byte either way).
    pub idle_timeout: Duration,
    /// `TOKENVISOR_ADMIN_MAX_CONNECTIONS`: most connections held at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` is cancelled and every connection has
/// closed (see the module documentation).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: TransportLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let max = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut warned_full = false;
    loop {
        // A slot first: over the cap, connections wait in the listen backlog.
        let slot = if let Ok(slot) = slots.clone().try_acquire_owned() {
            slot
        } else {
            if !warned_full {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "admin API holds its most connections (TOKENVISOR_ADMIN_MAX_CONNECTIONS); new ones wait"
                );
                warned_full = true;
            }
            tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a moment, as axum does.
                    tracing::warn!(error = %error, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        if slots.available_permits() > 0 {
            warned_full = false;
        }
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(builder, stream, peer, router, limits.idle_timeout, shutdown).await;
        });
    }
    drop(listener);
    // Every connection holds a slot until it closes.
    let _all = slots.acquire_many(max).await;
    Ok(())
}

/// One connection: served until it closes, goes idle, or the service shuts down.
async fn serve_connection(
    builder: hyper::server::conn::http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        started,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let last_activity = || started + Duration::from_millis(activity.load(Ordering::Relaxed));
    let mut closing = false;
    let mut asked_idle = false;
    loop {
        let idle_deadline = last_activity() + idle_timeout;
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(error = %error, client.address = %peer, "admin connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                if last_activity() + idle_timeout > Instant::now() {
                    continue;
                }
                if asked_idle {
                    tracing::debug!(client.address = %peer, "admin connection silent too long; dropping it");
                    return;
                }
                // Idle: closed now if no request is in flight, else after it.
                connection.as_mut().graceful_shutdown();
                closing = true;
                asked_idle = true;
                activity.store(elapsed_ms(started), Ordering::Relaxed);
            }
        }
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A TCP stream that records when a byte last went either way.
struct Tracked {
    inner: TcpStream,
    started: Instant,
    activity: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        self.activity.store(elapsed_ms(self.started), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
