//! Cluster-wide services: a top-level module (the session store, presence) exchanges its own
//! messages with its instances on the other members, over the authenticated mesh. The
//! cluster routes them by service name and knows nothing of what they mean; on request it
//! waits until each target has handled a message.

use std::sync::{Arc, Weak};

use bytes::Bytes;

use super::{Node, To, read, write};
use crate::{
    error::RequestError,
    gossip::peer::PeerId,
    gossip::wire::{Frame, ResponseBody, ServiceFrame},
};

/// Receives the messages sent to one service of this node.
pub(crate) trait ServiceHandler: Send + Sync + 'static {
    /// A message from the instance of the service on `from`. Must not block; once it
    /// returns, the message counts as handled (and is confirmed if the sender asked).
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
    ///
    /// With `confirm`, also wait until each target has handled it, is found gone, or does
    /// not run the service — at most the request timeout (then the silent peers are logged).
    pub(crate) async fn send_service(
        self: &Arc<Self>,
        targets: &[PeerId],
        service: &str,
        body: Bytes,
        confirm: bool,
    ) -> Result<(), RequestError> {
        let frame = |confirm| {
            Frame::Service(ServiceFrame {
                service: service.to_string(),
                confirm,
                body,
            })
        };
        let to = To::Peers(targets);
        if confirm {
            let pending = self
                .request(to, self.request_timeout, |id| frame(Some(id)))
                .await?;
            pending.collect().await;
            Ok(())
        } else {
            self.send(to, &frame(None), false).await
        }
    }

    /// The largest frame peers accept, in bytes.
    pub(crate) fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    pub(super) fn on_service_frame(&self, from: &PeerId, frame: ServiceFrame) {
        let handler = read(&self.services)
            .get(&frame.service)
            .and_then(Weak::upgrade);
        let answer = match handler {
            Some(h) => {
                h.on_message(from, frame.body);
                ResponseBody::Done
            }
            None => {
                tracing::debug!(peer = %from, service = %frame.service, "message for a service not running here dropped");
                ResponseBody::NotHosted
            }
        };
        if let Some(id) = frame.confirm
            && let Some(node) = self.weak().upgrade()
        {
            node.respond_later(from, id, answer);
        }
    }
}
