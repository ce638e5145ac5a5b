//! `hyve console <guest>`: the guest's serial console in this terminal.
//!
//! The terminal is put in raw mode (when it is one) so every key goes to
//! the guest; `~.` at the start of a line leaves, as in ssh and cu, and
//! `~~` sends a single `~`. The server's notices (guest started or
//! stopped, input refused) are shown between brackets on their own line.

use std::io::{IsTerminal, Write};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{connect_console, Failure, Target};
use crate::EXIT_FAILED;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Restores the terminal when dropped, however the console ends.
struct RawMode(bool);

impl RawMode {
    fn enable() -> RawMode {
        let on = std::io::stdin().is_terminal() && crossterm::terminal::enable_raw_mode().is_ok();
        RawMode(on)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.0 {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

/// Finds `~.` at the start of a line in what the user types.
#[derive(Default)]
pub struct Escape {
    /// Not at the start of a line (the start counts as one).
    mid_line: bool,
    /// A `~` at the start of a line, held back.
    tilde: bool,
}

impl Escape {
    /// The bytes to send for `input`, and whether the user asked to leave.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.tilde {
                self.tilde = false;
                match b {
                    b'.' => return (out, true),
                    b'~' => {
                        out.push(b'~');
                        self.mid_line = true;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if b == b'~' && !self.mid_line {
                self.tilde = true;
                continue;
            }
            out.push(b);
            self.mid_line = !(b == b'\r' || b == b'\n');
        }
        (out, false)
    }
}

fn notice(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let c = v.get("console")?;
    if let Some(e) = c.get("error").and_then(|e| e.as_str()) {
        return Some(e.to_string());
    }
    match c.get("running").and_then(|r| r.as_bool()) {
        Some(true) => Some(format!(
            "connected to {}; ~. leaves",
            c["name"].as_str().unwrap_or("the guest")
        )),
        Some(false) => Some("the guest is not running".to_string()),
        None => None,
    }
}

pub async fn run(target: &Target, guest: &str) -> Result<String, Failure> {
    let ws = connect_console(target, guest).await?;
    let (mut sink, mut stream) = ws.split();
    let raw = RawMode::enable();
    let nl = if raw.0 { "\r\n" } else { "\n" };
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    let mut esc = Escape::default();
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                Some(Ok(Message::Text(t))) => {
                    if let Some(n) = notice(&t) {
                        eprint!("{nl}[hyve: {n}]{nl}");
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    eprint!("{nl}[hyve: the server closed the console]{nl}");
                    return Ok(String::new());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(Failure(format!("console connection failed: {e}"), EXIT_FAILED));
                }
            },
            n = stdin.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    // Input ended (a pipe): nothing more to send, leave.
                    let _ = sink.close().await;
                    return Ok(String::new());
                }
                Ok(n) => {
                    let (out, leave) = esc.feed(&buf[..n]);
                    if !out.is_empty() && sink.send(Message::Binary(out.into())).await.is_err() {
                        return Err(Failure("the console connection closed".into(), EXIT_FAILED));
                    }
                    if leave {
                        let _ = sink.close().await;
                        drop(raw);
                        eprintln!("\n[hyve: left the console]");
                        return Ok(String::new());
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_at_line_start_leaves() {
        let mut e = Escape::default();
        assert_eq!(e.feed(b"~."), (vec![], true));
        let mut e = Escape::default();
        assert_eq!(e.feed(b"ls ~.\r"), (b"ls ~.\r".to_vec(), false));
        assert_eq!(e.feed(b"~"), (vec![], false));
        assert_eq!(e.feed(b"."), (vec![], true));
        let mut e = Escape::default();
        assert_eq!(e.feed(b"~~x\n~a"), (b"~x\n~a".to_vec(), false));
    }
}
