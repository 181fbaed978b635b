//! A TCP proxy a test can cut: it listens on `127.0.0.1:0` and forwards every connection
//! to an upstream address (PostgreSQL, say). [`TcpProxy::cut`] closes every open
//! connection and makes new ones close as soon as they are accepted, so the upstream looks
//! unreachable with fast errors; [`TcpProxy::restore`] forwards again. The listener stays
//! on the same port throughout, so clients keep their URL.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// A running proxy; it stops (listener and open connections) when dropped.
pub struct TcpProxy {
    address: SocketAddr,
    inner: Arc<Inner>,
    accept_loop: AbortHandle,
}

struct Inner {
    upstream: SocketAddr,
    cut: AtomicBool,
    /// The forwarding tasks of the open connections.
    connections: Mutex<JoinSet<()>>,
    /// Connections accepted while cut (closed at once).
    refused: AtomicU64,
}

impl TcpProxy {
    /// Binds `127.0.0.1:0` and forwards to `upstream`. Call inside a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("proxy binds");
        let address = listener.local_addr().expect("proxy address");
        let inner = Arc::new(Inner {
            upstream,
            cut: AtomicBool::new(false),
            connections: Mutex::new(JoinSet::new()),
            refused: AtomicU64::new(0),
        });
        let accepting = inner.clone();
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if accepting.cut.load(Ordering::SeqCst) {
                    accepting.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let forwarding = accepting.clone();
                let mut connections = accepting.connections.lock().unwrap();
                // Forget the connections that ended by themselves.
                while connections.try_join_next().is_some() {}
                connections.spawn(async move { forwarding.forward(client).await });
            }
        })
        .abort_handle();
        TcpProxy {
            address,
            inner,
            accept_loop,
        }
    }

    /// The address clients connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Closes every open connection; new ones are closed as soon as they are accepted.
    pub fn cut(&self) {
        self.inner.cut.store(true, Ordering::SeqCst);
        // Aborting a forwarding task drops both of its sockets: the peers see them closed.
        self.inner.connections.lock().unwrap().abort_all();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.inner.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.inner.cut.load(Ordering::SeqCst)
    }

    /// Connections accepted (and closed at once) while cut.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::SeqCst)
    }
}

impl Inner {
    async fn forward(&self, mut client: TcpStream) {
        let Ok(mut upstream) = TcpStream::connect(self.upstream).await else {
            return;
        };
        if self.cut.load(Ordering::SeqCst) {
            return;
        }
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.inner.connections.lock().unwrap().abort_all();
    }
}
