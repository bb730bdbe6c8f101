//! Who the members are on the Redis bus, without I/O. A node is a member while it is
//! subscribed to its own channel, `<prefix>-bus#<name>#<generation>`: Redis drops the
//! channel as soon as the node's connection closes (its process died, or it stopped). The
//! bus lists those channels (`PUBSUB CHANNELS`) and hands each listing to [`Known`], which
//! turns it into joins and leaves.
//!
//! A node is also a member from its first message on (it subscribes before it publishes):
//! a listing that began before that message left it out, so it does not make it leave;
//! only a listing that began after it was last heard from or listed does.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use super::envelope::MAX_NAME;
use crate::bus::{MemberChange, NodeId};

/// The channel of `node` on a bus whose own channels start with `own_prefix`.
pub(crate) fn channel(own_prefix: &str, node: &NodeId) -> String {
    format!("{own_prefix}{}#{}", node.name, node.generation)
}

/// The node whose channel is `<own_prefix><suffix>`, if it is one (a suffix
/// `<name>#<generation>`).
pub(crate) fn node_of(suffix: &str) -> Option<NodeId> {
    let (name, generation) = suffix.rsplit_once('#')?;
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    Some(NodeId {
        name: name.into(),
        generation: generation.parse().ok()?,
    })
}

/// The members known, each with when it was last listed or heard from.
#[derive(Default)]
pub(crate) struct Known {
    nodes: BTreeMap<NodeId, Instant>,
}

impl Known {
    /// The members, sorted.
    pub(crate) fn members(&self) -> Vec<NodeId> {
        self.nodes.keys().cloned().collect()
    }

    /// The nodes subscribed to their channel, as listed by a query sent at `at` (this
    /// node excepted): the joins and leaves it shows.
    pub(crate) fn listed(&mut self, live: &BTreeSet<NodeId>, at: Instant) -> Vec<MemberChange> {
        let mut changes = Vec::new();
        self.nodes.retain(|node, seen| {
            let stays = live.contains(node) || *seen > at;
            if !stays {
                changes.push(MemberChange::Left(node.clone()));
            }
            stays
        });
        for node in live {
            match self.nodes.get_mut(node) {
                Some(seen) => *seen = (*seen).max(at),
                None => {
                    self.nodes.insert(node.clone(), at);
                    changes.push(MemberChange::Joined(node.clone()));
                }
            }
        }
        changes
    }

    /// A message of `from` arrived at `at`: a join when it is new, unless it is of an
    /// older generation than a member of its name (a message still in flight from before
    /// a restart).
    pub(crate) fn heard(&mut self, from: &NodeId, at: Instant) -> Option<MemberChange> {
        if let Some(seen) = self.nodes.get_mut(from) {
            *seen = (*seen).max(at);
            return None;
        }
        let newer_held = self
            .nodes
            .keys()
            .any(|n| n.name == from.name && n.generation > from.generation);
        if newer_held {
            return None;
        }
        self.nodes.insert(from.clone(), at);
        Some(MemberChange::Joined(from.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn node(name: &str, generation: u64) -> NodeId {
        NodeId {
            name: name.into(),
            generation,
        }
    }

    #[test]
    fn channels_name_their_node_and_others_are_skipped() {
        let a = node("we#ird", 42);
        let chan = channel("p-bus#", &a);
        assert_eq!(chan, "p-bus#we#ird#42");
        assert_eq!(node_of(chan.strip_prefix("p-bus#").unwrap()), Some(a));
        for other in ["x", "#1", "a#x", "a#-1"] {
            assert_eq!(node_of(other), None, "{other}");
        }
        let long = format!("{}#1", "x".repeat(MAX_NAME + 1));
        assert_eq!(node_of(&long), None);
    }

    #[test]
    fn listings_make_joins_and_leaves() {
        let t0 = Instant::now();
        let mut known = Known::default();
        let (a, b) = (node("a", 1), node("b", 1));
        assert_eq!(
            known.listed(&[a.clone(), b.clone()].into(), t0),
            [
                MemberChange::Joined(a.clone()),
                MemberChange::Joined(b.clone())
            ]
        );
        assert_eq!(known.listed(&[a.clone(), b.clone()].into(), t0), []);
        // b restarted: its old generation leaves, the new one joins.
        let b2 = node("b", 2);
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(
            known.listed(&[a.clone(), b2.clone()].into(), t1),
            [MemberChange::Left(b), MemberChange::Joined(b2.clone())]
        );
        assert_eq!(known.members(), [a, b2]);
    }

    /// A node heard from after a listing began is not made to leave by it: that listing
    /// may have been taken before it subscribed.
    #[test]
    fn a_node_heard_from_leaves_only_by_a_later_listing() {
        let t0 = Instant::now();
        let mut known = Known::default();
        let c = node("c", 1);
        let heard_at = t0 + Duration::from_millis(10);
        assert_eq!(
            known.heard(&c, heard_at),
            Some(MemberChange::Joined(c.clone()))
        );
        assert_eq!(known.heard(&c, heard_at), None);
        assert_eq!(known.listed(&BTreeSet::new(), t0), [], "began before");
        let later = heard_at + Duration::from_millis(250);
        assert_eq!(
            known.listed(&BTreeSet::new(), later),
            [MemberChange::Left(c)],
            "its channel vanished"
        );
    }

    #[test]
    fn a_message_of_an_older_generation_is_no_join() {
        let t0 = Instant::now();
        let mut known = Known::default();
        known.listed(&[node("b", 2)].into(), t0);
        assert_eq!(known.heard(&node("b", 1), t0), None);
        assert_eq!(known.members(), [node("b", 2)]);
    }
}
