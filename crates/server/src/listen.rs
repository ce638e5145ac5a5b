//! The accept loop both listeners share: the connection limit, the TLS
//! handshake, and HTTP/1.1 with upgrades, in place of `axum::serve`.
//!
//! Owning this loop gives what `axum::serve` cannot: a connection over the
//! limit gets a clear `503` (after its TLS handshake, so the client can read
//! it) instead of a hang; handshakes run in their own tasks with a deadline,
//! so a slow client never holds up the others; idle keep-alive connections
//! are closed; and the limit's permit lives inside the connection's I/O, so
//! it follows a WebSocket past the upgrade and is returned only when the
//! socket closes.
//!
//! One client cannot starve the others: no address may hold more than
//! `max_connections_per_address` of the slots (slow or stuck clients from
//! one place fill only their share), and a client that leaves the server's
//! writes unread for `client_timeout_secs` is cut off in the I/O itself
//! ([`Conn`]), whatever protocol runs above it: a WebSocket peer that
//! stops reading would otherwise hold its slot, its tasks and its queued
//! replies forever, since every other deadline waits on a read.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tower::Service;
use tracing::{debug, info};

use hyve_proto::{ErrorCode, ProtocolError};

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being refused at once; past this they are just closed.
const MAX_REFUSING: usize = 64;

/// The stream under HTTP: plain (loopback only) or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection: its stream, its place under the connection
/// limits, a token that keeps the server's shutdown waiting for it, and
/// the deadline of a write the client is not taking.
pub struct Conn {
    stream: Stream,
    _permit: OwnedSemaphorePermit,
    _address: AddressSlot,
    _alive: mpsc::Sender<()>,
    client_timeout: Duration,
    /// Armed when a write cannot proceed (the client's window is full);
    /// disarmed by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The client left a write untaken past the timeout: every later write
    /// fails at once.
    dead: bool,
}

impl Conn {
    /// Runs one write-side poll under the stall deadline: progress disarms
    /// it; `Pending` arms it, and once it fires the write fails with
    /// `TimedOut`, so whatever protocol runs above lets the connection go.
    fn write_with_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.dead {
            return Poll::Ready(Err(stall_error(self.client_timeout)));
        }
        match op(Pin::new(&mut self.stream), cx) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.client_timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.dead = true;
                    self.stalled = None;
                    return Poll::Ready(Err(stall_error(timeout)));
                }
                Poll::Pending
            }
        }
    }
}

fn stall_error(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the client took nothing the server wrote for {} s",
            timeout.as_secs()
        ),
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with_deadline(cx, |s, cx| s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .write_with_deadline(cx, |s, cx| s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .write_with_deadline(cx, |s, cx| s.poll_shutdown(cx))
    }
}

/// A connection's place in its address's share of the slots; returned on
/// drop.
struct AddressSlot {
    addresses: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    /// Takes a place for `ip` if it holds fewer than `max`.
    fn take(
        addresses: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max: usize,
    ) -> Option<Self> {
        let mut m = addresses.lock().expect("address table poisoned");
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            addresses: addresses.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = self.addresses.lock().expect("address table poisoned");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// What every connection of the server shares.
#[derive(Clone)]
pub struct Shared {
    pub tls: Option<TlsAcceptor>,
    /// The connection limit, both listeners together.
    pub slots: Arc<Semaphore>,
    pub max_connections: usize,
    /// Open connections per client address, and the most each may hold.
    addresses: Arc<Mutex<HashMap<IpAddr, usize>>>,
    pub max_per_address: usize,
    /// How long a client may take to send a request head or take a write.
    pub client_timeout: Duration,
    refusing: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    /// Clones live in every connection; the server waits until all are gone.
    pub alive: mpsc::Sender<()>,
}

impl Shared {
    pub fn new(
        tls: Option<TlsAcceptor>,
        net: &crate::config::NetLimits,
        shutdown: watch::Receiver<bool>,
        alive: mpsc::Sender<()>,
    ) -> Shared {
        Shared {
            tls,
            slots: Arc::new(Semaphore::new(net.max_connections)),
            max_connections: net.max_connections,
            addresses: Arc::default(),
            max_per_address: net.max_connections_per_address,
            client_timeout: net.client_timeout,
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            shutdown,
            alive,
        }
    }
}

/// Resolves once the server is stopping.
pub async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Accepts on `tcp` until shutdown, serving `router` on each connection.
pub async fn run(tcp: TcpListener, router: Router, shared: Shared) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let slot = AddressSlot::take(&shared.addresses, peer.ip(), shared.max_per_address);
        match (slot, shared.slots.clone().try_acquire_owned()) {
            (Some(slot), Ok(permit)) => {
                let (router, shared) = (router.clone(), shared.clone());
                tokio::spawn(
                    async move { serve(stream, peer, permit, slot, router, shared).await },
                );
            }
            (slot, _) => {
                let why = if slot.is_none() {
                    Refusal::Address
                } else {
                    Refusal::Server
                };
                drop(slot);
                let Ok(refusing) = shared.refusing.clone().try_acquire_owned() else {
                    continue; // dropped: closed at once
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    refuse(stream, peer, &shared, why).await;
                    drop(refusing);
                });
            }
        }
    }
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &Option<TlsAcceptor>,
) -> Option<Stream> {
    let Some(acceptor) = tls else {
        return Some(Stream::Plain(stream));
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(Stream::Tls(Box::new(s))),
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            info!(%peer, "TLS handshake timed out");
            None
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    slot: AddressSlot,
    router: Router,
    shared: Shared,
) {
    let Some(stream) = handshake(stream, peer, &shared.tls).await else {
        return;
    };
    let conn = Conn {
        stream,
        _permit: permit,
        _address: slot,
        _alive: shared.alive.clone(),
        client_timeout: shared.client_timeout,
        stalled: None,
        dead: false,
    };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.client_timeout)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(conn), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "connection ended");
            }
        }
        _ = stopping(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Which limit a refused connection is over.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// `max_connections`, all clients together.
    Server,
    /// `max_connections_per_address`.
    Address,
}

/// The reply to a connection over the limit: a complete HTTP response with
/// the error object, after reading the request head so that closing does
/// not reset the connection under the client's feet.
async fn refuse(stream: TcpStream, peer: SocketAddr, shared: &Shared, why: Refusal) {
    let detail = match why {
        Refusal::Server => {
            info!(%peer, limit = shared.max_connections, "too many connections: refused");
            format!(
                "the server has too many connections open (at most {}); try again later",
                shared.max_connections
            )
        }
        Refusal::Address => {
            info!(%peer, limit = shared.max_per_address, "too many connections from one address: refused");
            format!(
                "too many connections from {} (at most {} per address); close some and try again",
                peer.ip(),
                shared.max_per_address
            )
        }
    };
    let Some(mut stream) = handshake(stream, peer, &shared.tls).await else {
        return;
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = match &mut stream {
                Stream::Plain(s) => s.read(&mut buf).await,
                Stream::Tls(s) => s.read(&mut buf).await,
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = serde_json::json!({
        "args": ProtocolError::new(ErrorCode::ServiceUnavailable, detail).args()
    })
    .to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 5\r\n\r\n{body}",
        body.len()
    );
    let _ = match &mut stream {
        Stream::Plain(s) => {
            async {
                s.write_all(reply.as_bytes()).await?;
                s.shutdown().await
            }
            .await
        }
        Stream::Tls(s) => {
            async {
                s.write_all(reply.as_bytes()).await?;
                s.shutdown().await
            }
            .await
        }
    };
}
