//! A subscription to a tokio broadcast channel as a stream: what a slow reader missed is
//! logged, and the stream goes on with what comes next; it ends when the channel closes.

use futures_core::Stream;
use tokio::sync::broadcast;

/// The messages of `rx` from now on; a lag is logged as `what` with how many were missed.
pub(crate) fn stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
    what: &'static str,
) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(message) => return Some((message, rx)),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "{what} lagged; the ones missed are dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
