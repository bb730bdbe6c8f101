//! Cluster-wide services: a top-level module (the session store, server events, presence)
//! exchanges its own messages with its instances on the other members, over the
//! authenticated mesh. The cluster routes them by service name and knows nothing of what
//! they mean; on request it waits until each target has handled a message, or answered it
//! in the service's own encoding.

use std::sync::{Arc, Weak};

use bytes::Bytes;

use super::{Node, To, read, write};
use crate::{
    error::RequestError,
    gossip::peer::PeerId,
    gossip::wire::{Frame, Id, ResponseBody, ServiceFrame},
};

/// Receives the messages sent to one service of this node.
pub(crate) trait ServiceHandler: Send + Sync + 'static {
    /// A message from the instance of the service on `from`. Must not block; once it
    /// returns, the message counts as handled (and is confirmed if the sender asked).
    fn on_message(&self, from: &PeerId, body: Bytes);

    /// A message whose sender waits for an answer: answer through `reply`, at once or
    /// later (never answered, it answers [`ResponseBody::Done`] when dropped). By default,
    /// handled as [`on_message`](Self::on_message) and confirmed at once.
    fn on_request(&self, from: &PeerId, body: Bytes, reply: ServiceReply) {
        self.on_message(from, body);
        drop(reply);
    }
}

/// The answer still owed to the sender of a confirmed service message. Dropped without
/// [`send`](Self::send), it answers [`ResponseBody::Done`].
pub(crate) struct ServiceReply {
    node: Weak<Node>,
    to: PeerId,
    id: Id,
    sent: bool,
}

impl ServiceReply {
    /// Answer with the service's own `body` (see [`ResponseBody::Service`]); never waits.
    pub(crate) fn send(mut self, body: Bytes) {
        self.answer(ResponseBody::Service(body));
    }

    fn answer(&mut self, body: ResponseBody) {
        if std::mem::replace(&mut self.sent, true) {
            return;
        }
        if let Some(node) = self.node.upgrade() {
            node.respond(&self.to, self.id, body);
        }
    }
}

impl Drop for ServiceReply {
    fn drop(&mut self) {
        self.answer(ResponseBody::Done);
    }
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

    /// Send `body` to the instance of `service` on each of `targets` and wait for their
    /// answers (see [`ServiceHandler::on_request`]) until each answered or was found gone,
    /// or `wait` passed. Fails, sending nothing, when the message is larger than peers
    /// accept.
    pub(crate) async fn request_service(
        self: &Arc<Self>,
        targets: &[PeerId],
        service: &str,
        body: Bytes,
        wait: std::time::Duration,
    ) -> Result<super::Pending, RequestError> {
        self.request(To::Peers(targets), wait, |id| {
            Frame::Service(ServiceFrame {
                service: service.to_string(),
                confirm: Some(id),
                body,
            })
        })
        .await
    }

    /// The largest frame peers accept, in bytes.
    pub(crate) fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    pub(super) fn on_service_frame(&self, from: &PeerId, frame: ServiceFrame) {
        let handler = read(&self.services)
            .get(&frame.service)
            .and_then(Weak::upgrade);
        let reply = frame.confirm.map(|id| ServiceReply {
            node: self.weak(),
            to: from.clone(),
            id,
            sent: false,
        });
        match (handler, reply) {
            (Some(h), Some(reply)) => h.on_request(from, frame.body, reply),
            (Some(h), None) => h.on_message(from, frame.body),
            (None, reply) => {
                tracing::debug!(peer = %from, service = %frame.service, "message for a service not running here dropped");
                if let Some(mut reply) = reply {
                    reply.answer(ResponseBody::NotHosted);
                }
            }
        }
    }
}
