//! Who is in the cluster, as this node sees it.
//!
//! A member is a node that proved the cluster secret on a mesh connection that is still
//! open. Gossip only says where to find nodes that have not proved anything yet: whatever
//! it says later (leaving, dead, another address or server id) does not touch a member
//! while its connection lives. A member leaves when its last connection closes (the peer
//! timeout closes a silent one) or when it says so itself on its own connection.
//!
//! A peer whose socket.io parser differs from this node's is refused: it stays connected
//! (so that it hears this node's parser and refuses it in turn) but is no member, and
//! nothing is sent to it, until its connections close.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use std::time::Instant;

use crate::{
    gossip::membership::Member,
    gossip::mesh::{ConnId, PeerAddrs},
    gossip::peer::PeerId,
    gossip::wire::{NodeMeta, Parser},
};

/// First delay before connecting again to a live peer that could not be verified.
pub(in crate::gossip::node) const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest delay between such attempts.
pub(in crate::gossip::node) const RETRY_MAX: Duration = Duration::from_secs(30);

/// A member: its open authenticated connections and what it told about itself.
struct Proven {
    conns: HashSet<ConnId>,
    /// Shared with whoever asked for the members: never copied on the way.
    member: Arc<Member>,
    /// Version of the [`NodeMeta`] applied last.
    meta_version: u64,
    /// The socket.io parser it says it uses.
    parser: Option<Parser>,
    /// Refused for using another parser than this node: not a member.
    refused: bool,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(in crate::gossip::node) enum Refusal {
    /// The peer left on purpose; it does not come back under the same generation.
    #[error("{0} left the cluster; a restarted node comes back with a new generation")]
    Left(PeerId),
    /// A newer generation of the same node is a member.
    #[error("a newer generation of this node is a member ({0})")]
    Outdated(PeerId),
    /// The peer already has an open incoming connection here: a second one claiming the
    /// same identity is refused (the first must close before it is replaced).
    #[error("{0} is already connected; a second connection claiming it is refused")]
    Duplicate(PeerId),
}

/// Who is in the cluster, as this node sees it.
#[derive(Default)]
pub(in crate::gossip::node) struct View {
    /// Members, by identity.
    proven: HashMap<PeerId, Proven>,
    /// Nodes gossip shows live and not leaving, with their mesh address: whom to verify.
    gossip: HashMap<PeerId, SocketAddr>,
    /// Peers that left on purpose: not admitted again while gossip still knows them.
    left: HashSet<PeerId>,
    /// When to try again to connect to a live peer not verified yet, and the next backoff.
    retry: HashMap<PeerId, (Instant, Duration)>,
    /// Whether a peer was ever refused for its parser: until then, no frame needs the
    /// look-up of its sender's refusal (one per frame received).
    ever_refused: bool,
}

impl View {
    pub(in crate::gossip::node) fn members(&self) -> impl Iterator<Item = &Member> {
        self.shared_members().map(|m| &**m)
    }

    /// The members, to share.
    pub(in crate::gossip::node) fn shared_members(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.proven
            .values()
            .filter(|p| !p.refused)
            .map(|p| &p.member)
    }

    /// The members' identities.
    pub(in crate::gossip::node) fn member_ids(&self) -> impl Iterator<Item = &PeerId> {
        self.proven
            .iter()
            .filter(|(_, p)| !p.refused)
            .map(|(peer, _)| peer)
    }

    /// The members by identity, shared (nothing of them is copied).
    pub(in crate::gossip::node) fn member_map(&self) -> HashMap<PeerId, Arc<Member>> {
        self.proven
            .iter()
            .filter(|(_, m)| !m.refused)
            .map(|(p, m)| (p.clone(), m.member.clone()))
            .collect()
    }

    /// Whether `peer` is a member.
    pub(in crate::gossip::node) fn is_member(&self, peer: &PeerId) -> bool {
        self.proven.get(peer).is_some_and(|p| !p.refused)
    }

    /// Whether `peer` is connected but refused for its parser.
    pub(in crate::gossip::node) fn is_refused(&self, peer: &PeerId) -> bool {
        self.ever_refused && self.proven.get(peer).is_some_and(|p| p.refused)
    }

    /// Refuse the connected peers that say they use another parser than `mine`. Returns
    /// those refused now, with their parser.
    pub(in crate::gossip::node) fn refuse_other_parsers(
        &mut self,
        mine: Parser,
    ) -> Vec<(PeerId, Parser)> {
        let mut refused = Vec::new();
        for (peer, p) in &mut self.proven {
            if let Some(theirs) = p.parser
                && theirs != mine
                && !p.refused
            {
                p.refused = true;
                self.ever_refused = true;
                refused.push((peer.clone(), theirs));
            }
        }
        refused
    }

    /// Whether `peer` has an open incoming connection here.
    #[cfg(test)]
    pub(in crate::gossip::node) fn has_incoming(&self, peer: &PeerId) -> bool {
        self.proven
            .get(peer)
            .is_some_and(|p| p.conns.iter().any(|c| c.incoming))
    }

    /// Whether gossip shows `peer`, or it is a member (so its link, address and server ids
    /// are worth keeping).
    pub(in crate::gossip::node) fn knows(&self, peer: &PeerId) -> bool {
        self.gossip.contains_key(peer) || self.proven.contains_key(peer)
    }

    /// Whether `addr` is the mesh address of a member or of a node gossip shows (an
    /// IPv4-mapped address counts as the IPv4 one).
    pub(in crate::gossip::node) fn knows_mesh_addr(&self, addr: SocketAddr) -> bool {
        let same = |a: &SocketAddr| {
            a.ip().to_canonical() == addr.ip().to_canonical() && a.port() == addr.port()
        };
        self.gossip.values().any(same) || self.proven.values().any(|p| same(&p.member.mesh_addr))
    }

    /// Where to reach `peer`: the address it proved, else the one gossip shows.
    pub(in crate::gossip::node) fn mesh_addr(&self, peer: &PeerId) -> Option<SocketAddr> {
        self.proven
            .get(peer)
            .map(|p| p.member.mesh_addr)
            .or_else(|| self.gossip.get(peer).copied())
    }

    /// `peer` proved the cluster secret on connection `conn`. An older generation of the
    /// same node is displaced (it restarted): it is returned, and no longer a member.
    pub(in crate::gossip::node) fn connected(
        &mut self,
        peer: &PeerId,
        conn: ConnId,
        proof: PeerAddrs,
    ) -> Result<Option<PeerId>, Refusal> {
        if self.left.contains(peer) {
            return Err(Refusal::Left(peer.clone()));
        }
        let same_name = self
            .proven
            .keys()
            .find(|p| p.name == peer.name && p.generation != peer.generation)
            .cloned();
        if let Some(other) = &same_name
            && other.generation > peer.generation
        {
            return Err(Refusal::Outdated(other.clone()));
        }
        if let Some(p) = self.proven.get_mut(peer) {
            if conn.incoming && p.conns.iter().any(|c| c.incoming) {
                return Err(Refusal::Duplicate(peer.clone()));
            }
            p.conns.insert(conn);
            return Ok(None);
        }
        if let Some(old) = &same_name {
            self.proven.remove(old);
        }
        self.retry.remove(peer);
        self.proven.insert(
            peer.clone(),
            Proven {
                conns: HashSet::from([conn]),
                member: Arc::new(Member {
                    node_name: peer.name.to_string(),
                    generation: peer.generation,
                    gossip_addr: proof.gossip,
                    mesh_addr: proof.mesh,
                    server_id: None,
                    namespaces: Vec::new(),
                }),
                meta_version: 0,
                parser: None,
                refused: false,
            },
        );
        Ok(same_name)
    }

    /// Connection `conn` of `peer` closed: with its last one, it is no longer a member.
    pub(in crate::gossip::node) fn closed(&mut self, peer: &PeerId, conn: ConnId) {
        if let Some(p) = self.proven.get_mut(peer) {
            p.conns.remove(&conn);
            if p.conns.is_empty() {
                self.proven.remove(peer);
            }
        }
    }

    /// What `peer` says about itself, over its own connection; older news is ignored.
    pub(in crate::gossip::node) fn meta(&mut self, peer: &PeerId, meta: NodeMeta) {
        if let Some(p) = self.proven.get_mut(peer)
            && meta.version > p.meta_version
        {
            p.meta_version = meta.version;
            // A new member record: those shared before keep what they saw.
            let old = &p.member;
            p.member = Arc::new(Member {
                node_name: old.node_name.clone(),
                generation: old.generation,
                gossip_addr: old.gossip_addr,
                mesh_addr: old.mesh_addr,
                server_id: meta
                    .server_id
                    .and_then(|id| std::str::from_utf8(&id.0).ok().and_then(|s| s.parse().ok())),
                namespaces: meta.namespaces,
            });
            p.parser = meta.parser.or(p.parser);
        }
    }

    /// `peer` left on purpose: ignore it even while gossip still shows it.
    pub(in crate::gossip::node) fn leave(&mut self, peer: &PeerId) {
        self.left.insert(peer.clone());
        self.proven.remove(peer);
        self.gossip.remove(peer);
        self.retry.remove(peer);
    }

    /// A new gossip view: `next` are the live nodes that are not leaving, with their mesh
    /// address; `listed` tells whether gossip still knows a peer at all (a peer that left
    /// is forgotten once gossip forgets it). Members are not touched.
    pub(in crate::gossip::node) fn apply_gossip(
        &mut self,
        next: HashMap<PeerId, SocketAddr>,
        listed: impl Fn(&PeerId) -> bool,
    ) {
        self.left.retain(|p| listed(p));
        self.gossip = next
            .into_iter()
            .filter(|(p, _)| !self.left.contains(p))
            .collect();
        let gossip = &self.gossip;
        self.retry.retain(|p, _| gossip.contains_key(p));
    }

    /// Live peers not verified yet whose next connection attempt is due at `now`, each with
    /// whether it is the first attempt; the backoff of each doubles, up to [`RETRY_MAX`].
    pub(in crate::gossip::node) fn due_for_connection(
        &mut self,
        now: Instant,
    ) -> Vec<(PeerId, bool)> {
        let Self {
            gossip,
            proven,
            retry,
            ..
        } = self;
        gossip
            .keys()
            .filter(|p| !proven.contains_key(*p))
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
pub(in crate::gossip::node) mod tests {
    use super::*;
    use crate::gossip::wire::Id;

    pub(in crate::gossip::node) fn peer(name: &str, generation: u64) -> PeerId {
        PeerId {
            name: name.into(),
            generation,
        }
    }

    pub(in crate::gossip::node) fn proof() -> PeerAddrs {
        PeerAddrs {
            mesh: "127.0.0.1:2".parse().unwrap(),
            gossip: "127.0.0.1:1".parse().unwrap(),
        }
    }

    pub(in crate::gossip::node) fn conn(id: u64, incoming: bool) -> ConnId {
        ConnId { id, incoming }
    }

    fn gossip(peers: &[&PeerId]) -> HashMap<PeerId, SocketAddr> {
        peers
            .iter()
            .map(|p| ((*p).clone(), "127.0.0.1:3".parse().unwrap()))
            .collect()
    }

    fn names(v: &View) -> Vec<String> {
        let mut n: Vec<String> = v.members().map(|m| m.node_name.clone()).collect();
        n.sort();
        n
    }

    #[test]
    fn gossip_alone_never_makes_a_member_and_never_unmakes_one() {
        let (a, b) = (peer("a", 1), peer("b", 1));
        let mut v = View::default();
        v.apply_gossip(gossip(&[&a, &b]), |_| true);
        assert!(names(&v).is_empty(), "unverified");
        v.connected(&a, conn(1, true), proof()).unwrap();
        assert_eq!(names(&v), ["a"]);
        // Gossip says a is dead (or leaving, or elsewhere): a stays while its link lives.
        v.apply_gossip(gossip(&[&b]), |_| true);
        assert_eq!(names(&v), ["a"]);
        assert_eq!(v.mesh_addr(&a), Some(proof().mesh), "the proven address");
        v.closed(&a, conn(1, true));
        assert!(names(&v).is_empty(), "its last connection closed");
    }

    #[test]
    fn a_member_stays_until_its_last_connection_closes() {
        let a = peer("a", 1);
        let mut v = View::default();
        v.connected(&a, conn(1, true), proof()).unwrap();
        v.connected(&a, conn(2, false), proof()).unwrap();
        v.closed(&a, conn(2, false));
        assert_eq!(names(&v), ["a"]);
        v.closed(&a, conn(9, true));
        assert_eq!(names(&v), ["a"], "an unknown connection changes nothing");
        v.closed(&a, conn(1, true));
        assert!(names(&v).is_empty());
    }

    #[test]
    fn a_second_incoming_connection_claiming_a_member_is_refused() {
        let a = peer("a", 1);
        let mut v = View::default();
        v.connected(&a, conn(1, true), proof()).unwrap();
        assert_eq!(
            v.connected(&a, conn(2, true), proof()),
            Err(Refusal::Duplicate(a.clone()))
        );
        // Once the first closed, a new one is admitted (a reconnect).
        v.connected(&a, conn(3, false), proof()).unwrap();
        v.closed(&a, conn(1, true));
        assert_eq!(v.connected(&a, conn(4, true), proof()), Ok(None));
    }

    #[test]
    fn a_newer_generation_displaces_an_older_one_and_not_the_reverse() {
        let (old, new) = (peer("a", 1), peer("a", 2));
        let mut v = View::default();
        v.connected(&old, conn(1, true), proof()).unwrap();
        assert_eq!(
            v.connected(&new, conn(2, true), proof()),
            Ok(Some(old.clone()))
        );
        assert!(v.is_member(&new) && !v.is_member(&old));
        assert_eq!(
            v.connected(&old, conn(3, true), proof()),
            Err(Refusal::Outdated(new.clone()))
        );
    }

    #[test]
    fn a_peer_that_left_stays_out_until_gossip_forgets_it() {
        let a = peer("a", 1);
        let mut v = View::default();
        v.apply_gossip(gossip(&[&a]), |_| true);
        v.connected(&a, conn(1, true), proof()).unwrap();
        v.leave(&a);
        assert!(names(&v).is_empty());
        v.apply_gossip(gossip(&[&a]), |_| true);
        assert_eq!(
            v.connected(&a, conn(2, true), proof()),
            Err(Refusal::Left(a.clone()))
        );
        assert!(
            v.due_for_connection(Instant::now()).is_empty(),
            "not retried"
        );
        v.apply_gossip(gossip(&[]), |_| false);
        let restarted = peer("a", 2);
        v.apply_gossip(gossip(&[&restarted]), |p| p == &restarted);
        v.connected(&restarted, conn(3, true), proof()).unwrap();
        assert_eq!(names(&v), ["a"], "a new generation is a new peer");
    }

    #[test]
    fn meta_comes_from_the_member_and_older_news_is_ignored() {
        let a = peer("a", 1);
        let mut v = View::default();
        v.connected(&a, conn(1, true), proof()).unwrap();
        let meta = |version, ns: &str| NodeMeta {
            version,
            server_id: Some(Id(*b"AAAAAAAAAAAAAAAA")),
            namespaces: vec![ns.to_string()],
            parser: None,
        };
        v.meta(&a, meta(2, "/chat"));
        v.meta(&a, meta(1, "/old"));
        let m = v.members().next().unwrap();
        assert!(m.hosts("/chat") && !m.hosts("/old"));
        assert_eq!(m.server_id.unwrap().to_string(), "AAAAAAAAAAAAAAAA");
        // Not a member: nothing to apply it to.
        v.meta(&peer("b", 1), meta(5, "/x"));
        assert_eq!(names(&v), ["a"]);
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
        v.connected(&a, conn(1, false), proof()).unwrap();
        assert!(
            v.due_for_connection(t + RETRY_MAX).is_empty(),
            "verified: no more attempts"
        );
    }

    #[test]
    fn a_peer_with_another_parser_is_refused_and_no_member() {
        let (a, b, c) = (peer("a", 1), peer("b", 1), peer("c", 1));
        let mut v = View::default();
        for (i, p) in [&a, &b, &c].into_iter().enumerate() {
            v.apply_gossip(gossip(&[&a, &b, &c]), |_| true);
            v.connected(p, conn(i as u64, true), proof()).unwrap();
        }
        let meta = |parser| NodeMeta {
            version: 1,
            server_id: None,
            namespaces: vec!["/".into()],
            parser,
        };
        v.meta(&a, meta(Some(Parser::Common)));
        v.meta(&b, meta(Some(Parser::MsgPack)));
        v.meta(&c, meta(None));
        assert_eq!(
            v.refuse_other_parsers(Parser::Common),
            vec![(b.clone(), Parser::MsgPack)]
        );
        assert!(v.refuse_other_parsers(Parser::Common).is_empty(), "once");
        assert_eq!(names(&v), ["a", "c"]);
        assert!(!v.is_member(&b) && v.is_refused(&b));
        // Still connected: no new attempt; its last connection closed, it is forgotten.
        assert!(v.due_for_connection(Instant::now()).is_empty());
        v.closed(&b, conn(1, true));
        assert!(!v.is_refused(&b));
    }
}
