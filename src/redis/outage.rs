//! How the Redis backend behaves while Redis is unreachable or socketioxide-redis misbehaves:
//! operations still reach the local sockets, and ack streams end when they are complete.

use socketioxide_core::adapter::errors::BroadcastError;

/// Ends a stream as soon as it says it is terminated. socketioxide-core's remote ack stream
/// can take in its last expected message (an ack count of 0) and then return `Pending`
/// without a wake-up, so it would only end at its timeout.
pub(crate) struct EndWhenTerminated<S>(pub(crate) S);

impl<S: futures_core::stream::FusedStream + Unpin> futures_core::Stream for EndWhenTerminated<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        use std::{pin::Pin, task::Poll};
        match Pin::new(&mut self.0).poll_next(cx) {
            Poll::Pending if self.0.is_terminated() => Poll::Ready(None),
            other => other,
        }
    }
}

/// socketioxide-redis returns before touching the local sockets when Redis fails: apply the
/// operation locally anyway (local clients keep working during an outage), then report the
/// failure to the caller.
pub(crate) fn also_local<T, Err>(
    res: Result<T, Err>,
    remote_failed: impl FnOnce(&Err) -> bool,
    local: impl FnOnce(),
) -> Result<T, Err> {
    if let Err(e) = &res
        && remote_failed(e)
    {
        local();
    }
    res
}

pub(crate) fn is_remote_failure(e: &BroadcastError) -> bool {
    matches!(e, BroadcastError::Adapter(_))
}

pub(crate) fn log_local(res: Result<(), Vec<socketioxide_core::adapter::errors::SocketError>>) {
    if let Err(e) = res {
        tracing::warn!("local part of an operation during a Redis outage: {e:?}");
    }
}
