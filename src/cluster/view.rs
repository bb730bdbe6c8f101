//! Who is in the cluster, as this node sees it.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use tokio::time::Instant;

use crate::{membership::Member, mesh::PeerId};

/// First delay before connecting again to a live peer that could not be verified.
pub(super) const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest delay between such attempts.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(30);

/// Who is in the cluster, as this node sees it. A member is a node that gossip shows live
/// **and** that proved the cluster secret on a mesh connection: gossip alone is never trusted.
#[derive(Default)]
pub(super) struct View {
    /// Nodes gossip shows live, minus those that left.
    live: HashMap<PeerId, Member>,
    /// Peers that proved the cluster secret on a mesh connection.
    verified: HashSet<PeerId>,
    /// Peers that left gracefully: ignored even while gossip still shows them.
    left: HashSet<PeerId>,
    /// When to try again to connect to a live peer not verified yet, and the next backoff.
    retry: HashMap<PeerId, (Instant, Duration)>,
}

impl View {
    pub(super) fn members(&self) -> impl Iterator<Item = &Member> {
        self.live
            .iter()
            .filter(|(p, _)| self.verified.contains(*p))
            .map(|(_, m)| m)
    }

    pub(super) fn member_map(&self) -> HashMap<PeerId, Member> {
        self.members().map(|m| (m.peer_id(), m.clone())).collect()
    }

    /// Whether `peer` is a member: live and verified.
    pub(super) fn is_member(&self, peer: &PeerId) -> bool {
        self.live.contains_key(peer) && self.verified.contains(peer)
    }

    /// Whether gossip shows `peer` live, or it proved the secret (so its link, address and
    /// server ids are worth keeping).
    pub(super) fn knows(&self, peer: &PeerId) -> bool {
        self.live.contains_key(peer) || self.verified.contains(peer)
    }

    /// The live member `peer`, verified or not: where to reach it.
    pub(super) fn live(&self, peer: &PeerId) -> Option<&Member> {
        self.live.get(peer)
    }

    /// `peer` proved the cluster secret.
    pub(super) fn verify(&mut self, peer: &PeerId) {
        if !self.left.contains(peer) {
            self.verified.insert(peer.clone());
            self.retry.remove(peer);
        }
    }

    /// `peer` left on purpose: ignore it even while gossip still shows it.
    pub(super) fn leave(&mut self, peer: &PeerId) {
        self.left.insert(peer.clone());
        self.live.remove(peer);
        self.verified.remove(peer);
    }

    /// A new gossip view: `next` are the live nodes, `listed` tells whether gossip still
    /// knows a peer at all (a peer that left is forgotten once gossip forgets it).
    pub(super) fn apply_gossip(
        &mut self,
        next: HashMap<PeerId, Member>,
        listed: impl Fn(&PeerId) -> bool,
    ) {
        self.left.retain(|p| listed(p));
        let before: HashSet<PeerId> = self.live.keys().cloned().collect();
        self.live = next
            .into_iter()
            .filter(|(p, _)| !self.left.contains(p))
            .collect();
        // A peer found dead must prove itself again if it comes back.
        let live = &self.live;
        self.verified
            .retain(|p| live.contains_key(p) || !before.contains(p));
        self.retry.retain(|p, _| live.contains_key(p));
    }

    /// Live peers not verified yet whose next connection attempt is due at `now`, each with
    /// whether it is the first attempt; the backoff of each doubles, up to [`RETRY_MAX`].
    pub(super) fn due_for_connection(&mut self, now: Instant) -> Vec<(PeerId, bool)> {
        let Self {
            live,
            verified,
            retry,
            ..
        } = self;
        live.keys()
            .filter(|p| !verified.contains(*p))
            .filter_map(|p| {
                let entry = retry.entry(p.clone()).or_insert((now, RETRY_MIN));
                if entry.0 > now {
                    return None;
                }
                let first = entry.1 == RETRY_MIN;
                *entry = (now + entry.1, (entry.1 * 2).min(RETRY_MAX));
                Some((p.clone(), first))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, generation: u64) -> PeerId {
        PeerId {
            name: name.into(),
            generation,
        }
    }

    fn member(p: &PeerId) -> Member {
        Member {
            node_name: p.name.to_string(),
            generation: p.generation,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            mesh_addr: "127.0.0.1:2".parse().unwrap(),
            server_id: None,
            namespaces: vec![],
        }
    }

    fn gossip(peers: &[&PeerId]) -> HashMap<PeerId, Member> {
        peers.iter().map(|p| ((*p).clone(), member(p))).collect()
    }

    fn names(v: &View) -> Vec<String> {
        let mut n: Vec<String> = v.members().map(|m| m.node_name.clone()).collect();
        n.sort();
        n
    }

    #[test]
    fn gossip_alone_never_makes_a_member() {
        let (a, b) = (peer("a", 1), peer("b", 1));
        let mut v = View::default();
        v.apply_gossip(gossip(&[&a, &b]), |_| true);
        assert!(names(&v).is_empty(), "unverified");
        v.verify(&a);
        assert_eq!(names(&v), ["a"]);
        // Verified before gossip shows it: a member as soon as gossip does.
        let c = peer("c", 1);
        v.verify(&c);
        assert_eq!(names(&v), ["a"]);
        v.apply_gossip(gossip(&[&a, &b, &c]), |_| true);
        assert_eq!(names(&v), ["a", "c"]);
    }

    #[test]
    fn a_peer_that_left_stays_out_until_gossip_forgets_it() {
        let a = peer("a", 1);
        let mut v = View::default();
        v.apply_gossip(gossip(&[&a]), |_| true);
        v.verify(&a);
        v.leave(&a);
        assert!(names(&v).is_empty());
        v.apply_gossip(gossip(&[&a]), |_| true);
        v.verify(&a);
        assert!(names(&v).is_empty(), "gossip still lists it: ignored");
        v.apply_gossip(gossip(&[]), |_| false);
        let restarted = peer("a", 2);
        v.apply_gossip(gossip(&[&restarted]), |p| p == &restarted);
        v.verify(&restarted);
        assert_eq!(names(&v), ["a"], "a new generation is a new peer");
    }

    #[test]
    fn a_peer_found_dead_must_prove_itself_again() {
        let a = peer("a", 1);
        let mut v = View::default();
        v.apply_gossip(gossip(&[&a]), |_| true);
        v.verify(&a);
        v.apply_gossip(gossip(&[]), |_| true);
        assert!(names(&v).is_empty());
        v.apply_gossip(gossip(&[&a]), |_| true);
        assert!(names(&v).is_empty(), "back in gossip, not verified yet");
    }

    #[test]
    fn connection_attempts_back_off() {
        let a = peer("a", 1);
        let mut v = View::default();
        v.apply_gossip(gossip(&[&a]), |_| true);
        let t0 = Instant::now();
        assert_eq!(v.due_for_connection(t0), vec![(a.clone(), true)]);
        assert!(v.due_for_connection(t0).is_empty(), "not again at once");
        assert_eq!(
            v.due_for_connection(t0 + RETRY_MIN),
            vec![(a.clone(), false)]
        );
        assert!(
            v.due_for_connection(t0 + RETRY_MIN * 2).is_empty(),
            "the delay doubled"
        );
        assert_eq!(v.due_for_connection(t0 + RETRY_MIN * 3).len(), 1);
        let mut t = t0 + RETRY_MIN * 3;
        for _ in 0..20 {
            t += RETRY_MAX;
            assert_eq!(
                v.due_for_connection(t).len(),
                1,
                "never more than RETRY_MAX apart"
            );
        }
        v.verify(&a);
        assert!(
            v.due_for_connection(t + RETRY_MAX).is_empty(),
            "verified: no more attempts"
        );
    }
}
