//! A real WebSocket client speaking Engine.IO v4 / Socket.IO text frames, connected to one
//! node: it answers pings, and for every `m` event it receives records its sequence number,
//! order and latency (receive time minus the emit timestamp in the payload).

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::node::{BoxError, now_ns};

/// What a client saw since the last [`Client::reset`].
#[derive(Default)]
pub struct Seen {
    /// Events received.
    pub received: u64,
    /// Events that arrived with a lower sequence number than one before them.
    pub out_of_order: u64,
    /// Receive time of the last event, ns.
    pub last_ns: u64,
    /// Latency of each event, ns (when recording).
    pub latencies: Vec<u64>,
    last_seq: Option<u64>,
    record: bool,
}

/// One connected client.
pub struct Client {
    /// The node it is connected to.
    pub node: usize,
    seen: Arc<Mutex<Seen>>,
    last: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connect to `/` of the node serving HTTP on `port`.
    pub async fn connect(node: usize, port: u16) -> Result<Self, BoxError> {
        let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let open = next_text(&mut ws).await?;
        if !open.starts_with('0') {
            return Err(format!("expected the Engine.IO open packet, got {open:?}").into());
        }
        ws.send(Message::text("40")).await?;
        let mut connect = next_text(&mut ws).await?;
        while connect == "2" {
            ws.send(Message::text("3")).await?;
            connect = next_text(&mut ws).await?;
        }
        if !connect.starts_with("40") {
            return Err(format!("expected CONNECT, got {connect:?}").into());
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, last) = watch::channel(0);
        let task = tokio::spawn(read(ws, seen.clone(), tx));
        Ok(Self {
            node,
            seen,
            last,
            task,
        })
    }

    /// Forget what was seen; record latencies from now on if `record`.
    pub fn reset(&self, record: bool) {
        let mut seen = self.seen.lock().unwrap();
        *seen = Seen::default();
        seen.record = record;
    }

    /// Wait (at most `limit`) until an event with sequence number `seq` or above arrived.
    pub async fn wait_for(&mut self, seq: u64, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, self.last.wait_for(|s| *s >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Take what was seen so far.
    pub fn take(&self) -> Seen {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Events received so far.
    pub fn received(&self) -> u64 {
        self.seen.lock().unwrap().received
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut Ws) -> Result<String, BoxError> {
    let limit = std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout(limit, ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err("connection closed".into()),
        }
    }
}

async fn read(mut ws: Ws, seen: Arc<Mutex<Seen>>, last: watch::Sender<u64>) {
    while let Some(Ok(msg)) = ws.next().await {
        let now = now_ns();
        let Message::Text(text) = msg else { continue };
        if text.as_str() == "2" {
            if ws.send(Message::text("3")).await.is_err() {
                return;
            }
            continue;
        }
        let Some((seq, sent)) = parse_event(text.as_str()) else {
            continue;
        };
        {
            let mut seen = seen.lock().unwrap();
            seen.received += 1;
            if seen.last_seq.is_some_and(|l| seq < l) {
                seen.out_of_order += 1;
            }
            seen.last_seq = Some(seq);
            seen.last_ns = now;
            if seen.record {
                seen.latencies.push(now.saturating_sub(sent));
            }
        }
        last.send_replace(seq);
    }
}

/// `42["m",<seq>,<sent_ns>,...]` → `(seq, sent_ns)`.
fn parse_event(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix("42[\"m\",")?;
    let mut parts = rest.splitn(3, ',');
    let seq = parts.next()?.trim_start_matches('[').parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((seq, sent))
}
