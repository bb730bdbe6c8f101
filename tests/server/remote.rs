//! The events on one socket, wherever it lives in the cluster: `remote_*` find it with
//! `fetch_sockets`, then join, leave, emit or disconnect through its [`RemoteSocket`].

use std::time::Duration;

use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, SocketRef, TryData},
    socket::RemoteSocket,
};

use crate::{
    payloads::{RemoteReq, RemoteRoomReq, Rooms},
    reply::{MAX_ACK_WAIT, ns_op, payload, reply, sorted},
};

/// Finds a socket by id anywhere in the cluster (in the namespace of `socket`).
async fn find_remote<A: Adapter>(
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    sid: &str,
) -> Result<RemoteSocket<A>, String> {
    let sockets = ns_op(io, socket)?
        .fetch_sockets()
        .await
        .map_err(|e| format!("fetch_sockets failed: {e}"))?;
    sockets
        .into_iter()
        .find(|s| s.data().id.to_string() == sid)
        .ok_or_else(|| format!("socket {sid} not found in the cluster"))
}

/// A request naming a socket that may live on any node.
trait NamesSocket {
    fn sid(&self) -> &str;
}
impl NamesSocket for RemoteRoomReq {
    fn sid(&self) -> &str {
        &self.sid
    }
}
impl NamesSocket for RemoteReq {
    fn sid(&self) -> &str {
        &self.sid
    }
}

/// What every `remote_*` event does: find the socket the request names, wherever it lives
/// (`fetch_sockets`), apply `op` to it, and answer through the ack.
async fn on_remote<A: Adapter, R: NamesSocket>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<R>,
    op: impl AsyncFnOnce(RemoteSocket<A>, R) -> Result<Value, String>,
) {
    let res = async {
        let req = payload(data)?;
        let remote = find_remote(&io, &socket, req.sid()).await?;
        op(remote, req).await
    };
    reply(ack, res.await);
}

/// The socket's rooms after a remote join or leave, unless the request asked for none.
async fn rooms_of<A: Adapter>(
    remote: &RemoteSocket<A>,
    req: &RemoteRoomReq,
) -> Result<Value, String> {
    if req.rooms == Some(false) {
        return Ok(json!({ "ok": true }));
    }
    let rooms = remote.rooms().await.map_err(|e| e.to_string())?;
    Ok(json!({ "rooms": sorted(rooms) }))
}

pub(crate) async fn on_remote_join<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteRoomReq>,
) {
    on_remote(io, socket, ack, data, async |remote, req| {
        remote
            .join(Rooms::list(Some(req.room.clone())))
            .await
            .map_err(|e| format!("remote join failed: {e}"))?;
        rooms_of(&remote, &req).await
    })
    .await;
}

pub(crate) async fn on_remote_leave<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteRoomReq>,
) {
    on_remote(io, socket, ack, data, async |remote, req| {
        remote
            .leave(Rooms::list(Some(req.room.clone())))
            .await
            .map_err(|e| format!("remote leave failed: {e}"))?;
        rooms_of(&remote, &req).await
    })
    .await;
}

pub(crate) async fn on_remote_disconnect<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteReq>,
) {
    on_remote(io, socket, ack, data, async |remote, _| {
        remote
            .disconnect()
            .await
            .map_err(|e| format!("remote disconnect failed: {e}"))?;
        Ok(json!({ "ok": true }))
    })
    .await;
}

pub(crate) async fn on_remote_emit<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteReq>,
) {
    on_remote(io, socket, ack, data, async |remote, req| {
        remote
            .emit(&req.event, &req.data)
            .await
            .map_err(|e| format!("remote emit failed: {e}"))?;
        Ok(json!({ "ok": true }))
    })
    .await;
}

pub(crate) async fn on_remote_emit_with_ack<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteReq>,
) {
    on_remote(io, socket, ack, data, async |remote, req| {
        let wait = req.timeout_ms.map_or(MAX_ACK_WAIT, Duration::from_millis);
        let stream = remote
            .emit_with_ack::<_, Value>(&req.event, &req.data)
            .await
            .map_err(|e| format!("remote emit_with_ack failed: {e}"))?;
        // The stream yields the answer of the single targeted socket.
        let answer = tokio::time::timeout(wait, stream)
            .await
            .map_err(|_| "no ack in time".to_string())?
            .map_err(|e| format!("ack error: {e}"))?;
        Ok(json!({ "data": answer }))
    })
    .await;
}
