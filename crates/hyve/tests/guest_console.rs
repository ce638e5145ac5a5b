//! The serial console: two WebSocket viewers of one guest get what it
//! printed before they joined and what it prints after; one types at a
//! time; `hyve console` drives the same console from a terminal-less pipe
//! and leaves on `~.`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;

use common::guest::*;
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Reads frames until the binary output seen so far contains `text`;
/// returns every text notice seen on the way.
async fn read_until(ws: &mut RawWs, seen: &mut String, text: &str) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut notices = Vec::new();
    let end = std::time::Instant::now() + GUEST_DEADLINE;
    while !seen.contains(text) {
        assert!(std::time::Instant::now() < end, "no {text:?} in {seen:?}");
        match tokio::time::timeout(GUEST_DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(Message::Text(t)))) => notices.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => {}
            other => panic!("console closed while waiting for {text:?}: {other:?}"),
        }
    }
    notices
}

async fn next_notice(ws: &mut RawWs) -> Value {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(GUEST_DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => {}
            other => panic!("no notice: {other:?}"),
        }
    }
}

#[tokio::test]
async fn viewers_writer_and_the_cli() {
    let dirs = GuestDirs::new();
    let data = dirs.data();
    let server = start_server(&data, "");
    let c = server.client().await;
    guest_with_iso(&c, &data, "re0", "con1", "hyve-test.iso").await;

    // A console of a stopped guest opens and says so; unknown guests and
    // bad names are refused before the upgrade.
    let mut early = server.raw_ws("/console/con1").await;
    assert_eq!(
        next_notice(&mut early).await,
        json!({"console": {"name": "con1", "running": false}})
    );
    let login = hyve_client::ConnectOptions {
        trust: server.trust(),
        bearer: Some(server.token().await),
        ..Default::default()
    };
    for (path, status) in [("/console/nope", 404), ("/console/..%2Fx", 400)] {
        match hyve_client::open(&format!("{}{path}", server.ws), &login).await {
            Err(hyve_client::ClientError::Refused { status: s, .. }) => {
                assert_eq!(s, status, "{path}")
            }
            other => panic!("{path}: {:?}", other.map(|_| ())),
        }
    }
    // Without a login the console is refused.
    match hyve_client::open(
        &format!("{}/console/con1", server.ws),
        &hyve_client::ConnectOptions {
            trust: server.trust(),
            ..Default::default()
        },
    )
    .await
    {
        Err(hyve_client::ClientError::Refused { status, .. }) => assert_eq!(status, 401),
        other => panic!("console without login: {:?}", other.map(|_| ())),
    }

    c.iohyve("install", json!({"name": "con1", "iso": "hyve-test.iso"}))
        .await
        .unwrap();
    // The early viewer sees the guest come up, live.
    let mut seen = String::new();
    let notices = read_until(&mut early, &mut seen, MARKER).await;
    assert!(
        notices.contains(&json!({"console": {"name": "con1", "running": true}})),
        "{notices:?}"
    );
    wait_console(&c, "con1", "/ # ").await;

    // A late viewer gets the backlog: what was printed before it joined.
    let mut a = server.raw_ws("/console/con1").await;
    assert_eq!(
        next_notice(&mut a).await,
        json!({"console": {"name": "con1", "running": true}})
    );
    let mut seen_a = String::new();
    read_until(&mut a, &mut seen_a, MARKER).await;
    let mut b = server.raw_ws("/console/con1").await;
    next_notice(&mut b).await;
    let mut seen_b = String::new();
    read_until(&mut b, &mut seen_b, MARKER).await;

    // A types; both see the guest's answer.
    a.send(Message::Binary(b"echo viewer-$((6*7))\n".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut a, &mut seen_a, "viewer-42").await;
    read_until(&mut b, &mut seen_b, "viewer-42").await;
    // B may not type while A holds the keyboard.
    b.send(Message::Binary(b"echo intruder\n".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next_notice(&mut b).await,
        json!({"console": {"name": "con1", "error": "another viewer is typing on this console; you are watching only"}})
    );
    // Once A leaves, B can.
    a.close(None).await.unwrap();
    drop(a);
    let mut took = false;
    for _ in 0..50 {
        b.send(Message::Binary(b"echo second-$((7*7))\n".to_vec().into()))
            .await
            .unwrap();
        // Either the guest echoes what B typed, or B is told the keyboard
        // is still held (A's close in flight): then try again. Output of
        // earlier commands may still arrive in between.
        use futures_util::StreamExt;
        loop {
            match tokio::time::timeout(GUEST_DEADLINE, b.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                Message::Binary(x) => {
                    seen_b.push_str(&String::from_utf8_lossy(&x));
                    if seen_b.contains("second-$((7*7))") {
                        took = true;
                        break;
                    }
                }
                Message::Text(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    break;
                }
                _ => {}
            }
        }
        if took {
            break;
        }
    }
    assert!(took, "B never got the keyboard");
    read_until(&mut b, &mut seen_b, "second-49").await;
    drop(b);
    drop(early);

    // The CLI, from a pipe: types a command, sees the answer, leaves on ~.
    let mut cli = server
        .cli()
        .args(["console", "con1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    let stdout = cli.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = Vec::new();
        while r
            .read_until(b'\n', &mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            line.clear();
        }
    });
    let end = std::time::Instant::now() + GUEST_DEADLINE;
    let mut out = String::new();
    while !out.contains("cli-56") {
        // Typed until the guest answers: the CLI may still be connecting.
        stdin.write_all(b"echo cli-$((7*8))\n").unwrap();
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
            out.push_str(&l);
        }
        while let Ok(l) = rx.try_recv() {
            out.push_str(&l);
        }
        assert!(
            std::time::Instant::now() < end,
            "the CLI never showed the answer: {out}"
        );
    }
    stdin.write_all(b"~.").unwrap();
    let status = cli.wait().unwrap();
    let mut err = String::new();
    cli.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("[hyve: left the console]"), "{err}");

    // And `hyve console` of an unknown guest fails with the server's words.
    let o = server.cli().args(["console", "nope"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "hyve: No such guest 'nope'\n"
    );

    c.iohyve("stop", json!({"name": "con1", "force": "true"}))
        .await
        .unwrap();
    wait_running(&c, "con1", "NO").await;
}
