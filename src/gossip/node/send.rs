//! Frames to peers: encoded once within the bounds peers accept, queued for each target
//! without waiting, and every frame given up on counted and logged; requests booked with the
//! machine before they go; responses.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{DROP_LOG, Input, Node, Pending, REFUSED_LOG, Route, To, lock};
use crate::{
    error::RequestError,
    gossip::mesh::{self, PeerId},
    gossip::wire::{self, Frame, Id, Response, ResponseBody},
    metrics::DropReason,
};

impl Node {
    /// Queue a frame for each peer `to` names, in order per peer, without waiting on any of
    /// them (the returned future is ready at its first poll): a peer whose send queue is
    /// past its byte budget (it is cut as a slow consumer), or to which no connection can be
    /// started, does not get it (the drop is counted and logged at a bounded rate) and the
    /// others get theirs at once. A frame for a peer being connected to waits in its queue
    /// until the connection is made. Fails, sending nothing, when the frame is larger than
    /// peers accept.
    pub(crate) async fn send(
        &self,
        to: To<'_>,
        frame: &Frame,
        volatile: bool,
    ) -> Result<(), RequestError> {
        self.send_now(to, frame, volatile)
    }

    /// [`Node::send`], from code that cannot wait.
    pub(super) fn send_now(
        &self,
        to: To<'_>,
        frame: &Frame,
        volatile: bool,
    ) -> Result<(), RequestError> {
        let routes = self.routes(to);
        if !routes.is_empty() {
            let bytes = self.encode(frame, routes.iter().map(|(peer, _)| peer))?;
            self.dispatch(routes, bytes, volatile, None);
        }
        Ok(())
    }

    /// Send a request to each peer `to` names, as [`Node::send`] does, and wait for their
    /// responses: `frame` builds the request from its id. The request ends once every peer
    /// asked answered in full or was found gone (a peer its frame could not be queued for is
    /// gone at once), or after `wait`.
    pub(crate) async fn request(
        self: &Arc<Self>,
        to: To<'_>,
        wait: Duration,
        frame: impl FnOnce(Id) -> Frame,
    ) -> Result<Pending, RequestError> {
        let routes = self.routes(to);
        let targets: Vec<PeerId> = routes.iter().map(|(peer, _)| peer.clone()).collect();
        let id = Id(rand::random());
        let frame = frame(id);
        let bytes = self.encode(&frame, targets.iter())?;
        // Booked before sending: a response can arrive before the frames are queued.
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.state).requesters.insert(id, tx);
        let _ = self.feed(Input::Asked {
            id,
            targets: targets.clone(),
            wait,
        });
        let what = (describe(&frame), kind(&frame));
        let pending = Pending::new(&self.mesh.metrics().node, id, rx, what, &targets);
        self.dispatch(routes, bytes, false, Some(id));
        Ok(pending)
    }

    /// Where a frame for the peers `to` names goes: the send queue of each one's link (a
    /// connection started for those without one), in one look at the machine.
    pub(super) fn routes(&self, to: To<'_>) -> Vec<Route<mesh::Sender>> {
        let mut routes = Vec::new();
        let rest = {
            let mut state = lock(&self.state);
            let effects = state.machine.routes(to, &mut routes);
            self.carry_out_locked(&mut state, effects)
        };
        if !rest.is_empty() {
            let _ = self.run(rest);
        }
        routes
    }

    /// Where a frame for `peer` goes, as [`Node::routes`] says.
    pub(super) fn route(&self, peer: &PeerId) -> Result<mesh::Sender, &'static str> {
        let (route, rest) = {
            let mut state = lock(&self.state);
            let (route, effects) = state.machine.route(peer);
            (route, self.carry_out_locked(&mut state, effects))
        };
        if !rest.is_empty() {
            let _ = self.run(rest);
        }
        route
    }

    /// Queue an encoded frame on each of `routes`, never waiting: it is held once, however
    /// many queues hold it. Request `awaited` stops waiting for a peer its frame could not be
    /// queued for.
    pub(super) fn dispatch(
        &self,
        routes: Vec<Route<mesh::Sender>>,
        bytes: Bytes,
        volatile: bool,
        awaited: Option<Id>,
    ) {
        let charged = self.mesh.charge(bytes).map_err(queue_error);
        for (peer, route) in routes {
            let queued = charged
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|frame| self.queue_frame(&peer, route, frame));
            if let Err((reason, why)) = queued {
                self.frame_dropped(&peer, volatile, reason, &why);
                if let Some(id) = awaited {
                    let _ = self.feed(Input::NotSent(id, peer));
                }
            }
        }
    }

    /// Queue a frame for `peer` on `route`, never waiting, neither for room nor on a
    /// connection being made. A queue found closed (its connection just closed) is
    /// replaced once.
    pub(super) fn queue_frame(
        &self,
        peer: &PeerId,
        route: Result<mesh::Sender, &'static str>,
        frame: &mesh::Charged,
    ) -> Result<(), (DropReason, String)> {
        let gone = |why: &str| (DropReason::PeerGone, why.to_string());
        match route.map_err(gone)?.try_send(frame) {
            Err(mesh::SendError::Closed) => {}
            sent => return sent.map_err(queue_error),
        }
        match self.route(peer).map_err(gone)?.try_send(frame) {
            Err(mesh::SendError::Closed) => Err(gone("connection closed")),
            sent => sent.map_err(queue_error),
        }
    }

    /// Count and log (at a bounded rate) a frame for `peer` given up on.
    pub(super) fn frame_dropped(
        &self,
        peer: &PeerId,
        volatile: bool,
        reason: DropReason,
        why: &str,
    ) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.mesh.metrics().drops.record(&peer.name, reason, 1);
        if let Some(held_back) = DROP_LOG.allow() {
            tracing::warn!(node = %self.me, %peer, volatile, held_back, "frame dropped: {why}");
        }
    }

    /// Encode a frame for `targets` with the wire's one check of what peers accept: a frame
    /// a peer would refuse (a list beyond its bound, larger than a frame; the peer would
    /// drop the link) is refused here, counted as dropped for each target and logged at a
    /// bounded rate. Nothing of it is sent.
    pub(super) fn encode<'a>(
        &self,
        frame: &Frame,
        targets: impl Iterator<Item = &'a PeerId>,
    ) -> Result<Bytes, RequestError> {
        let err = match wire::encode_within(frame, self.max_frame_size) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => e,
        };
        if !matches!(err, wire::EncodeError::Codec(_)) {
            for peer in targets {
                self.mesh
                    .metrics()
                    .drops
                    .record(&peer.name, DropReason::TooLarge, 1);
            }
            if let Some(held_back) = REFUSED_LOG.allow() {
                tracing::warn!(node = %self.me, held_back, "{} not sent to peers: {err}", describe(frame));
            }
        }
        Err(err.into())
    }

    /// Frames to peers dropped since the node started: given up on before reaching the mesh,
    /// or still queued when a connection closed or could not be made.
    pub(crate) fn frames_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.mesh.frames_dropped()
    }

    /// Bytes queued for all peers, each frame counted once.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.mesh.queued_bytes()
    }

    /// Outgoing connections closed as slow consumers.
    pub(crate) fn slow_peers_disconnected(&self) -> u64 {
        self.mesh.slow_peers_disconnected()
    }

    /// Send a response to the node that made a request, never waiting: like any frame, it
    /// is dropped (and counted) when the requester's send queue is past its budget, and the
    /// requester is then cut as a slow consumer. A response that cannot cross (a list
    /// beyond a bound of the wire, larger than a frame) goes as [`ResponseBody::Refused`]
    /// instead, so that the requester learns at once why it gets nothing.
    pub(crate) fn respond(&self, to: &PeerId, id: Id, body: ResponseBody) {
        self.respond_or(to, id, body, ResponseBody::Refused);
    }

    /// [`Node::respond`], sending `refused(why)` in place of a response that cannot cross.
    pub(crate) fn respond_or(
        &self,
        to: &PeerId,
        id: Id,
        body: ResponseBody,
        refused: impl FnOnce(String) -> ResponseBody,
    ) {
        let none = std::iter::empty();
        let encoded = match self.encode(&Frame::Response(Response { id, body }), none) {
            Err(e @ (RequestError::OverBound { .. } | RequestError::TooLarge { .. })) => {
                let body = refused(e.to_string());
                self.encode(&Frame::Response(Response { id, body }), std::iter::empty())
            }
            encoded => encoded,
        };
        let queued = match encoded {
            Ok(bytes) => self
                .mesh
                .charge(bytes)
                .map_err(queue_error)
                .and_then(|frame| self.queue_frame(to, self.route(to), &frame)),
            Err(RequestError::TooLarge { size, max }) => Err((
                DropReason::TooLarge,
                format!("larger ({size} bytes) than peers accept ({max})"),
            )),
            Err(e) => Err((DropReason::PeerGone, format!("cannot encode it: {e}"))),
        };
        if let Err((reason, why)) = queued {
            self.frame_dropped(to, false, reason, &format!("response: {why}"));
        }
    }
}

/// Why a frame could not be queued, as a drop reason and a log line.
fn queue_error(e: mesh::SendError) -> (DropReason, String) {
    let reason = match e {
        mesh::SendError::Closed => DropReason::PeerGone,
        mesh::SendError::PeerBudget => DropReason::QueueFull,
        mesh::SendError::NodeBudget => DropReason::NodeFull,
    };
    (reason, e.to_string())
}

/// What a request is, for its metrics.
fn kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Request(req) => req.kind.name(),
        Frame::Service(_) => "service",
        _ => "frame",
    }
}

/// What a request is, for log lines.
fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Request(req) => format!("request {} on namespace {}", req.kind.name(), req.ns),
        Frame::Service(msg) => format!("message to service {}", msg.service),
        Frame::Response(_) => "response".into(),
        _ => "frame".into(),
    }
}
