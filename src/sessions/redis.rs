//! The session store of the Redis backend: one key per session, expiring with it.

use redis::aio::ConnectionManager;
use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
    session_store,
};

use crate::redis::RedisHandle;

/// A `tower-sessions` store on the Redis connection of the Redis backend: each session is
/// the key `<prefix>-session#<id>` holding its JSON, set to expire when the session does,
/// so Redis itself drops expired sessions.
#[derive(Clone)]
pub struct RedisSessionStore {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn backend(e: redis::RedisError) -> session_store::Error {
    session_store::Error::Backend(format!("redis: {e}"))
}

impl RedisSessionStore {
    /// The store on the connection of a running Redis backend, under its prefix.
    pub fn new(handle: &RedisHandle) -> Self {
        Self {
            conn: handle.connection(),
            prefix: handle.prefix().to_string(),
        }
    }

    fn key(&self, id: &Id) -> String {
        format!("{}-session#{id}", self.prefix)
    }

    /// `SET` the record with its expiry; with `only_new`, unless the key exists. Returns
    /// whether it was set.
    async fn set(&self, record: &Record, only_new: bool) -> session_store::Result<bool> {
        let json =
            serde_json::to_vec(record).map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let expiry_ms = record.expiry_date.unix_timestamp_nanos() / 1_000_000;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&record.id))
            .arg(json)
            .arg("PXAT")
            .arg(i64::try_from(expiry_ms.max(1)).unwrap_or(i64::MAX));
        if only_new {
            cmd.arg("NX");
        }
        let res: Option<String> = cmd
            .query_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        Ok(res.is_some())
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        while !self.set(record, true).await? {
            record.id = Id::default();
        }
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.set(record, false).await.map(drop)
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let json: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.key(session_id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        json.map(|j| {
            serde_json::from_slice(&j).map_err(|e| session_store::Error::Decode(e.to_string()))
        })
        .transpose()
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        redis::cmd("DEL")
            .arg(self.key(session_id))
            .query_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(backend)
    }
}
