//! Cluster-wide services: a top-level module (say, the session store) exchanges its own
//! messages with its instances on the other members, over the authenticated mesh. The
//! cluster routes them by service name and knows nothing of what they mean.
// Only the session store (feature `sessions`) runs a service today.
#![cfg_attr(not(feature = "sessions"), allow(dead_code))]

use std::sync::Weak;

use bytes::Bytes;

use super::{Node, read, write};
use crate::{
    error::RequestError,
    mesh::PeerId,
    wire::{Frame, ServiceFrame},
};

/// Receives the messages sent to one service of this node.
pub(crate) trait ServiceHandler: Send + Sync + 'static {
    /// A message from the instance of the service on `from`. Must not block.
    fn on_message(&self, from: &PeerId, body: Bytes);
}

impl Node {
    /// Route the messages of `service` to `handler` (replacing an earlier handler).
    pub(crate) fn register_service(&self, service: &str, handler: Weak<dyn ServiceHandler>) {
        if write(&self.services)
            .insert(service.to_string(), handler)
            .is_some()
        {
            tracing::warn!(%service, "service registered again; the earlier instance stops receiving");
        }
    }

    /// Send `body` to the instance of `service` on each of `targets` (in order per peer).
    /// Fails, sending nothing, when the message is larger than peers accept; a peer that
    /// cannot be reached is logged and skipped.
    pub(crate) async fn send_service(
        &self,
        targets: &[PeerId],
        service: &str,
        body: Bytes,
    ) -> Result<(), RequestError> {
        let frame = Frame::Service(ServiceFrame {
            service: service.to_string(),
            body,
        });
        self.send(targets, &frame, false).await
    }

    /// The largest frame peers accept, in bytes.
    pub(crate) fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    pub(super) fn on_service_frame(&self, from: &PeerId, frame: ServiceFrame) {
        let handler = read(&self.services)
            .get(&frame.service)
            .and_then(Weak::upgrade);
        match handler {
            Some(h) => h.on_message(from, frame.body),
            None => {
                tracing::debug!(peer = %from, service = %frame.service, "message for a service not running here dropped")
            }
        }
    }
}
