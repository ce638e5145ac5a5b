//! The HTTP origin both downloaders fetch from: one server in this
//! process, on loopback, plain HTTP/1.1.
//!
//! - `GET /big/<any>`: `size` bytes from a 1 MiB buffer, sent as fast as
//!   the client reads (no disk, no copy per request).
//! - `GET /paced/<any>`: `chunks` chunks of `chunk` bytes, one every
//!   `interval`, after the headers; the time each chunk is handed to the
//!   connection is recorded, so that the suite knows when the bytes that
//!   make a download's progress event left the origin.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

/// The paced download's shape.
#[derive(Clone, Copy)]
pub struct Pace {
    pub chunks: usize,
    pub chunk: usize,
    pub interval: Duration,
}

pub struct Origin {
    pub addr: SocketAddr,
    /// When each paced chunk was sent (the last paced download's).
    pub sent: Arc<Mutex<Vec<Instant>>>,
}

struct Config {
    size: u64,
    pace: Pace,
    sent: Arc<Mutex<Vec<Instant>>>,
    block: Bytes,
}

/// A body of `left` bytes cut from one shared block.
struct Repeat {
    block: Bytes,
    left: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.block.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.block.slice(..n)))))
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A body fed by a channel, of a known length.
struct Channel {
    rx: mpsc::Receiver<Bytes>,
    len: u64,
}

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

enum Either {
    Big(Repeat),
    Paced(Channel),
}

impl Body for Either {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Either::Big(b) => Pin::new(b).poll_frame(cx),
            Either::Paced(c) => Pin::new(c).poll_frame(cx),
        }
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Either::Big(b) => b.size_hint(),
            Either::Paced(c) => c.size_hint(),
        }
    }
}

fn respond(cfg: &Config, req: &Request<hyper::body::Incoming>) -> Response<Either> {
    let path = req.uri().path();
    if path.starts_with("/paced/") {
        let p = cfg.pace;
        let (tx, rx) = mpsc::channel(4);
        let sent = cfg.sent.clone();
        sent.lock().unwrap().clear();
        let chunk = Bytes::from(vec![b'p'; p.chunk]);
        tokio::spawn(async move {
            for _ in 0..p.chunks {
                tokio::time::sleep(p.interval).await;
                sent.lock().unwrap().push(Instant::now());
                if tx.send(chunk.clone()).await.is_err() {
                    return;
                }
            }
        });
        let len = (p.chunks * p.chunk) as u64;
        return Response::builder()
            .header("content-length", len)
            .body(Either::Paced(Channel { rx, len }))
            .expect("a valid response");
    }
    let size = if path.starts_with("/big/") {
        cfg.size
    } else {
        0
    };
    let status = if path.starts_with("/big/") { 200 } else { 404 };
    Response::builder()
        .status(status)
        .header("content-length", size)
        .body(Either::Big(Repeat {
            block: cfg.block.clone(),
            left: size,
        }))
        .expect("a valid response")
}

impl Origin {
    /// Serves on a free loopback port until the process ends.
    pub async fn start(size: u64, pace: Pace) -> anyhow::Result<Origin> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sent = Arc::new(Mutex::new(Vec::new()));
        let cfg = Arc::new(Config {
            size,
            pace,
            sent: sent.clone(),
            block: Bytes::from(vec![b'x'; 1 << 20]),
        });
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let r = respond(&cfg, &req);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(Origin { addr, sent })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}
