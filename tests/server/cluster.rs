//! Cluster wiring: the ONE place that knows which cluster backend is used. It joins the
//! cluster, builds the Socket.IO layer with the cluster adapter, registers the namespaces
//! and, on every new socket, the handlers of its events (which are generic over the
//! adapter: they work with any backend).

use std::convert::Infallible;

use axum::Router;
use serde_json::json;
use socketioxide::{
    ParserConfig, SocketIo,
    adapter::Adapter,
    extract::{AckSender, SocketRef, TryData},
    handler::ConnectHandler,
    socket::DisconnectReason,
};
use socketioxide_cluster::{
    Cluster, ClusterAdapter, ClusterAdapterCtr,
    events::ServerEvents,
    presence::{Presence, PresenceConfig},
};

use crate::{
    BoxError,
    config::SocketIoOptions,
    handlers::{
        on_broadcast, on_broadcast_from_socket, on_disconnect_all, on_emit_seq, on_emit_with_ack,
        on_fetch_sockets, on_join, on_leave, on_message, on_rooms, on_sockets_room, on_whoami,
    },
    payloads::{PresenceTrackReq, SocketsRoomReq},
    remote::{
        on_remote_disconnect, on_remote_emit, on_remote_emit_with_ack, on_remote_join,
        on_remote_leave,
    },
    reply::{payload, reply},
};

/// The namespaces served by every node. All of them get the same handlers.
const NAMESPACES: [&str; 2] = ["/", "/admin"];

/// A handle on the cluster this node belongs to, independent of the backend: the gossip
/// cluster handle, or nothing with Redis (Redis keeps no membership view); and the node's
/// server-to-server events, kept so that their handlers keep running.
#[derive(Clone)]
pub(crate) struct ClusterHandle {
    cluster: Option<Cluster>,
    _events: ServerEvents,
}

impl ClusterHandle {
    /// Names of the other live nodes of the cluster (this node excluded); `None` with Redis.
    fn member_names(&self) -> Option<Vec<String>> {
        let cluster = self.cluster.as_ref()?;
        Some(cluster.members().into_iter().map(|m| m.node_name).collect())
    }

    /// Leaves the cluster.
    pub(crate) async fn shutdown(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.shutdown().await;
        }
    }
}

/// Builds the cluster adapter and the Socket.IO layer, registers the namespaces and
/// wraps `app` with the layer.
///
/// The adapter type does not leak out of this function (it returns the axum [`Router`]
/// carrying the Socket.IO layer), so another backend can be selected at runtime in this
/// single place.
pub(crate) async fn build_io(
    opts: &SocketIoOptions,
    app: Router,
) -> Result<(Router, ClusterHandle), BoxError> {
    // 1. Join the cluster. SOCKETIO_CLUSTER_BACKEND picks the backend: `gossip` (default,
    //    configured by the other SOCKETIO_CLUSTER_* variables) or a redis:// URL.
    let ctr = ClusterAdapterCtr::from_env()
        .await
        .map_err(|e| format!("cannot start the cluster: {e}"))?;
    tracing::info!(backend = ctr.backend(), "cluster backend selected");
    let events = ctr.server_events();
    crate::server_events::register(&events);
    let cluster = ClusterHandle {
        cluster: ctr.cluster(),
        _events: events,
    };
    let presence = ctr.presence(PresenceConfig::default());

    // 2. The Socket.IO server, with the cluster adapter.
    let mut builder = SocketIo::builder().with_adapter::<ClusterAdapter<_>>(ctr);
    if opts.msgpack {
        builder = builder.with_parser(ParserConfig::msgpack());
    }
    if let Some(size) = opts.max_buffer_size {
        builder = builder.max_buffer_size(size);
    }
    let (layer, io) = builder.build_layer();
    presence.emit_events(io.clone());

    // 3. Namespaces. With a remote adapter `ns` returns a future that resolves once the
    //    namespace is known to the cluster.
    for path in NAMESPACES {
        let node = cluster.clone();
        let presence = presence.clone();
        // The event handlers are registered by a connect *middleware*: middlewares run
        // before the client is told that it is connected, whereas the connect handler
        // runs in a task spawned after that. A client that emits right after its
        // `connect` event could otherwise beat the registration and lose its event.
        let register = move |socket: SocketRef<_>| async move {
            register_handlers(socket, node, presence);
            Ok::<_, Infallible>(())
        };
        io.ns(path, on_connect.with(register))
            .await
            .map_err(|e| format!("cannot register namespace {path}: {e}"))?;
    }

    Ok((app.layer(layer), cluster))
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    tracing::info!(sid = %socket.id, ns = socket.ns(), "socket connected");
}

/// Registers the event handlers of a new socket.
fn register_handlers<A: Adapter>(socket: SocketRef<A>, cluster: ClusterHandle, presence: Presence) {
    // The chat demo: a message is relayed to every other client of the cluster.
    socket.on("message", on_message::<A>);

    socket.on("whoami", on_whoami::<A>);
    socket.on("join", on_join::<A>);
    socket.on("leave", on_leave::<A>);
    socket.on("broadcast", on_broadcast::<A>);
    socket.on("broadcast_from_socket", on_broadcast_from_socket::<A>);
    socket.on("emit_with_ack", on_emit_with_ack::<A>);
    socket.on("fetch_sockets", on_fetch_sockets::<A>);
    socket.on("remote_join", on_remote_join::<A>);
    socket.on("remote_leave", on_remote_leave::<A>);
    socket.on("remote_disconnect", on_remote_disconnect::<A>);
    socket.on(
        "sockets_join",
        |io: SocketIo<A>, s: SocketRef<A>, ack: AckSender<A>, d: TryData<SocketsRoomReq>| {
            on_sockets_room(io, s, ack, d, true)
        },
    );
    socket.on(
        "sockets_leave",
        |io: SocketIo<A>, s: SocketRef<A>, ack: AckSender<A>, d: TryData<SocketsRoomReq>| {
            on_sockets_room(io, s, ack, d, false)
        },
    );
    socket.on("remote_emit", on_remote_emit::<A>);
    socket.on("remote_emit_with_ack", on_remote_emit_with_ack::<A>);
    socket.on("rooms", on_rooms::<A>);
    socket.on("emit_seq", on_emit_seq::<A>);
    socket.on("disconnect_all", on_disconnect_all::<A>);
    socket.on("members", move |ack: AckSender<A>| async move {
        let reply_json = match cluster.member_names() {
            Some(names) => json!({ "count": names.len(), "names": names }),
            None => json!({ "count": null, "names": [], "backend": "redis" }),
        };
        reply(ack, Ok(reply_json));
    });

    socket.on_disconnect(
        |socket: SocketRef<A>, reason: DisconnectReason| async move {
            tracing::info!(sid = %socket.id, ns = socket.ns(), %reason, "socket disconnected");
        },
    );

    // Cluster-wide presence.
    let p = presence.clone();
    socket.on(
        "presence_track",
        move |s: SocketRef<A>, ack: AckSender<A>, d: TryData<PresenceTrackReq>| async move {
            let res = payload(d).and_then(|d| {
                p.track(&s, &d.topic, &d.key, &d.meta)
                    .map(|()| json!({ "ok": true }))
                    .map_err(|e| e.to_string())
            });
            reply(ack, res);
        },
    );
    socket.on(
        "presence_list",
        move |ack: AckSender<A>, d: TryData<String>| async move {
            let res = payload(d).map(|topic| json!(presence.list(&topic)));
            reply(ack, res);
        },
    );
}
