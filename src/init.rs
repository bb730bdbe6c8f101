//! The future that initialises a namespace's adapter, shared by every adapter type.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_core::future::BoxFuture;
use socketioxide_core::adapter::Spawnable;

/// The initialisation of a namespace's adapter: await it (`io.ns(..).await`), or let
/// socketioxide spawn it, which logs a failure.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct InitRes<Err>(BoxFuture<'static, Result<(), Err>>);

impl<Err> InitRes<Err> {
    pub(crate) fn new(fut: impl Future<Output = Result<(), Err>> + Send + 'static) -> Self {
        Self(Box::pin(fut))
    }
}

impl<Err> Future for InitRes<Err> {
    type Output = Result<(), Err>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl<Err: fmt::Display + Send + 'static> Spawnable for InitRes<Err> {
    fn spawn(self) {
        tokio::spawn(async move {
            if let Err(e) = self.0.await {
                tracing::error!("error initializing the cluster adapter: {e}");
            }
        });
    }
}
