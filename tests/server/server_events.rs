//! The server-to-server events every node handles, for the tests that drive them from
//! another node (`tests/server_events.rs`): each is logged on receipt.
//!
//! | event  | data             | ack                                  |
//! |--------|------------------|--------------------------------------|
//! | `note` | any              | - (logged only)                      |
//! | `ping` | any              | `{node, data}`                       |
//! | `slow` | `{ms}`           | `{node}`, after sleeping `ms` (at most 60 s) |

use std::time::Duration;

use serde_json::{Value, json};
use socketioxide_cluster::events::{ServerEvent, ServerEvents};

use crate::config::node_name;

/// Longest a `slow` handler sleeps.
const MAX_SLEEP: Duration = Duration::from_secs(60);

pub(crate) fn register(events: &ServerEvents) {
    events.on("note", async |ev: ServerEvent| {
        let data: Value = ev.data().unwrap_or_default();
        tracing::info!(from = ev.from(), %data, "server event note received");
    });
    events.on("ping", async |ev: ServerEvent| {
        let data: Value = ev.data().unwrap_or_default();
        tracing::info!(from = ev.from(), %data, "server event ping received");
        if let Err(e) = ev.ack(&json!({ "node": node_name(), "data": data })) {
            tracing::warn!("cannot answer a ping: {e}");
        }
    });
    events.on("slow", async |ev: ServerEvent| {
        let data: Value = ev.data().unwrap_or_default();
        tracing::info!(from = ev.from(), %data, "server event slow received");
        let ms = data.get("ms").and_then(Value::as_u64).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLEEP)).await;
        if let Err(e) = ev.ack(&json!({ "node": node_name() })) {
            tracing::warn!("cannot answer a slow event: {e}");
        }
    });
}
