//! The dialing side of the mesh: an authenticated connection to a peer, made by this node,
//! and the [`Link`] that writes what the node queues for that peer.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use quinn::VarInt;
use tracing::Instrument;

use super::auth::Role;
use super::handshake::{MAX_HELLO, exporter, peer_addrs};
use super::link::{Link, Queue};
use super::writer::{WriterLimits, write_frames};
use super::{
    CLOSE_AUTH, CLOSE_PROTOCOL, CLOSE_UNUSED, ConnId, Inbound, Mesh, MeshError, PeerId, Sender, tls,
};
use crate::gossip::wire;

impl Mesh {
    /// Open an authenticated connection to the node at `addr`, and its outgoing [`Link`].
    /// With `expect`, the node there must be that peer.
    #[cfg(test)]
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        expect: Option<&PeerId>,
        inbound: Arc<dyn Inbound>,
    ) -> Result<(PeerId, Link), MeshError> {
        let name = expect.map_or_else(|| "".into(), |p| p.name.clone());
        self.connect_with(addr, expect, inbound, self.queue(&name))
            .await
    }

    /// Open an authenticated connection to the node at `addr`, and its outgoing [`Link`],
    /// which writes the frames of `queue` (those queued while connecting first). With
    /// `expect`, the node there must be that peer. If the connection cannot be made, what
    /// was queued is dropped (and counted).
    pub(crate) async fn connect_with(
        &self,
        addr: SocketAddr,
        expect: Option<&PeerId>,
        inbound: Arc<dyn Inbound>,
        (tx, queue): (Sender, Queue),
    ) -> Result<(PeerId, Link), MeshError> {
        let fail = |reason: String| MeshError::Connect { addr, reason };
        let conn = tokio::time::timeout(self.peer_timeout, async {
            let connecting = self
                .endpoint
                .connect_with(self.client.clone(), addr, tls::SERVER_NAME)
                .map_err(|e| fail(e.to_string()))?;
            let conn = connecting.await.map_err(|e| fail(e.to_string()))?;
            let exporter = exporter(&conn).map_err(fail)?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
            send.write_all(&self.signed_hello(Role::Client, &exporter))
                .await
                .map_err(|e| fail(e.to_string()))?;
            send.finish().map_err(|e| fail(e.to_string()))?;
            let bytes = recv.read_to_end(MAX_HELLO).await.map_err(|e| {
                // A refusing peer closes the connection with its reason: say it.
                match conn.close_reason() {
                    Some(closed) => fail(format!("no hello from peer: {closed}")),
                    None => fail(format!("no hello from peer: {e}")),
                }
            })?;
            let hello = wire::decode_hello(&bytes).map_err(|e| fail(format!("bad hello: {e}")))?;
            if let Err(source) = self.keyring.verify(Role::Server, &exporter, &hello) {
                conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication failed");
                return Err(MeshError::Auth { addr, source });
            }
            if self.ca_mode
                && let Err(e) = tls::check_peer_name(&conn, &hello.node_name)
            {
                conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication failed");
                return Err(fail(format!(
                    "claims to be node {:?}, but {e}",
                    hello.node_name
                )));
            }
            Ok((conn, hello))
        })
        .await
        .map_err(|_| fail("timed out".into()))??;
        let (conn, hello) = conn;
        let addrs = peer_addrs(&hello).map_err(|reason| {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"bad hello");
            fail(reason)
        })?;
        let peer = PeerId {
            name: hello.node_name.into(),
            generation: hello.generation,
        };
        if let Some(expect) = expect
            && expect != &peer
        {
            conn.close(VarInt::from_u32(CLOSE_UNUSED), b"unexpected peer");
            return Err(fail(format!("expected {expect}, found {peer}")));
        }
        let stream = conn.open_uni().await.map_err(|e| fail(e.to_string()))?;
        let id = ConnId {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            incoming: false,
        };
        let up = self.counters.metrics.links(id.incoming).clone();
        let inbound = self.links.track(id, &peer, &conn, inbound, up);
        tokio::spawn(
            write_frames(
                conn.clone(),
                id,
                stream,
                queue,
                peer.clone(),
                inbound,
                WriterLimits {
                    stall: self.peer_timeout,
                    log: self.link_end_log.clone(),
                },
            )
            .instrument(self.span()),
        );
        Ok((
            peer,
            Link {
                conn,
                id,
                addrs,
                tx,
                budgets: self.budgets.clone(),
            },
        ))
    }
}
