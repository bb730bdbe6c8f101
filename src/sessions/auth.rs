//! Authenticate Socket.IO connections from the login session of their handshake cookie.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use socketioxide::{adapter::Adapter, extract::SocketRef, handler::ConnectMiddleware};
use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
};

/// The login session a connection was accepted with; the connect handler reads it with
/// `Extension<HandshakeSession>` (or `s.extensions.get::<HandshakeSession>()`).
#[derive(Clone, Debug)]
pub struct HandshakeSession(pub Record);

impl HandshakeSession {
    /// The value stored under `key`, deserialized; `None` when absent or of another shape.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let value = self.0.data.get(key)?.clone();
        serde_json::from_value(value).ok()
    }

    /// The session id.
    pub fn id(&self) -> Id {
        self.0.id
    }
}

/// Why a connection was refused. Its message is what the client receives in its
/// `connect_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The handshake request has no session cookie.
    #[error("not logged in: no session cookie")]
    NoCookie,
    /// The session cookie is not a session id.
    #[error("not logged in: malformed session cookie")]
    BadCookie,
    /// No session has this id (never saved, logged out, or expired).
    #[error("not logged in: no such session (logged out or expired)")]
    NoSession,
    /// The session lacks the key that marks a logged-in user.
    #[error("not logged in: the session has no `{0}`")]
    MissingKey(String),
    /// The store could not be read.
    #[error("session store unavailable")]
    Store,
}

/// A Socket.IO connect middleware that accepts a connection only when the session cookie of
/// its handshake request names a live session in `store` (the same store the HTTP side of
/// the application uses with `tower-sessions`), then hands the session to the connect
/// handler as a [`HandshakeSession`] extension. A refused client gets a `connect_error`
/// whose message is the [`AuthError`].
///
/// ```no_run
/// # use socketioxide::{SocketIo, extract::{Extension, SocketRef}, handler::ConnectHandler};
/// # use socketioxide_cluster::sessions::{HandshakeSession, SessionAuth};
/// # async fn run(io: SocketIo, store: tower_sessions::MemoryStore) {
/// let auth = SessionAuth::new(store).require_key("user");
/// let on_connect = async |s: SocketRef, Extension(session): Extension<HandshakeSession>| {
///     let user: String = session.get("user").unwrap_or_default();
///     s.emit("welcome", &user).ok();
/// };
/// io.ns("/", on_connect.with(auth.middleware()));
/// # }
/// ```
///
/// Only plain (unsigned) session cookies are read: do not combine it with
/// `SessionManagerLayer::with_signed` or `with_private`.
#[derive(Clone, Debug)]
pub struct SessionAuth<S> {
    store: S,
    cookie_name: Arc<str>,
    require_key: Option<Arc<str>>,
}

impl<S: SessionStore + Clone> SessionAuth<S> {
    /// Read sessions from `store`, named by the cookie `id` (the default name of
    /// `tower-sessions`).
    pub fn new(store: S) -> Self {
        Self {
            store,
            cookie_name: "id".into(),
            require_key: None,
        }
    }

    /// The name of the session cookie, if not `id` (`SessionManagerLayer::with_name`).
    pub fn with_cookie_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// Also require the session to hold `key` (say, the user id set at log-in), so that an
    /// anonymous session does not pass.
    pub fn require_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.require_key = Some(key.into());
        self
    }

    /// The session named by the cookie of `headers`, if it passes.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Record, AuthError> {
        let value = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(cookie::Cookie::split_parse_encoded)
            .filter_map(Result::ok)
            .find(|c| c.name() == &*self.cookie_name)
            .map(|c| c.value().to_string())
            .ok_or(AuthError::NoCookie)?;
        let id: Id = value.parse().map_err(|_| AuthError::BadCookie)?;
        let record = self
            .store
            .load(&id)
            .await
            .map_err(|e| {
                tracing::warn!("session store unavailable while authenticating a connection: {e}");
                AuthError::Store
            })?
            .ok_or(AuthError::NoSession)?;
        if let Some(key) = &self.require_key
            && !record.data.contains_key(&**key)
        {
            return Err(AuthError::MissingKey(key.to_string()));
        }
        Ok(record)
    }

    /// The connect middleware: `handler.with(auth.middleware())`.
    pub fn middleware<A: Adapter>(self) -> impl ConnectMiddleware<A, (SocketRef<A>,)> {
        move |s: SocketRef<A>| {
            let auth = self.clone();
            async move {
                let record = auth.authenticate(&s.req_parts().headers).await?;
                s.extensions.insert(HandshakeSession(record));
                Ok::<(), AuthError>(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };
    use time::{Duration, OffsetDateTime};
    use tower_sessions_core::session_store;

    /// A store holding one session, to drive `authenticate` without a cluster.
    #[derive(Clone, Debug, Default)]
    struct OneStore(Arc<Mutex<HashMap<Id, Record>>>);

    #[async_trait::async_trait]
    impl SessionStore for OneStore {
        async fn save(&self, r: &Record) -> session_store::Result<()> {
            self.0.lock().unwrap().insert(r.id, r.clone());
            Ok(())
        }
        async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
            Ok(self.0.lock().unwrap().get(id).cloned())
        }
        async fn delete(&self, id: &Id) -> session_store::Result<()> {
            self.0.lock().unwrap().remove(id);
            Ok(())
        }
    }

    fn headers(cookie: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, cookie.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn only_a_live_session_with_the_required_key_passes() {
        let store = OneStore::default();
        let mut record = Record {
            id: Id(42),
            data: HashMap::from([("user".to_string(), serde_json::json!("ada"))]),
            expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
        };
        store.save(&record).await.unwrap();
        let auth = SessionAuth::new(store.clone()).require_key("user");
        let cookie = format!("theme=dark; id={}", Id(42));
        let got = auth.authenticate(&headers(&cookie)).await.unwrap();
        assert_eq!(
            HandshakeSession(got).get::<String>("user").as_deref(),
            Some("ada")
        );

        assert_eq!(
            auth.authenticate(&http::HeaderMap::new()).await,
            Err(AuthError::NoCookie)
        );
        assert_eq!(
            auth.authenticate(&headers("id=!!")).await,
            Err(AuthError::BadCookie)
        );
        let other = format!("id={}", Id(7));
        assert_eq!(
            auth.authenticate(&headers(&other)).await,
            Err(AuthError::NoSession)
        );
        record.data.clear();
        store.save(&record).await.unwrap();
        assert_eq!(
            auth.authenticate(&headers(&cookie)).await,
            Err(AuthError::MissingKey("user".into()))
        );
        let renamed = SessionAuth::new(store).with_cookie_name("sid");
        let cookie = format!("sid={}", Id(42));
        assert!(renamed.authenticate(&headers(&cookie)).await.is_ok());
    }
}
