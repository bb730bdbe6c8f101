//! The accepting side of the mesh: the loop that admits incoming connections
//! ([`Mesh::serve`]), the server side of the handshake, and the serving of a proven peer's
//! connection (a reader per stream it opens).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use quinn::{Connection, VarInt};
use tracing::Instrument;

use super::auth::Role;
use super::handshake::{MAX_HELLO, PEER_UNI_STREAMS, PEER_WINDOW, exporter, peer_addrs};
use super::reader::read_frames;
use super::{CLOSE_AUTH, CLOSE_REFUSED, ConnId, Inbound, Mesh, PeerAddrs, PeerId, admission, tls};
use crate::gossip::wire;

impl Mesh {
    /// Accept connections until the endpoint closes.
    ///
    /// Each incoming connection is admitted by [`admission::admit`], by its source (the
    /// mesh address of a node `inbound` knows, or a host): asked to validate its address
    /// (Retry) when many are proving or its source has one proving already, refused when
    /// the room of its source, of strangers or of all is full. An accepted one must complete
    /// TLS and prove the secret within the handshake deadline.
    pub(crate) fn serve(self: &Arc<Self>, inbound: Arc<dyn Inbound>) {
        let mesh = self.clone();
        let span = self.span();
        let serve = async move {
            while let Some(incoming) = mesh.endpoint.accept().await {
                let remote = incoming.remote_address();
                let known = inbound.knows_address(remote);
                let source = admission::Source::of(remote, known);
                let slot = match mesh.gate.admit(source, incoming.remote_address_validated()) {
                    Ok(slot) => slot,
                    Err(admission::Admission::Retry) => {
                        if let Err(e) = incoming.retry() {
                            // Only possible for a validated address, which is not retried.
                            e.into_incoming().refuse();
                        }
                        continue;
                    }
                    Err(refusal) => {
                        incoming.refuse();
                        if let Some(suppressed) = mesh.gate.log.take() {
                            let counts = mesh.gate.counts();
                            let why = match refusal {
                                admission::Admission::Refuse(full) => full.to_string(),
                                other => format!("{other:?}"),
                            };
                            tracing::warn!(
                                %remote,
                                known,
                                suppressed,
                                refused = counts.refused,
                                retried = counts.retried,
                                unproven = mesh.gate.unproven(),
                                "refused mesh connection: {why}"
                            );
                        }
                        continue;
                    }
                };
                let mesh = mesh.clone();
                let inbound = inbound.clone();
                let span = mesh.span();
                let admit = async move {
                    let deadline = tokio::time::Instant::now() + mesh.handshake_timeout;
                    let conn = match tokio::time::timeout_at(deadline, incoming).await {
                        Ok(Ok(conn)) => conn,
                        Ok(Err(e)) => return mesh.refused(remote, &format!("TLS: {e}")),
                        // Dropping the handshake abandons the connection.
                        Err(_) => return mesh.refused(remote, "no TLS handshake in time"),
                    };
                    let peer =
                        match tokio::time::timeout_at(deadline, mesh.accept_hello(&conn)).await {
                            Ok(Ok(peer)) => peer,
                            Ok(Err(reason)) => {
                                conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication failed");
                                return mesh.refused(remote, &reason);
                            }
                            Err(_) => {
                                conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication timeout");
                                return mesh.refused(remote, "no authentication in time");
                            }
                        };
                    drop(slot);
                    mesh.serve_connection(conn, peer, inbound).await;
                };
                tokio::spawn(admit.instrument(span));
            }
        };
        tokio::spawn(serve.instrument(span));
    }

    /// Count and log (at a bounded rate) an incoming connection that did not prove itself.
    fn refused(&self, remote: SocketAddr, reason: &str) {
        self.gate.failed();
        if let Some(suppressed) = self.gate.log.take() {
            let counts = self.gate.counts();
            tracing::warn!(
                %remote,
                suppressed,
                failed = counts.failed,
                unproven = self.gate.unproven(),
                "refused mesh connection: {reason}"
            );
        }
    }

    async fn serve_connection(
        &self,
        conn: Connection,
        (peer, addrs): (PeerId, PeerAddrs),
        inbound: Arc<dyn Inbound>,
    ) {
        let remote = conn.remote_address();
        let id = ConnId {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            incoming: true,
        };
        if let Err(reason) = inbound.on_peer_connected(&peer, id, addrs) {
            if let Some(held_back) = self.peer_log.allow() {
                tracing::warn!(%peer, %remote, held_back, "refused mesh connection: {reason}");
            }
            conn.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
            return;
        }
        tracing::debug!(%peer, %remote, "mesh peer authenticated (incoming)");
        let up = self.counters.metrics.links(id.incoming).clone();
        let inbound = self.links.track(id, &peer, &conn, inbound, up);
        loop {
            let stream = tokio::select! {
                s = conn.accept_uni() => s,
                reason = conn.closed() => {
                    inbound.on_connection_closed(&peer, id, &(&reason).into());
                    return;
                }
            };
            match stream {
                Ok(stream) => {
                    let conn = conn.clone();
                    let peer = peer.clone();
                    let inbound = inbound.clone();
                    let max = self.max_frame_size;
                    let counters = self.counters.clone();
                    let log = self.peer_log.clone();
                    let read = read_frames(conn, stream, peer, inbound, max, counters, log);
                    tokio::spawn(read.instrument(self.span()));
                }
                Err(reason) => {
                    inbound.on_connection_closed(&peer, id, &(&reason).into());
                    return;
                }
            }
        }
    }

    /// Server side of the handshake: read and check the client's [`Hello`](wire::Hello), answer with ours.
    async fn accept_hello(&self, conn: &Connection) -> Result<(PeerId, PeerAddrs), String> {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let refuse = |msg: String| {
            conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication failed");
            msg
        };
        let bytes = recv
            .read_to_end(MAX_HELLO)
            .await
            .map_err(|e| refuse(format!("reading hello: {e}")))?;
        let hello = wire::decode_hello(&bytes).map_err(|e| refuse(format!("bad hello: {e}")))?;
        let exporter = exporter(conn).map_err(&refuse)?;
        self.keyring
            .verify(Role::Client, &exporter, &hello)
            .map_err(|e| refuse(format!("node {:?}: {e}", hello.node_name)))?;
        if self.ca_mode {
            tls::check_peer_name(conn, &hello.node_name)
                .map_err(|e| refuse(format!("claims to be node {:?}, but {e}", hello.node_name)))?;
        }
        let addrs = peer_addrs(&hello).map_err(refuse)?;
        // Proven: now, and only now, the peer gets room for its frames.
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(PEER_UNI_STREAMS));
        conn.set_receive_window(VarInt::from_u32(PEER_WINDOW));
        let reply = self.signed_hello(Role::Server, &exporter);
        send.write_all(&reply).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        Ok((
            PeerId {
                name: hello.node_name.into(),
                generation: hello.generation,
            },
            addrs,
        ))
    }
}
