//! The socketioxide adapter of the gossip backend: turns socketioxide calls into requests to
//! the other nodes, and applies their requests to the local sockets. One instance per
//! namespace; all share the node held by [`GossipAdapterCtr`].

#[cfg(test)]
mod bounds_tests;
mod convert;
#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
use futures_core::stream::BoxStream;
use futures_util::{StreamExt, stream::Fuse};
use serde::de::DeserializeOwned;
use socketioxide_core::{
    Sid, Uid, Value,
    adapter::{
        AckStreamItem, BroadcastFlags, BroadcastOptions, CoreAdapter, CoreLocalAdapter,
        DefinedAdapter, RemoteSocketData, Room, RoomParam, SocketEmitter,
        errors::{AdapterError, BroadcastError},
    },
    packet::Packet,
};

use crate::{
    error::{Error, RequestError},
    gossip::config::GossipAdapterConfig,
    gossip::node::{Cluster, NamespaceHandler, Node, Pending, To},
    gossip::peer::PeerId,
    gossip::wire::{self, AckResult, Frame, Id, RequestKind, ResponseBody},
    init::InitRes,
    rate_log::RateLog,
};

/// Requests from peers this node cannot apply in full (dropped, or failing on the local
/// sockets): logged at most once per period, node-wide, as a peer can send them at will.
static REQUEST_LOG: RateLog = RateLog::new(Duration::from_secs(10));
/// Parts of peers' answers this node cannot use (a socket, an ack): logged at most once per
/// period, node-wide.
static ANSWER_LOG: RateLog = RateLog::new(Duration::from_secs(10));

/// The adapter constructor: the running cluster node, shared by the adapter of every
/// namespace. Build it once, then hand it to
/// `SocketIo::builder().with_adapter::<GossipAdapter<_>>(ctr)`.
pub struct GossipAdapterCtr {
    node: Arc<Node>,
    request_timeout: Duration,
}

impl std::fmt::Debug for GossipAdapterCtr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipAdapterCtr")
            .field("node", self.node.me())
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl GossipAdapterCtr {
    /// Bind the gossip and mesh ports, join the cluster through the seeds, and start serving
    /// peers.
    ///
    /// Fails with a clear [`Error`] when a port is in use, a seed is malformed, no secret
    /// is configured (and [`GossipAdapterConfig::insecure_no_auth`] was not called), or a
    /// numeric setting is outside its range (the error names the setting and the range).
    pub async fn new(config: GossipAdapterConfig) -> Result<Self, Error> {
        config.check_ranges()?;
        let node = Node::start(&config).await?;
        Ok(Self {
            node,
            request_timeout: config.request_timeout,
        })
    }

    /// The handle of the cluster: members, membership events, graceful shutdown.
    pub fn cluster(&self) -> Cluster {
        Cluster::new(self.node.clone())
    }
}

/// The gossip cluster adapter. Use it as
/// `SocketIo::builder().with_adapter::<GossipAdapter<_>>(ctr)`.
pub struct GossipAdapter<E> {
    local: CoreLocalAdapter<E>,
    node: Arc<Node>,
    uid: Uid,
    origin: Id,
    /// The socket.io parser of the namespace: what peers' payloads must be encoded for.
    parser: wire::Parser,
    request_timeout: Duration,
}

impl<E> DefinedAdapter for GossipAdapter<E> {}

impl<E: SocketEmitter> CoreAdapter<E> for GossipAdapter<E> {
    type Error = RequestError;
    type State = GossipAdapterCtr;
    type AckStream = Fuse<BoxStream<'static, AckStreamItem<E::AckError>>>;
    type InitRes = InitRes<RequestError>;

    fn new(state: &Self::State, local: CoreLocalAdapter<E>) -> Self {
        let uid = local.server_id();
        let parser = convert::parser_kind(local.parser());
        Self {
            local,
            node: state.node.clone(),
            uid,
            origin: convert::uid_id(uid),
            parser,
            request_timeout: state.request_timeout,
        }
    }

    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        InitRes::new(async move {
            let handler: Weak<dyn NamespaceHandler> = Arc::downgrade(&self) as Weak<_>;
            self.node
                .register(
                    self.local.path(),
                    &self.uid.to_string(),
                    self.parser,
                    handler,
                )
                .await;
            on_success();
            Ok(())
        })
    }

    async fn close(&self) -> Result<(), Self::Error> {
        self.node.unregister(self.local.path()).await;
        Ok(())
    }

    async fn server_count(&self) -> Result<u16, Self::Error> {
        Ok(self.node.server_count(self.local.path()))
    }

    async fn broadcast(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
    ) -> Result<(), BroadcastError> {
        if !opts.is_local(self.uid) {
            let kind = RequestKind::Broadcast(convert::packet(&packet));
            self.send(kind, &opts, None)
                .await
                .map_err(AdapterError::from)?;
        }
        self.local.broadcast(packet, opts)?;
        Ok(())
    }

    async fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> Result<Self::AckStream, Self::Error> {
        if opts.is_local(self.uid) {
            let (local, _) = self.local.broadcast_with_ack(packet, opts, timeout);
            return Ok(local.boxed().fuse());
        }
        let kind = RequestKind::BroadcastWithAck(convert::packet(&packet));
        // Remote sockets get the ack timeout, plus the request timeout for the round trip.
        let wait = self
            .request_timeout
            .saturating_add(timeout.unwrap_or(self.local.ack_timeout()));
        let pending = self.request(kind, &opts, timeout, wait).await?;
        let (local, _) = self.local.broadcast_with_ack(packet, opts, timeout);
        let remote = remote_acks::<E::AckError>(pending);
        Ok(futures_util::stream::select(local, remote).boxed().fuse())
    }

    async fn disconnect_socket(&self, opts: BroadcastOptions) -> Result<(), BroadcastError> {
        if !opts.is_local(self.uid) {
            self.apply(RequestKind::DisconnectSockets, &opts)
                .await
                .map_err(AdapterError::from)?;
        }
        self.local
            .disconnect_socket(opts)
            .map_err(BroadcastError::Socket)
    }

    async fn rooms(&self, opts: BroadcastOptions) -> Result<Vec<Room>, Self::Error> {
        if opts.is_local(self.uid) {
            return Ok(self.local.rooms(opts).into_iter().collect());
        }
        let mut pending = self
            .request(RequestKind::AllRooms, &opts, None, self.request_timeout)
            .await?;
        let mut rooms = self.local.rooms(opts);
        while let Some((peer, body)) = pending.next().await {
            match body {
                ResponseBody::Rooms(r) => rooms.extend(convert::rooms_from(r)),
                body => refused(&peer, body)?,
            }
        }
        Ok(rooms.into_iter().collect())
    }

    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        if !opts.is_local(self.uid) {
            let names = rooms.iter().map(|r| r.to_string()).collect();
            self.apply(RequestKind::AddSockets(names), &opts).await?;
        }
        self.local.add_sockets(opts, rooms);
        Ok(())
    }

    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        if !opts.is_local(self.uid) {
            let names = rooms.iter().map(|r| r.to_string()).collect();
            self.apply(RequestKind::DelSockets(names), &opts).await?;
        }
        self.local.del_sockets(opts, rooms);
        Ok(())
    }

    async fn fetch_sockets(
        &self,
        opts: BroadcastOptions,
    ) -> Result<Vec<RemoteSocketData>, Self::Error> {
        if opts.is_local(self.uid) {
            return Ok(self.local.fetch_sockets(opts));
        }
        let mut pending = self
            .request(RequestKind::FetchSockets, &opts, None, self.request_timeout)
            .await?;
        let mut sockets = self.local.fetch_sockets(opts);
        let ns = self.local.path();
        while let Some((peer, body)) = pending.next().await {
            let ResponseBody::Sockets(list) = body else {
                refused(&peer, body)?;
                continue;
            };
            for s in &list {
                match convert::socket_from(ns, s) {
                    Ok(s) => sockets.push(s),
                    Err(e) => {
                        if let Some(held_back) = ANSWER_LOG.allow() {
                            tracing::warn!(%ns, held_back, "remote socket skipped: {e}");
                        }
                    }
                }
            }
        }
        Ok(sockets)
    }

    fn get_local(&self) -> &CoreLocalAdapter<E> {
        &self.local
    }
}

impl<E: SocketEmitter> GossipAdapter<E> {
    fn frame(
        &self,
        id: Id,
        kind: RequestKind,
        opts: &BroadcastOptions,
        ack_timeout: Option<Duration>,
    ) -> Frame {
        Frame::Request(wire::Request {
            ns: self.local.path().to_string(),
            id,
            origin: self.origin,
            kind,
            opts: convert::opts(opts),
            // Peers cut a longer one to the bound: it is cut here already.
            ack_timeout_ms: ack_timeout.map(|t| {
                u64::try_from(t.as_millis()).map_or(wire::MAX_ACK_TIMEOUT_MS, |ms| {
                    ms.min(wire::MAX_ACK_TIMEOUT_MS)
                })
            }),
        })
    }

    /// Send a request that expects no response.
    async fn send(
        &self,
        kind: RequestKind,
        opts: &BroadcastOptions,
        ack_timeout: Option<Duration>,
    ) -> Result<(), RequestError> {
        let frame = self.frame(convert::id(Sid::new()), kind, opts, ack_timeout);
        let volatile = opts.has_flag(BroadcastFlags::Volatile);
        self.node.send(to(opts), &frame, volatile).await
    }

    /// Send a request that changes state on other nodes (join, leave, disconnect) and wait
    /// until every node it went to applied it, found gone, or the request timeout: once
    /// this returns, a broadcast from any node sees the change. Meanwhile this node waits
    /// until it has applied what the other members queued for it before now, as each node
    /// asked does before applying the request (see the node's barrier): the caller applies
    /// this node's part next, after every emit that returned before this call.
    async fn apply(&self, kind: RequestKind, opts: &BroadcastOptions) -> Result<(), RequestError> {
        let pending = self.request(kind, opts, None, self.request_timeout).await?;
        // A request for one other server has no part here.
        let here = opts.server_id.is_none_or(|s| s == self.uid);
        let sockets = here && !self.local.sockets(opts.clone()).is_empty();
        let ordered = async {
            if here {
                self.node.ordered(sockets).await;
            }
        };
        futures_util::join!(pending.collect(), ordered);
        Ok(())
    }

    /// Send a request and start waiting, at most `wait`, for its responses.
    async fn request(
        &self,
        kind: RequestKind,
        opts: &BroadcastOptions,
        ack_timeout: Option<Duration>,
        wait: Duration,
    ) -> Result<Pending, RequestError> {
        self.node
            .request(to(opts), wait, |id| self.frame(id, kind, opts, ack_timeout))
            .await
    }
}

/// The nodes a request with these options goes to.
fn to(opts: &BroadcastOptions) -> To<'static> {
    opts.server_id
        .map_or(To::All, |server| To::Server(convert::uid_id(server)))
}

impl<E: SocketEmitter> NamespaceHandler for GossipAdapter<E> {
    fn selects_sockets(&self, req: &wire::Request) -> bool {
        convert::opts_from(req.opts.clone()).is_ok_and(|opts| !self.local.sockets(opts).is_empty())
    }

    fn on_request(&self, from: &PeerId, req: wire::Request) -> Result<(), String> {
        let ns = self.local.path();
        let opts = match convert::opts_from(req.opts) {
            Ok(opts) => opts,
            Err(e) => {
                if let Some(held_back) = REQUEST_LOG.allow() {
                    tracing::warn!(peer = %from, %ns, held_back, "request dropped: {e}");
                }
                if req.kind.expects_response() {
                    self.node.respond(from, req.id, ResponseBody::NotHosted);
                }
                return Ok(());
            }
        };
        // A packet this node's parser cannot send never reaches the local sockets (the
        // common parser panics on a binary payload): the peer breaks the protocol.
        let packet = |p| {
            convert::packet_from(p, self.parser)
                .map_err(|e| format!("request for namespace {ns} refused: {e}"))
        };
        match req.kind {
            RequestKind::Broadcast(p) => {
                if let Err(e) = self.local.broadcast(packet(p)?, opts)
                    && let Some(held_back) = REQUEST_LOG.allow()
                {
                    tracing::warn!(peer = %from, %ns, held_back, "remote broadcast: {e:?}");
                }
            }
            RequestKind::BroadcastWithAck(p) => {
                let timeout = req.ack_timeout_ms.map(Duration::from_millis);
                let (acks, count) = self.local.broadcast_with_ack(packet(p)?, opts, timeout);
                let node = self.node.clone();
                let to = from.clone();
                let id = req.id;
                // The count first: the requester then knows how many acks to wait for.
                self.node.respond(from, id, ResponseBody::AckCount(count));
                self.node.spawn(async move {
                    let mut acks = std::pin::pin!(acks);
                    while let Some((sid, res)) = acks.next().await {
                        let body = ResponseBody::Ack(convert::id(sid), ack_result(res));
                        // A client's answer that cannot cross (say, more binary attachments
                        // than a node accepts) is an error for that socket on the requester.
                        let refused = |why: String| {
                            let why = format!(
                                "the answer of socket {sid} cannot cross the cluster: {why}"
                            );
                            ResponseBody::Ack(convert::id(sid), refused_ack::<E::AckError>(&why))
                        };
                        node.respond_or(&to, id, body, refused);
                    }
                });
            }
            RequestKind::DisconnectSockets => {
                if let Err(e) = self.local.disconnect_socket(opts)
                    && let Some(held_back) = REQUEST_LOG.allow()
                {
                    tracing::warn!(peer = %from, %ns, held_back, "remote disconnect: {e:?}");
                }
                self.node.respond(from, req.id, ResponseBody::Done);
            }
            RequestKind::AllRooms => {
                let rooms = self
                    .local
                    .rooms(opts)
                    .into_iter()
                    .map(|r| r.to_string())
                    .collect();
                self.node.respond(from, req.id, ResponseBody::Rooms(rooms));
            }
            RequestKind::AddSockets(rooms) => {
                self.local.add_sockets(opts, convert::rooms_from(rooms));
                self.node.respond(from, req.id, ResponseBody::Done);
            }
            RequestKind::DelSockets(rooms) => {
                self.local.del_sockets(opts, convert::rooms_from(rooms));
                self.node.respond(from, req.id, ResponseBody::Done);
            }
            RequestKind::FetchSockets => {
                let sockets = self
                    .local
                    .fetch_sockets(opts)
                    .iter()
                    .map(convert::socket)
                    .collect();
                self.node
                    .respond(from, req.id, ResponseBody::Sockets(sockets));
            }
        }
        Ok(())
    }
}

fn ack_result<Err: serde::Serialize>(res: Result<Value, Err>) -> AckResult {
    match res {
        Ok(v) => AckResult::Ok(convert::value(&v)),
        Err(e) => AckResult::Err(match wire::encode_body(&e) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!("ack error cannot be encoded, sent empty: {err}");
                Bytes::new()
            }
        }),
    }
}

/// The error of a request whose answer from `peer` is `body`, if it says the peer could
/// not send its answer.
fn refused(peer: &PeerId, body: ResponseBody) -> Result<(), RequestError> {
    match body {
        ResponseBody::Refused(reason) => Err(RequestError::AnswerRefused {
            node: peer.name.to_string(),
            reason,
        }),
        _ => Ok(()),
    }
}

/// socketioxide's ack error for an answer that could not be parsed, with `why`, encoded as
/// the application's ack error type `Err` (socketioxide's `AckError`) decodes it; empty
/// (the requester then drops it, logged) for an error type that has no such variant.
fn refused_ack<Err: DeserializeOwned>(why: &str) -> AckResult {
    /// The shape of socketioxide's `AckError::Decode`: variant 0, holding the parser
    /// error's text.
    #[derive(serde::Serialize)]
    enum Decode<'a> {
        Decode(&'a str),
    }
    let encoded = wire::encode_body(&Decode::Decode(why))
        .ok()
        .filter(|bytes| wire::decode_body::<Err>(bytes).is_ok());
    AckResult::Err(encoded.unwrap_or_default())
}

/// The acks of remote sockets, as they arrive.
fn remote_acks<Err: DeserializeOwned + Send + 'static>(
    pending: Pending,
) -> BoxStream<'static, AckStreamItem<Err>> {
    futures_util::stream::unfold(pending, |mut pending| async move {
        loop {
            if let (_, ResponseBody::Ack(sid, res)) = pending.next().await?
                && let Some(item) = decode_ack::<Err>(&sid, res)
            {
                return Some((item, pending));
            }
        }
    })
    .boxed()
}

fn decode_ack<Err: DeserializeOwned>(sid: &Id, res: AckResult) -> Option<AckStreamItem<Err>> {
    let sid = match convert::sid(sid) {
        Ok(sid) => sid,
        Err(e) => {
            if let Some(held_back) = ANSWER_LOG.allow() {
                tracing::warn!(held_back, "ack dropped: {e}");
            }
            return None;
        }
    };
    let res = match res {
        AckResult::Ok(v) => Ok(convert::value_from(v)),
        AckResult::Err(bytes) => match wire::decode_body::<Err>(&bytes) {
            Ok(e) => Err(e),
            Err(e) => {
                if let Some(held_back) = ANSWER_LOG.allow() {
                    tracing::warn!(%sid, held_back, "ack error dropped, cannot decode it: {e}");
                }
                return None;
            }
        },
    };
    Some((sid, res))
}
