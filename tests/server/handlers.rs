//! The events on the socket itself (`message`, `whoami`, `join`, `leave`) and on the
//! sockets of the cluster that a room selector matches (broadcasts, acks,
//! `fetch_sockets`, `sockets_join`, `rooms`, `disconnect_all`, ...).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, future::join_all};
use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, SocketRef, TryData},
    operators::BroadcastOperators,
};

use crate::{
    config::node_name,
    payloads::{
        BroadcastReq, EmitSeqReq, EmitWithAckReq, FetchSocketsReq, Rooms, SocketsRoomReq, TargetReq,
    },
    reply::{MAX_ACK_WAIT, ns_op, payload, reply, sorted},
};

/// Upper bound of `emit_seq` (keeps a single request bounded).
const MAX_SEQ: u64 = 100_000;
/// Upper bound of the padding of an `emit_seq` event.
const MAX_PAD: usize = 64 * 1024;

/// Emits `data` (plus the binary attachment or attachments, if any) with the given
/// operators.
async fn emit_payload<A: Adapter>(
    op: BroadcastOperators<A>,
    event: &str,
    data: &Value,
    binary: Bytes,
    binaries: Vec<Bytes>,
) -> Result<(), String> {
    let res = if !binaries.is_empty() {
        op.emit(event, &(data, binaries)).await
    } else if binary.is_empty() {
        op.emit(event, data).await
    } else {
        op.emit(event, &(data, binary)).await
    };
    res.map_err(|e| format!("broadcast failed: {e}"))
}

pub(crate) async fn on_message<A: Adapter>(socket: SocketRef<A>, TryData(text): TryData<Value>) {
    let Ok(text) = text else { return };
    let msg = json!({ "from": socket.id.to_string(), "node": node_name(), "text": text });
    if let Err(e) = socket.broadcast().emit("message", &msg).await {
        tracing::warn!("cannot relay chat message: {e}");
    }
}

pub(crate) async fn on_whoami<A: Adapter>(socket: SocketRef<A>, ack: AckSender<A>) {
    let info = json!({
        "id": socket.id.to_string(),
        "ns": socket.ns(),
        "node": node_name(),
        "rooms": sorted(socket.rooms()),
    });
    reply(ack, Ok(info));
}

pub(crate) async fn on_join<A: Adapter>(
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<Rooms>,
) {
    let res = payload(data).map(|rooms| {
        socket.join(Rooms::list(Some(rooms)));
        json!({ "rooms": sorted(socket.rooms()) })
    });
    reply(ack, res);
}

pub(crate) async fn on_leave<A: Adapter>(
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<Rooms>,
) {
    let res = payload(data).map(|rooms| {
        socket.leave(Rooms::list(Some(rooms)));
        json!({ "rooms": sorted(socket.rooms()) })
    });
    reply(ack, res);
}

/// io-level broadcast: every matching socket of the cluster, the sender included.
pub(crate) async fn on_broadcast<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<BroadcastReq>,
) {
    let res = async {
        let req = payload(data)?;
        let op = ns_op(&io, &socket)?
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except));
        emit_payload(op, &req.event, &req.data, req.binary, req.binaries).await?;
        Ok(json!({ "ok": true }))
    };
    reply(ack, res.await);
}

/// socket-level broadcast: like `on_broadcast` but the sender is excluded.
pub(crate) async fn on_broadcast_from_socket<A: Adapter>(
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<BroadcastReq>,
) {
    let res = async {
        let req = payload(data)?;
        let op = socket
            .broadcast()
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except));
        emit_payload(op, &req.event, &req.data, req.binary, req.binaries).await?;
        Ok(json!({ "ok": true }))
    };
    reply(ack, res.await);
}

/// Emits with ack to every matching socket of the cluster and collects all the answers.
pub(crate) async fn on_emit_with_ack<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<EmitWithAckReq>,
) {
    let res = async {
        let req = payload(data)?;
        let mut op = ns_op(&io, &socket)?
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except));
        if let Some(ms) = req.timeout_ms {
            op = op.timeout(Duration::from_millis(ms));
        }
        let stream = op
            .emit_with_ack::<_, Value>(&req.event, &req.data)
            .await
            .map_err(|e| format!("emit_with_ack failed: {e}"))?;
        let results = tokio::time::timeout(MAX_ACK_WAIT, stream.collect::<Vec<_>>())
            .await
            .map_err(|_| "acks not complete in time".to_string())?;
        let (mut acks, mut errors) = (vec![], vec![]);
        for (sid, result) in results {
            match result {
                Ok(data) => acks.push(json!({ "id": sid.to_string(), "data": data })),
                Err(e) => errors.push(json!({ "id": sid.to_string(), "error": e.to_string() })),
            }
        }
        Ok(json!({ "acks": acks, "errors": errors }))
    };
    reply(ack, res.await);
}

/// Lists the sockets of the whole cluster, with their rooms.
pub(crate) async fn on_fetch_sockets<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<FetchSocketsReq>,
) {
    let res = async {
        let req = payload(data).unwrap_or_default();
        let sockets = ns_op(&io, &socket)?
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except))
            .fetch_sockets()
            .await
            .map_err(|e| format!("fetch_sockets failed: {e}"))?;
        let with_rooms = req.rooms.unwrap_or(true);
        let entries = join_all(sockets.iter().map(|s| async move {
            let rooms = if with_rooms {
                match s.rooms().await {
                    Ok(rooms) => json!(sorted(rooms)),
                    Err(e) => json!({ "error": e.to_string() }),
                }
            } else {
                Value::Null
            };
            let data = s.data();
            json!({
                "id": data.id.to_string(),
                "ns": data.ns.to_string(),
                "server_id": data.server_id.to_string(),
                "rooms": rooms,
            })
        }))
        .await;
        Ok(json!({ "sockets": entries }))
    };
    reply(ack, res.await);
}

/// `io.to(to).join(room)` (or `leave`): the sockets matching the selector, on every node,
/// join or leave `room`.
pub(crate) async fn on_sockets_room<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<SocketsRoomReq>,
    join: bool,
) {
    let res = async {
        let req = payload(data)?;
        let op = ns_op(&io, &socket)?.to(Rooms::list(Some(req.to)));
        let rooms = Rooms::list(Some(req.room));
        let res = if join {
            op.join(rooms).await
        } else {
            op.leave(rooms).await
        };
        res.map_err(|e| format!("sockets join/leave failed: {e}"))?;
        Ok(json!({ "ok": true }))
    };
    reply(ack, res.await);
}

pub(crate) async fn on_rooms<A: Adapter>(io: SocketIo<A>, socket: SocketRef<A>, ack: AckSender<A>) {
    let res = async {
        let rooms = ns_op(&io, &socket)?
            .rooms()
            .await
            .map_err(|e| format!("rooms failed: {e}"))?;
        Ok(json!({ "rooms": sorted(rooms) }))
    };
    reply(ack, res.await);
}

/// Emits `count` numbered events, one after the other, each one awaited.
pub(crate) async fn on_emit_seq<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<EmitSeqReq>,
) {
    let res = async {
        let req = payload(data)?;
        if req.count > MAX_SEQ {
            return Err(format!("count must be at most {MAX_SEQ}"));
        }
        if req.pad > MAX_PAD {
            return Err(format!("pad must be at most {MAX_PAD}"));
        }
        let op = ns_op(&io, &socket)?.to(Rooms::list(req.to));
        let pad = "x".repeat(req.pad);
        for i in 0..req.count {
            let sent = if pad.is_empty() {
                op.clone().emit(&req.event, &i).await
            } else {
                op.clone().emit(&req.event, &(i, &pad)).await
            };
            sent.map_err(|e| format!("emit #{i} failed: {e}"))?;
        }
        Ok(json!({ "sent": req.count }))
    };
    reply(ack, res.await);
}

pub(crate) async fn on_disconnect_all<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<TargetReq>,
) {
    let res = async {
        let req = payload(data).unwrap_or_default();
        ns_op(&io, &socket)?
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except))
            .disconnect()
            .await
            .map_err(|e| format!("disconnect failed: {e}"))?;
        Ok(json!({ "ok": true }))
    };
    reply(ack, res.await);
}
