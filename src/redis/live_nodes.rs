//! The channels subscribed on Redis under a prefix (`PUBSUB CHANNELS`): how the bus lists
//! the nodes, each subscribed to a channel of its own.

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

/// The channels subscribed on Redis whose name starts with `prefix`, as the rest of
/// their name.
pub(crate) async fn subscribed_under(
    conn: &ConnectionManager,
    prefix: &str,
) -> Result<Vec<String>, String> {
    let chans: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(format!("{}*", glob_escape(prefix)))
        .query_async(&mut conn.clone())
        .await
        .map_err(|e| e.to_string())?;
    Ok(chans
        .into_iter()
        .filter_map(|c| c.strip_prefix(prefix).map(str::to_string))
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
