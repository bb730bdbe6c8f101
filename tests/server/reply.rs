//! What every handler shares: decoding its payload, the operators of its namespace, and
//! answering through the acknowledgement callback.

use std::time::Duration;

use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, SocketRef, TryData},
    operators::BroadcastOperators,
};

/// Upper bound for every ack collection done by a handler.
pub(crate) const MAX_ACK_WAIT: Duration = Duration::from_secs(30);

/// Answers the client's ack callback with the result, errors as `{error}`.
pub(crate) fn reply<A: Adapter>(ack: AckSender<A>, res: Result<Value, String>) {
    let value = res.unwrap_or_else(|error| {
        tracing::warn!(%error, "request failed");
        json!({ "error": error })
    });
    if let Err(e) = ack.send(&value) {
        tracing::debug!("cannot send ack: {e}");
    }
}

/// Unwraps a [`TryData`] payload, turning a decoding failure into an error message.
pub(crate) fn payload<T>(data: TryData<T>) -> Result<T, String> {
    data.0.map_err(|e| format!("invalid payload: {e}"))
}

/// Broadcast operators on the namespace of `socket`, to every node of the cluster.
pub(crate) fn ns_op<A: Adapter>(
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
) -> Result<BroadcastOperators<A>, String> {
    io.of(socket.ns())
        .ok_or_else(|| format!("unknown namespace {}", socket.ns()))
}

/// `rooms` as strings, sorted.
pub(crate) fn sorted(rooms: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    let mut rooms: Vec<String> = rooms.into_iter().map(|r| r.to_string()).collect();
    rooms.sort();
    rooms
}
