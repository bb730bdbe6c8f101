//! # `sessions`: log in on one node, be known on every node
//!
//! One axum + Socket.IO server per process, configured like `chat` and `minimal` by the
//! `SOCKETIO_CLUSTER_*` variables (gossip by default, or `SOCKETIO_CLUSTER_BACKEND=redis://…`)
//! and `PORT`. The login session lives in the cluster's own session store: log in over HTTP
//! on node A, open the Socket.IO connection on node B and its handler knows the user; log
//! out on node C and the next connection, on any node, is refused.
//!
//! | route / event          | what it does                                                  |
//! |------------------------|---------------------------------------------------------------|
//! | `POST /login?user=ada` | starts a session holding `user` (sets the `id` cookie)        |
//! | `POST /logout`         | deletes the session everywhere                                |
//! | `GET /me`              | the user of the session, or 401                               |
//! | `GET /members`         | `{"count": n}`: other live nodes (gossip; `null` on Redis)    |
//! | Socket.IO `/`          | needs the session cookie; emits `welcome` `{user, node}`, answers `whoami` |
//!
//! ```sh
//! export SOCKETIO_CLUSTER_ID=demo SOCKETIO_CLUSTER_SECRET=$(openssl rand -hex 32) SOCKETIO_CLUSTER_SEEDS=127.0.0.1:7001
//! for i in 1 2 3; do
//!   PORT=300$i SOCKETIO_CLUSTER_NODE_NAME=n$i SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:700$i \
//!     SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:800$i cargo run --features sessions --example sessions &
//! done
//! curl -c jar -X POST 'http://127.0.0.1:3001/login?user=ada'   # log in on node 1
//! curl -b jar http://127.0.0.1:3002/me                         # "ada", from node 2
//! curl -b jar -X POST http://127.0.0.1:3003/logout             # log out on node 3
//! curl -b jar http://127.0.0.1:3001/me                         # 401
//! ```
//!
//! Once listening, the process prints `READY <http_port>` on stdout.

use std::{io::Write, net::SocketAddr};

#[path = "shared/listen.rs"]
mod listen;

use axum::{
    Json, Router,
    extract::Query,
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;
use socketioxide::{
    SocketIo,
    extract::{AckSender, Extension, SocketRef},
    handler::ConnectHandler,
};
use socketioxide_cluster::{
    ClusterAdapter, ClusterAdapterCtr,
    sessions::{HandshakeSession, SessionAuth, SessionStoreConfig},
};
use tower_sessions::{Expiry, Session, SessionManagerLayer, cookie::time};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Socket = SocketRef<ClusterAdapter<socketioxide::adapter::Emitter>>;

#[derive(Deserialize)]
struct Login {
    user: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let port: u16 = std::env::var("PORT").map_or(Ok(3000), |p| p.parse())?;
    let node = std::env::var("SOCKETIO_CLUSTER_NODE_NAME").unwrap_or_else(|_| "node".into());

    // One configuration gives the adapter and the session store of the same backend.
    let ctr = ClusterAdapterCtr::from_env().await?;
    tracing::info!(backend = ctr.backend(), "cluster backend selected");
    let store = ctr.session_store(SessionStoreConfig::default());
    let cluster = ctr.cluster();
    let (io_layer, io) = SocketIo::builder()
        .with_adapter::<ClusterAdapter<_>>(ctr)
        .build_layer();

    // Socket.IO: only connections whose cookie names a session with a user get in.
    let auth = SessionAuth::new(store.clone()).require_key("user");
    let on_connect = async move |s: Socket, Extension(session): Extension<HandshakeSession>| {
        let user: String = session.get("user").unwrap_or_default();
        tracing::info!(%user, sid = %s.id, "authenticated connection");
        let who = json!({ "user": user, "node": node });
        s.on("whoami", {
            let who = who.clone();
            async move |ack: AckSender<_>| {
                ack.send(&who).ok();
            }
        });
        s.emit("welcome", &who).ok();
    };
    io.ns("/", on_connect.with(auth.middleware())).await?;

    // HTTP: log in, log out, who am I, on any node.
    let sessions = SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(time::Duration::hours(1)));
    let app = Router::new()
        .route("/login", post(login))
        .route(
            "/logout",
            post(async |session: Session| session.flush().await.map_err(internal)),
        )
        .route("/me", get(me))
        .layer(sessions)
        .route(
            "/members",
            get(async move || {
                Json(json!({ "count": cluster.as_ref().map(|c| c.members().len()) }))
            }),
        )
        .layer(io_layer);

    let (listener, addr) = listen::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let port = addr.port();
    writeln!(std::io::stdout(), "READY {port}")?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn login(
    session: Session,
    Query(login): Query<Login>,
) -> Result<&'static str, (StatusCode, String)> {
    // A new id at log-in, so that a session id seen before log-in is worth nothing after.
    session.cycle_id().await.map_err(internal)?;
    session.insert("user", login.user).await.map_err(internal)?;
    Ok("logged in\n")
}

async fn me(session: Session) -> Result<String, StatusCode> {
    match session.get::<String>("user").await {
        Ok(Some(user)) => Ok(user),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}
