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
//! - **TLS** (optional, [`ServerTls`]): rustls with the ring provider, HTTP/1.1 over ALPN.
//!   The handshake runs in the connection's task, within the header timeout, so a client
//!   that never finishes it holds its slot no longer than a silent one. The certificate
//!   and key files are read again every reload interval: a new valid pair serves every
//!   connection accepted from then on (connections already open keep theirs); a broken or
//!   mismatched pair is logged as an error and the previous certificate stays.
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
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
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

/// The certificate and private key files of a TLS listener (PEM), and how often they are
/// checked for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `TOKENVISOR_ADMIN_TLS_CERT`: the certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// `TOKENVISOR_ADMIN_TLS_KEY`: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// `TOKENVISOR_ADMIN_TLS_RELOAD`: how often both files are read again.
    pub reload_interval: Duration,
}

/// The TLS side of a listener: an acceptor whose certificate follows the files.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    files: TlsFiles,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The certificate handed to every new handshake; replaced by the reload task.
#[derive(Debug)]
struct CurrentCert {
    key: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.key.read().ok().map(|key| key.clone())
    }
}

/// What the files held when last read (to tell a change).
type Contents = (Vec<u8>, Vec<u8>);

fn read_files(files: &TlsFiles) -> Result<Contents, String> {
    let cert = std::fs::read(&files.cert).map_err(|error| {
        format!(
            "cannot read TOKENVISOR_ADMIN_TLS_CERT {}: {error}",
            files.cert.display()
        )
    })?;
    let key = std::fs::read(&files.key)
        .map_err(|error| format!("cannot read TOKENVISOR_ADMIN_TLS_KEY {}: {error}", files.key.display()))?;
    Ok((cert, key))
}

/// A certificate chain and its key from PEM text; the key must belong to the leaf.
fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("the certificate file is not PEM: {error}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no CERTIFICATE block".into());
    }
    // The error of a PEM parse never quotes the key.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| format!("the key file holds no usable PRIVATE KEY block: {error}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|error| format!("unsupported private key: {error}"))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|error| format!("the key does not belong to the certificate: {error}"))?;
    Ok(certified)
}

impl ServerTls {
    /// Reads the files (an error names the file and what is wrong, never a key) and
    /// builds the acceptor: TLS 1.2 and 1.3 from the ring provider, passed explicitly
    /// (nothing is installed process-wide), HTTP/1.1 over ALPN.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let (cert, key) = read_files(&files)?;
        let current = Arc::new(CurrentCert {
            key: std::sync::RwLock::new(Arc::new(certified_key(&cert, &key).map_err(|error| {
                format!(
                    "invalid TOKENVISOR_ADMIN_TLS_CERT {} or TOKENVISOR_ADMIN_TLS_KEY {}: {error}",
                    files.cert.display(),
                    files.key.display()
                )
            })?)),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS set-up: {error}"))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            files,
        })
    }

    /// Reads the files every reload interval until `shutdown`; a changed, valid pair
    /// replaces the certificate for new connections, a broken one is logged and skipped
    /// (the previous certificate stays; the files are tried again once they change).
    pub async fn watch(self, shutdown: CancellationToken) {
        let mut seen = read_files(&self.files).ok();
        let mut ticks = tokio::time::interval(self.files.reload_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let files = self.files.clone();
            let read = match tokio::task::spawn_blocking(move || read_files(&files)).await {
                Ok(read) => read,
                Err(_) => continue,
            };
            match read {
                Ok(contents) if seen.as_ref() == Some(&contents) => {}
                Ok(contents) => {
                    match certified_key(&contents.0, &contents.1) {
                        Ok(key) => {
                            if let Ok(mut current) = self.current.key.write() {
                                *current = Arc::new(key);
                            }
                            tracing::info!(cert = %self.files.cert.display(), "admin API TLS certificate reloaded");
                        }
                        Err(error) => tracing::error!(
                            cert = %self.files.cert.display(),
                            key = %self.files.key.display(),
                            error = %error,
                            "new admin API TLS certificate refused; still serving the previous one"
                        ),
                    }
                    seen = Some(contents);
                }
                Err(error) => {
                    if seen.is_some() {
                        tracing::error!(error = %error, "admin API TLS files unreadable; still serving the previous certificate");
                    }
                    seen = None;
                }
            }
        }
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown` is
/// cancelled and every connection has closed (see the module documentation).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: TransportLimits,
    tls: Option<ServerTls>,
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
        let acceptor = tls.as_ref().map(|tls| tls.acceptor.clone());
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(builder, stream, peer, router, limits, acceptor, shutdown).await;
        });
    }
    drop(listener);
    // Every connection holds a slot until it closes.
    let _all = slots.acquire_many(max).await;
    Ok(())
}

/// One connection: its TLS handshake if any (within the header timeout), then served
/// until it closes, goes idle, or the service shuts down.
async fn serve_connection(
    builder: hyper::server::conn::http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: TransportLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let tracked = Tracked {
        inner: stream,
        started,
        activity: activity.clone(),
    };
    let Some(acceptor) = tls else {
        let io = TokioIo::new(tracked);
        return drive(
            builder,
            io,
            peer,
            router,
            limits.idle_timeout,
            shutdown,
            started,
            activity,
        )
        .await;
    };
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(tracked)) => handshake,
        () = shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => {
            let io = TokioIo::new(stream);
            drive(
                builder,
                io,
                peer,
                router,
                limits.idle_timeout,
                shutdown,
                started,
                activity,
            )
            .await;
        }
        Ok(Err(error)) => {
            tracing::debug!(error = %error, client.address = %peer, "admin TLS handshake failed");
        }
        Err(_) => {
            tracing::debug!(client.address = %peer, "admin TLS handshake not finished within the header timeout");
        }
    }
}

/// Serves HTTP/1 on `io` until it closes, goes idle, or the service shuts down.
#[allow(clippy::too_many_arguments)]
async fn drive<I>(
    builder: hyper::server::conn::http1::Builder,
    io: I,
    peer: SocketAddr,
    router: Router,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    started: Instant,
    activity: Arc<AtomicU64>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
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
