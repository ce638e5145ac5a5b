//! Fault suite 5, abuse: slow clients that never finish a request (on both
//! ports: request heads, REST bodies, TLS handshakes), floods of
//! connections, WebSockets whose peer stops reading, huge and deeply
//! nested JSON. Through all of it the server keeps serving everyone else,
//! and once the abuse stops its descriptors come back.
//!
//! Attackers connect from other loopback addresses (127.0.0.2...), the
//! way distinct hosts would; the well-behaved client uses 127.0.0.1.
//! Short in CI; `HYVE_LONG=1` attacks for longer.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::reliability::{self as rel, pick};
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn addr(url: &str) -> SocketAddr {
    url.split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A TCP connection to `to` from address `from`; `tiny`: the smallest
/// receive buffer, so the server's writes to it block after a few KB.
async fn tcp_from(to: SocketAddr, from: IpAddr, tiny: bool) -> std::io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    if tiny {
        s.set_recv_buffer_size(1)?;
    }
    s.connect(to).await
}

/// A TLS connection (handshake done) to `to` from `from`.
async fn tls_from(
    server: &TestServer,
    to: SocketAddr,
    from: IpAddr,
    tiny: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tcp_from(to, from, tiny).await?;
    let (config, _) = hyve_client::tls::client_config(&server.trust()).unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(to.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Keeps `n` connections from `from` doing `each` (which returns when the
/// server closes it) until aborted; counts connections made.
fn keep_attacking<F, Fut>(
    n: usize,
    made: Arc<AtomicUsize>,
    each: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    (0..n)
        .map(|_| {
            let (each, made) = (each.clone(), made.clone());
            tokio::spawn(async move {
                loop {
                    made.fetch_add(1, Ordering::Relaxed);
                    each().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect()
}

/// Writes `parts` one byte every `gap`, until the server closes.
async fn trickle<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, head: &[u8], gap: Duration) {
    if s.write_all(head).await.is_err() {
        return;
    }
    loop {
        tokio::time::sleep(gap).await;
        if s.write_all(b"X").await.is_err() || s.flush().await.is_err() {
            return;
        }
    }
}

/// A logged-in raw WebSocket from `from` whose socket has a tiny receive
/// window.
async fn ws_tiny_from(server: &TestServer, from: IpAddr) -> Option<RawWs> {
    let tcp = tcp_from(addr(&server.ws), from, true).await.ok()?;
    let mut request = server.ws.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", server.token().await).parse().unwrap(),
    );
    let (config, _) = hyve_client::tls::client_config(&server.trust()).unwrap();
    tokio_tungstenite::client_async_tls_with_config(
        request,
        tcp,
        None,
        Some(tokio_tungstenite::Connector::Rustls(config)),
    )
    .await
    .ok()
    .map(|(ws, _)| ws)
}

/// Floods `ws` with requests whose replies are large, never reading one.
async fn never_read(mut ws: RawWs) {
    for i in 0.. {
        let f = json!({"namespace": "sysadm", "name": "iohyve", "id": format!("n{i}"), "args": {"action": "listvms"}});
        match tokio::time::timeout(
            Duration::from_secs(60),
            ws.send(Message::Text(f.to_string().into())),
        )
        .await
        {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    // Blocked or cut: hold the socket, reading nothing, until aborted.
    let _held = ws;
    std::future::pending::<()>().await
}

/// Guests with long descriptions, so that listvms replies are large.
async fn many_guests(c: &Client, n: usize) {
    setup(c).await;
    for i in 0..n {
        let name = format!("guest{i:02}");
        c.iohyve("create", json!({"name": name, "size": "1M"}))
            .await
            .unwrap();
        c.iohyve(
            "setprop",
            json!({"name": name, "description": "d".repeat(250)}),
        )
        .await
        .unwrap();
    }
}

/// One round of well-behaved use: a new WebSocket that logs in and lists,
/// and a REST request. Its time, or what failed.
async fn well_behaved(server: &TestServer) -> Result<Duration, String> {
    let t = Instant::now();
    let c = tokio::time::timeout(
        Duration::from_secs(20),
        Client::connect_with(&server.ws, &server.options_as(USER, PASSWORD)),
    )
    .await
    .map_err(|_| "WebSocket connect and login took over 20 s".to_string())?
    .map_err(|e| format!("WebSocket: {e}"))?;
    c.iohyve("listvms", json!({}))
        .await
        .map_err(|e| format!("listvms: {e}"))?;
    drop(c);
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        server.rest_raw("/sysadm/iohyve", r#"{"action":"version"}"#),
    )
    .await
    .map_err(|_| "REST took over 20 s".to_string())?;
    if r.status() != 200 {
        return Err(format!("REST answered {}", r.status()));
    }
    Ok(t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_floods_and_stuck_readers_leave_others_served() {
    let secs = pick(20, 180);
    let timeout = 3;
    let dir = data_dir();
    let server = TestServer::start_with_config(
        dir.path(),
        &format!(
            "[limits]\nmax_connections = 64\nmax_connections_per_address = 8\nclient_timeout_secs = {timeout}\n"
        ),
    );
    let c = server.client().await;
    many_guests(&c, 30).await;
    drop(c);
    let pid = server.pid();
    well_behaved(&server).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rel::usage(pid);
    let server = Arc::new(server);
    let (ws, rest) = (addr(&server.ws), addr(&server.rest));
    let made = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();

    // Request heads, one byte a second, on both ports.
    for (port, from) in [(rest, ip(2)), (ws, ip(3))] {
        let s = server.clone();
        attackers.extend(keep_attacking(20, made.clone(), move || {
            let s = s.clone();
            async move {
                if let Ok(mut t) = tls_from(&s, port, from, false).await {
                    trickle(
                        &mut t,
                        b"PUT /sysadm/iohyve HTTP/1.1\r\nHost: h\r\nX-Slow: ",
                        Duration::from_secs(1),
                    )
                    .await;
                }
            }
        }));
    }
    // TLS handshakes that never finish: a record header, then nothing.
    for port in [rest, ws] {
        attackers.extend(keep_attacking(10, made.clone(), move || async move {
            if let Ok(mut t) = tcp_from(port, ip(4), false).await {
                let _ = t.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
                let mut buf = [0u8; 64];
                let _ = tokio::io::AsyncReadExt::read(&mut t, &mut buf).await;
            }
        }));
    }
    // REST bodies that never finish.
    {
        let s = server.clone();
        let token = s.token().await;
        attackers.extend(keep_attacking(20, made.clone(), move || {
            let (s, token) = (s.clone(), token.clone());
            async move {
                if let Ok(mut t) = tls_from(&s, rest, ip(5), false).await {
                    let head = format!(
                        "PUT /sysadm/iohyve HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\nContent-Length: 100000\r\n\r\n{{"
                    );
                    trickle(&mut t, head.as_bytes(), Duration::from_millis(500)).await;
                }
            }
        }));
    }
    // A flood: connect and drop, as fast as it goes, plain and with TLS.
    let flood = Arc::new(AtomicUsize::new(0));
    for i in 0..4 {
        let (s, flood) = (server.clone(), flood.clone());
        attackers.push(tokio::spawn(async move {
            loop {
                flood.fetch_add(1, Ordering::Relaxed);
                let port = if i % 2 == 0 { ws } else { rest };
                if i < 2 {
                    drop(tcp_from(port, ip(6), false).await);
                } else {
                    drop(tls_from(&s, port, ip(6), false).await);
                }
            }
        }));
    }
    // WebSockets whose peer sends and never reads again.
    for _ in 0..12 {
        let (s, made) = (server.clone(), made.clone());
        attackers.push(tokio::spawn(async move {
            loop {
                made.fetch_add(1, Ordering::Relaxed);
                match ws_tiny_from(&s, ip(7)).await {
                    Some(w) => {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(3 * timeout), never_read(w))
                                .await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }));
    }

    // Meanwhile, everyone else is served.
    let end = Instant::now() + Duration::from_secs(secs);
    let mut times = Vec::new();
    while Instant::now() < end {
        match well_behaved(&server).await {
            Ok(t) => times.push(t),
            Err(e) => panic!(
                "a well-behaved client was not served during the abuse: {e}\nserver log:\n{}",
                server.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = rel::usage(pid);
    for a in &attackers {
        a.abort();
    }
    for a in attackers {
        let _ = a.await;
    }
    // Everything the abuse held is let go.
    let fds = rel::fds_settle(pid, before.fds + 2, 3 * timeout + 15).await;
    assert!(
        fds <= before.fds + 2,
        "the server holds {fds} descriptors after the abuse, {} before",
        before.fds
    );
    well_behaved(&server).await.unwrap();
    let after = rel::usage(pid);
    times.sort();
    rel::record(
        "abuse",
        json!({
            "seconds": secs,
            "slow_and_stuck_connections": made.load(Ordering::Relaxed),
            "flood_connections": flood.load(Ordering::Relaxed),
            "well_behaved_rounds": times.len(),
            "well_behaved_median_ms": times[times.len() / 2].as_millis() as u64,
            "well_behaved_max_ms": times.last().unwrap().as_millis() as u64,
            "fds_before": before.fds, "fds_during": during.fds, "fds_after": fds,
            "rss_kb_before": before.rss_kb, "rss_kb_during": during.rss_kb, "rss_kb_after": after.rss_kb,
        }),
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    // All the slots, taken by WebSockets that stop reading with replies
    // pending: without a deadline on writes they would be held for ever.
    let dir = data_dir();
    let server = TestServer::start_with_config(
        dir.path(),
        "[limits]\nmax_connections = 3\nmax_connections_per_address = 3\nclient_timeout_secs = 3\n",
    );
    let c = server.client().await;
    many_guests(&c, 30).await;
    drop(c);
    let mut stuck = Vec::new();
    for _ in 0..3 {
        let w = ws_tiny_from(&server, ip(1)).await.expect("connect");
        stuck.push(tokio::spawn(never_read(w)));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    loop {
        match Client::connect_with(&server.ws, &server.options_as(USER, PASSWORD)).await {
            Ok(c) => {
                c.iohyve("version", json!({})).await.unwrap();
                break;
            }
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the stuck readers still hold every slot: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for s in stuck {
        s.abort();
    }
}

/// JSON nested 100 000 deep, and the largest bodies allowed made of many
/// small values: each answered with a clear error or served, the
/// connection (WebSocket) still usable, memory given back.
#[tokio::test]
async fn huge_and_deeply_nested_json() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let pid = server.pid();
    let c = server.client().await;
    c.iohyve("version", json!({})).await.unwrap();
    let before = rel::usage(pid);
    let max = 1 << 20;
    let deep_array = "[".repeat(100_000);
    let deep_object = "{\"a\":".repeat(100_000);
    let nested_ok = format!(
        "{{\"namespace\":\"sysadm\",\"name\":\"iohyve\",\"id\":\"n\",\"args\":{{\"action\":\"version\",\"x\":{}1{}}}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let many_numbers = {
        let mut s = String::from("{\"namespace\":\"sysadm\",\"name\":\"iohyve\",\"id\":\"m\",\"args\":{\"action\":\"version\",\"x\":[");
        while s.len() < max - 100 {
            s.push_str("0,");
        }
        s.push_str("0]}}");
        s
    };
    let many_keys = {
        let mut s = String::from("{\"namespace\":\"sysadm\",\"name\":\"iohyve\",\"id\":\"k\",\"args\":{\"action\":\"setprop\",\"name\":\"nosuch\"");
        let mut i = 0;
        while s.len() < max - 100 {
            s.push_str(&format!(",\"k{i}\":\"\""));
            i += 1;
        }
        s.push_str("}}");
        s
    };
    let long_string = format!(
        "{{\"namespace\":\"sysadm\",\"name\":\"iohyve\",\"id\":\"s\",\"args\":{{\"action\":\"create\",\"name\":\"{}\",\"size\":\"1G\"}}}}",
        "a".repeat(max - 200)
    );
    let long_flag = format!(
        "{{\"namespace\":\"sysadm\",\"name\":\"iohyve\",\"id\":\"f\",\"args\":{{\"action\":\"stop\",\"name\":\"g\",\"force\":\"{}\"}}}}",
        "y".repeat(max - 200)
    );
    let mut tried = 0;
    let mut ws = server.raw_ws("/").await;
    // The first rounds take the allocator to its high-water mark (glibc
    // keeps freed memory for reuse, an arena per thread); the later ones
    // must not add to it: a leak of a fraction of each request would.
    let mut warm = before;
    let rounds = pick(6, 40);
    for round in 0..rounds {
        if round == 3 {
            warm = rel::usage(pid);
        }
        for (what, text) in [
            ("deep array", &deep_array),
            ("deep object", &deep_object),
            ("nested 100", &nested_ok),
            ("a million numbers", &many_numbers),
            ("many keys", &many_keys),
            ("a 1 MB name", &long_string),
            ("a 1 MB flag", &long_flag),
        ] {
            let r = roundtrip(&mut ws, text).await;
            tried += 1;
            match what {
                "deep array" | "deep object" => {
                    assert_eq!(r["args"]["code"], "400", "{what}: {r}");
                    let d = r["args"]["detail"].as_str().unwrap();
                    assert!(d.contains("recursion limit"), "{what}: {d}");
                }
                "nested 100" | "a million numbers" => {
                    assert_eq!(r["name"], "response", "{what}: {r}")
                }
                _ => {
                    let e = r["args"].as_object().unwrap().values().next().unwrap()["error"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{what}: {r}"))
                        .to_string();
                    assert!(
                        e.len() < 400,
                        "{what}: the error echoes too much: {} bytes",
                        e.len()
                    );
                }
            }
            // The same over REST.
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            let body = if v.is_null() {
                text.clone()
            } else {
                v["args"].to_string()
            };
            let (status, reply) = server.rest("/sysadm/iohyve", &body).await;
            assert!(
                [200, 400, 404].contains(&status),
                "REST {what} round {round}: {status} {reply}"
            );
            assert!(reply.to_string().len() < 2000, "REST {what}: a long reply");
        }
    }
    c.iohyve("version", json!({})).await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rel::usage(pid);
    assert!(
        after.rss_kb < warm.rss_kb + 24 * 1024,
        "memory grew from {} kB after three rounds to {} kB after {rounds}",
        warm.rss_kb,
        after.rss_kb
    );
    assert!(
        after.fds <= before.fds + 1,
        "descriptors: {} before, {} after",
        before.fds,
        after.fds
    );
    rel::record(
        "hostile-json",
        json!({"requests": tried * 2, "rounds": rounds, "rss_kb_before": before.rss_kb, "rss_kb_after_warmup": warm.rss_kb, "rss_kb_after": after.rss_kb}),
    );
}
