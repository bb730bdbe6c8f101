//! What a checked envelope (see [`super::envelope`]) may change in chitchat's state, judged
//! against that state just before chitchat handles it. Pure: the state and the envelope in,
//! a verdict out.
//!
//! - **Nodes.** chitchat keeps every node a digest names (a dead one for an hour), and its
//!   own digest lists them all: once that digest leaves less than 100 bytes of a datagram for
//!   a delta, chitchat asserts and its task dies. So the nodes chitchat holds may take at most
//!   [`DIGEST_BUDGET`] bytes of digest (about 900 nodes of default names, 250 of the longest);
//!   an envelope that would add nodes beyond it is refused. Nodes it already holds are always
//!   taken.
//! - **Keys.** A delta may give a node at most [`MAX_KEYS`] keys in all.
//! - **This node.** Only this node speaks for itself: a delta about it is refused (it could
//!   wipe its keys, or push its version to the end of the range, where the next key it sets
//!   overflows).
//! - **Versions.** A delta that starts after a version this node does not have yet is
//!   refused (chitchat would drop it and log it: a peer could fill the log).

use std::collections::{BTreeMap, HashSet};

use chitchat::{ChitchatId, NodeState};

use super::envelope::{Checked, MAX_KEYS};

/// Most bytes the digest of the nodes chitchat holds may take: three quarters of a
/// datagram, which leaves a quarter (16 KiB) for the delta of a SynAck.
pub(crate) const DIGEST_BUDGET: usize = 48 * 1024;

/// Why an envelope may not change chitchat's state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Overrun {
    /// It names nodes beyond the digest budget.
    #[error(
        "it names {new} new nodes, beyond the {DIGEST_BUDGET} bytes of digest this node keeps \
         ({held} bytes held)"
    )]
    Nodes {
        /// Nodes it would add.
        new: usize,
        /// Bytes of digest held.
        held: usize,
    },
    /// A delta about this node.
    #[error("a delta about this node")]
    Me,
    /// A delta that starts after a version this node does not have.
    #[error("a delta about {0:?} from a version this node does not have")]
    Ahead(ChitchatId),
    /// Too many keys for a node.
    #[error("more than {MAX_KEYS} keys for {0:?}")]
    Keys(ChitchatId),
}

/// The bytes a node takes in a digest (chitchat's V0 encoding).
pub(crate) fn digest_len(id: &ChitchatId) -> usize {
    let ip = if id.gossip_advertise_addr.is_ipv4() {
        4
    } else {
        16
    };
    2 + id.node_id.len() + 8 + 1 + ip + 2 + 3 * 8
}

/// Whether chitchat, holding `state`, may handle `envelope`; `me` is this node.
pub(crate) fn admit(
    state: &BTreeMap<ChitchatId, NodeState>,
    me: &ChitchatId,
    envelope: &Checked,
) -> Result<(), Overrun> {
    let new: Vec<&ChitchatId> = envelope
        .digest
        .iter()
        .filter(|id| !state.contains_key(*id))
        .collect();
    if !new.is_empty() {
        let held: usize = state.keys().map(digest_len).sum();
        let added: usize = new.iter().map(|id| digest_len(id)).sum();
        if held + added > DIGEST_BUDGET {
            return Err(Overrun::Nodes {
                new: new.len(),
                held,
            });
        }
    }
    for d in &envelope.deltas {
        if d.id == *me {
            return Err(Overrun::Me);
        }
        match state.get(&d.id) {
            Some(s) => {
                if d.from_version > s.max_version() {
                    return Err(Overrun::Ahead(d.id.clone()));
                }
                let held: HashSet<&str> =
                    s.key_values_including_deleted().map(|(k, _)| k).collect();
                let added = d.keys.iter().filter(|k| !held.contains(k.as_str())).count();
                if held.len() + added > MAX_KEYS {
                    return Err(Overrun::Keys(d.id.clone()));
                }
            }
            // New in this envelope: chitchat makes its state from the digest first.
            None if new.contains(&&d.id) && d.from_version > 0 => {
                return Err(Overrun::Ahead(d.id.clone()));
            }
            // New in this envelope from the start, or unknown (chitchat ignores it).
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::membership::envelope::{Kind, NodeDelta};

    fn id(name: &str, port: u16) -> ChitchatId {
        ChitchatId::new(name, 1, ([127, 0, 0, 1], port).into())
    }

    /// A state holding `nodes`, each with keys `k0`.. `k{keys - 1}` (versions 1 up).
    fn state(nodes: &[(ChitchatId, usize)]) -> BTreeMap<ChitchatId, NodeState> {
        nodes
            .iter()
            .map(|(id, keys)| {
                let mut s = NodeState::for_test();
                for k in 0..*keys {
                    s.set(format!("k{k}"), "v");
                }
                (id.clone(), s)
            })
            .collect()
    }

    fn syn(digest: Vec<ChitchatId>) -> Checked {
        Checked {
            kind: Kind::Syn,
            digest,
            deltas: vec![],
            decoded: 0,
        }
    }

    fn ack(id: ChitchatId, from_version: u64, keys: &[&str]) -> Checked {
        Checked {
            kind: Kind::Ack,
            digest: vec![],
            deltas: vec![NodeDelta {
                id,
                from_version,
                keys: keys.iter().map(|k| k.to_string()).collect(),
            }],
            decoded: 0,
        }
    }

    #[test]
    fn new_nodes_are_taken_up_to_the_digest_budget_and_known_ones_always() {
        let me = id("me", 1);
        let mut held = vec![(me.clone(), 2)];
        let one = digest_len(&id(&"n".repeat(100), 2));
        // Fill the budget with nodes of 100-byte names.
        let mut port = 2;
        while held.iter().map(|(i, _)| digest_len(i)).sum::<usize>() + one <= DIGEST_BUDGET {
            held.push((id(&"n".repeat(100), port), 2));
            port += 1;
        }
        let s = state(&held);
        let known: Vec<ChitchatId> = held.iter().map(|(i, _)| i.clone()).collect();
        assert_eq!(admit(&s, &me, &syn(known.clone())), Ok(()), "known nodes");
        let newcomer = id("newcomer", 60_000);
        let mut with_new = known.clone();
        with_new.push(newcomer.clone());
        assert!(matches!(
            admit(&s, &me, &syn(with_new)),
            Err(Overrun::Nodes { new: 1, .. })
        ));
        // With room for it, it is taken.
        let s = state(&held[..held.len() - 1]);
        assert_eq!(admit(&s, &me, &syn(vec![newcomer])), Ok(()));
    }

    #[test]
    fn the_budget_leaves_chitchat_room_to_answer() {
        // chitchat asserts when its digest leaves less than 100 bytes of a datagram (65,507
        // bytes, 4 of header) for a delta.
        assert!(65_507 - 4 - DIGEST_BUDGET - digest_len(&id(&"n".repeat(128), 1)) >= 16_000);
    }

    #[test]
    fn deltas_about_this_node_from_ahead_or_with_too_many_keys_are_refused() {
        let me = id("me", 1);
        let peer = id("peer", 2);
        let s = state(&[(me.clone(), 2), (peer.clone(), 2)]);
        assert_eq!(
            admit(&s, &me, &ack(me.clone(), 0, &["k9"])),
            Err(Overrun::Me)
        );
        assert_eq!(admit(&s, &me, &ack(peer.clone(), 2, &["k2"])), Ok(()));
        assert_eq!(
            admit(&s, &me, &ack(peer.clone(), 3, &["k2"])),
            Err(Overrun::Ahead(peer.clone()))
        );
        let six: Vec<String> = (2..8).map(|k| format!("k{k}")).collect();
        let six: Vec<&str> = six.iter().map(String::as_str).collect();
        assert_eq!(
            admit(&s, &me, &ack(peer.clone(), 0, &six)),
            Ok(()),
            "8 in all"
        );
        let seven: Vec<String> = (2..9).map(|k| format!("k{k}")).collect();
        let seven: Vec<&str> = seven.iter().map(String::as_str).collect();
        assert_eq!(
            admit(&s, &me, &ack(peer.clone(), 0, &seven)),
            Err(Overrun::Keys(peer))
        );
        // A node chitchat does not hold: ignored by chitchat, so taken; unless the same
        // envelope's digest adds it, when it must start from the beginning.
        let other = id("other", 3);
        assert_eq!(admit(&s, &me, &ack(other.clone(), 9, &["k"])), Ok(()));
        let mut both = ack(other.clone(), 9, &["k"]);
        both.digest.push(other.clone());
        assert_eq!(admit(&s, &me, &both), Err(Overrun::Ahead(other.clone())));
        both.deltas[0].from_version = 0;
        assert_eq!(admit(&s, &me, &both), Ok(()));
    }
}
