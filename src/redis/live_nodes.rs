//! Which nodes are on Redis: those subscribed to a channel of their name (`PUBSUB
//! CHANNELS`), as server events and presence list them.

use std::collections::HashSet;

use redis::aio::ConnectionManager;

/// `s` with the glob characters of a `PUBSUB CHANNELS` pattern escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The names of the nodes subscribed to a channel `<own><name>`, `me` excepted.
pub(crate) async fn live_nodes(
    conn: &ConnectionManager,
    own: &str,
    me: &str,
) -> Result<HashSet<String>, String> {
    let chans: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(format!("{}*", glob_escape(own)))
        .query_async(&mut conn.clone())
        .await
        .map_err(|e| e.to_string())?;
    Ok(chans
        .into_iter()
        .filter_map(|c| c.strip_prefix(own).map(str::to_string))
        .filter(|n| n != me)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_patterns_match_only_their_prefix() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("plain-1"), "plain-1");
    }
}
