//! Hand-off from `nymstr send` to a running `nymstr listen` of the same home.
//!
//! sled locks the home, so while `listen` runs no other process can open it. `listen`
//! therefore serves a unix socket, `HOME/control.sock` (mode `0600`, inside the `0700`
//! home: the user's alone), and `send` hands its message to it when the home is locked.
//! Protocol: one JSON line each way per connection. Request `{"op":"send","to":NAME,
//! "text":TEXT}`; answer `{"ok":true,"to":..,"msg_id":..,"via":..}` once the node (or the
//! recipient directly) acknowledged it, or `{"ok":false,"error":KIND,"message":..,
//! "exit_code":N}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cli::error::CliError;

const SOCKET: &str = "control.sock";
/// A request line is a message plus a little JSON.
const REQUEST_BYTES_MAX: u64 = 256 * 1024;

/// A message handed over by `send`.
pub struct ControlRequest {
    pub to: String,
    pub text: String,
    pub reply: oneshot::Sender<Value>,
}

pub struct ControlServer {
    path: PathBuf,
    requests: mpsc::Receiver<ControlRequest>,
    acceptor: JoinHandle<()>,
}

impl ControlServer {
    /// Serves `HOME/control.sock`. The caller holds the home's lock, so a socket file left
    /// there belongs to a process that is gone, and is replaced.
    pub fn bind(home: &Path) -> std::io::Result<Self> {
        let path = home.join(SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        let (tx, requests) = mpsc::channel(16);
        let acceptor = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, tx.clone()));
            }
        });
        Ok(Self { path, requests, acceptor })
    }

    /// The next request (cancel-safe).
    pub async fn next(&mut self) -> Option<ControlRequest> {
        self.requests.recv().await
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.acceptor.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(stream: UnixStream, requests: mpsc::Sender<ControlRequest>) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(r, REQUEST_BYTES_MAX));
    let answer = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Value>(&line) {
            Ok(v) if v["op"] == "send" && v["to"].is_string() && v["text"].is_string() => {
                let (reply, answer) = oneshot::channel();
                let to = v["to"].as_str().unwrap_or_default().to_string();
                let text = v["text"].as_str().unwrap_or_default().to_string();
                if requests.send(ControlRequest { to, text, reply }).await.is_err() {
                    failure("busy", "the listening process is stopping", 1)
                } else {
                    answer.await.unwrap_or_else(|_| failure("busy", "the listening process is stopping", 1))
                }
            }
            _ => failure("usage", "bad request", 2),
        },
        Err(e) => failure("usage", &e.to_string(), 2),
    };
    let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
    let _ = w.shutdown().await;
}

pub fn failure(kind: &str, message: &str, exit_code: u8) -> Value {
    json!({ "ok": false, "error": kind, "message": message, "exit_code": exit_code })
}

/// How a hand-off went.
pub enum Handoff {
    /// No `listen` takes messages for this home.
    NoListener,
    /// Its answer.
    Answer(Value),
    /// No answer in time: the listening process keeps trying.
    TimedOut,
    /// It went away before answering: whether it stored the message is unknown.
    Lost,
}

/// Hands a message to the `listen` running on `home` and waits for its answer.
pub async fn send(home: &Path, to: &str, text: &str, timeout: Duration) -> Result<Handoff, CliError> {
    let Ok(mut stream) = UnixStream::connect(home.join(SOCKET)).await else { return Ok(Handoff::NoListener) };
    let request = json!({ "op": "send", "to": to, "text": text });
    let work = async {
        stream.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Ok(Handoff::TimedOut),
        Ok(Err(_)) => Ok(Handoff::Lost),
        Ok(Ok(line)) => match serde_json::from_str(&line) {
            Ok(v) => Ok(Handoff::Answer(v)),
            Err(_) => Ok(Handoff::Lost),
        },
    }
}
