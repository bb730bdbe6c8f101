//! The Socket.IO browser client, served by the node itself at [`PATH`], for the example
//! pages: the official `socket.io-client` build, vendored in `examples/shared/vendor/`
//! (version and licence in its README), so a page needs no outside network.

use axum::{Router, http::header, routing::get};

/// Where a page loads the client from: `<script src="/socket.io.min.js"></script>`.
pub const PATH: &str = "/socket.io.min.js";

/// `socket.io-client`'s `dist/socket.io.min.js`, unchanged.
pub const SOCKET_IO_MIN_JS: &str = include_str!("vendor/socket.io.min.js");

/// A router serving the client at [`PATH`], to merge into the node's router.
pub fn router() -> Router {
    Router::new().route(
        PATH,
        get(|| async {
            (
                [
                    (
                        header::CONTENT_TYPE,
                        "application/javascript; charset=utf-8",
                    ),
                    (header::CACHE_CONTROL, "public, max-age=86400"),
                ],
                SOCKET_IO_MIN_JS,
            )
        }),
    )
}
