//! Where the node is in its life, and the decisions that move it on: joining through its
//! seeds until every node they show proved itself (or the join timeout passed), ready, and
//! left (asked to, replaced by a newer node of its name, or because gossip stopped); and
//! what it tells members about itself.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use super::{Effect, Machine, MetaChange, SendQueue};
use crate::{
    gossip::{peer::PeerId, wire},
    rate_log::RateLog,
};

/// Namespaces not announced to peers (beyond the bounds they decode): logged at most once
/// per period, node-wide.
static UNANNOUNCED_LOG: RateLog = RateLog::new(Duration::from_secs(10));

/// Where the node is in its life.
#[derive(Debug, Default)]
pub(super) enum Life {
    /// Not started.
    #[default]
    New,
    /// Joining through seeds.
    Joining {
        /// When it started.
        started: Instant,
        /// When it gives up waiting and starts with the members proven so far.
        deadline: Instant,
        /// The nodes gossip showed at the check before.
        before: HashSet<PeerId>,
    },
    /// Part of the cluster.
    Ready,
    /// It left; `failure` says why when it did not choose to.
    Left {
        /// Why, when it was not asked to.
        failure: Option<String>,
    },
}

impl Life {
    /// When the join gives up, while joining.
    pub(super) fn join_deadline(&self) -> Option<Instant> {
        match self {
            Self::Joining { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// Whether the node left.
    pub(super) fn has_left(&self) -> bool {
        matches!(self, Self::Left { .. })
    }
}

impl<S: SendQueue> Machine<S> {
    /// Whether the node joined (or waited out the join timeout) and has not left.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self.life, Life::Ready)
    }

    /// Whether the node left the cluster.
    pub(crate) fn has_left(&self) -> bool {
        self.life.has_left()
    }

    /// Why the node left the cluster on its own, if it did.
    pub(crate) fn failure(&self) -> Option<&str> {
        match &self.life {
            Life::Left { failure } => failure.as_deref(),
            _ => None,
        }
    }

    /// The node starts: with no seed it is ready at once, else it joins.
    pub(super) fn start(&mut self, seeds: bool, timeout: Duration) -> Vec<Effect> {
        if !matches!(self.life, Life::New) {
            return Vec::new();
        }
        if !seeds {
            tracing::info!(node = %self.me, "no seed but this node: starting as the first node");
            self.life = Life::Ready;
            return vec![Effect::Ready];
        }
        self.life = Life::Joining {
            started: self.now,
            deadline: self.now + timeout,
            before: HashSet::new(),
        };
        Vec::new()
    }

    /// While joining, the nodes gossip shows reachable now. Two nodes that reach a seed at
    /// the same moment can each be missing from the seed's first answer to the other and
    /// appear in a later one: the join ends only after a check that brought nobody new, with
    /// every node known proven. Another node of this node's name (its own earlier run, or a
    /// twin it replaces) never becomes a member: the join does not wait for it.
    pub(super) fn known(&mut self, known: HashSet<PeerId>) -> Vec<Effect> {
        let me = self.me.clone();
        let known: HashSet<PeerId> = (known.into_iter())
            .filter(|p| p.name != me.name || *p == me)
            .collect();
        let proven = (known.iter())
            .filter(|p| **p == me || self.view.is_member(p))
            .count();
        let Life::Joining {
            started, before, ..
        } = &mut self.life
        else {
            return Vec::new();
        };
        let settled = known.is_subset(before);
        *before = known;
        if before.len() > 1 && proven == before.len() && settled {
            let ms = self.now.saturating_duration_since(*started).as_millis();
            tracing::info!(node = %self.me, members = proven - 1, "joined the cluster in {ms} ms");
            self.life = Life::Ready;
            return vec![Effect::Ready];
        }
        self.join_timed_out()
    }

    /// A join past its deadline ends with the members proven so far.
    pub(super) fn join_timed_out(&mut self) -> Vec<Effect> {
        let Life::Joining {
            deadline,
            before,
            started,
        } = &self.life
        else {
            return Vec::new();
        };
        if self.now < *deadline {
            return Vec::new();
        }
        let timeout = deadline.saturating_duration_since(*started).as_millis();
        if before.len() > 1 {
            let verified = (before.iter()).filter(|p| self.view.is_member(p)).count();
            tracing::warn!(
                node = %self.me, known = before.len() - 1, verified,
                "join timeout ({timeout} ms): starting with the members verified so far"
            );
        } else {
            tracing::info!(
                node = %self.me,
                "no seed answered within the join timeout ({timeout} ms): starting as the first node"
            );
        }
        self.life = Life::Ready;
        vec![Effect::Ready]
    }

    /// The gossip task ended by itself: this node can no longer see the cluster change. It
    /// leaves (peers drop it at once) rather than run on with a frozen view, and says why.
    pub(super) fn gossip_stopped(&mut self, why: String) -> Vec<Effect> {
        if self.has_left() {
            return Vec::new();
        }
        tracing::error!(
            node = %self.me,
            "gossip stopped ({why}); this node leaves the cluster and serves its own sockets \
             only: restart the process (Cluster::failure() reports this for health checks)"
        );
        self.leave(Some(format!("gossip stopped: {why}")))
    }

    /// Leave the cluster, once: no request waits any longer, and every state change held
    /// is applied, in order, after [`Effect::Leave`].
    pub(super) fn leave(&mut self, failure: Option<String>) -> Vec<Effect> {
        if self.has_left() {
            return Vec::new();
        }
        tracing::info!(node = %self.me, "leaving the cluster");
        self.life = Life::Left { failure };
        let mut effects = vec![Effect::Leave];
        effects.extend(self.release_all());
        effects.extend(self.drop_all_links());
        effects
    }

    /// Change what this node says about itself, and tell every member (and the peers it
    /// refuses now for their parser, so that they refuse this node in turn).
    pub(super) fn change_meta(&mut self, change: MetaChange) -> Vec<Effect> {
        let meta = &mut self.meta;
        match change {
            MetaChange::Host {
                ns,
                server_id,
                parser,
            } => {
                meta.server_id = server_id.or(meta.server_id);
                // Dynamic namespaces are named by clients: the bound is logged at a bounded
                // rate.
                if !meta.host(&ns)
                    && let Some(held_back) = UNANNOUNCED_LOG.allow()
                {
                    tracing::warn!(
                        %ns, held_back, announced = meta.namespaces.len(),
                        "namespace not announced to peers (they count this node out of its \
                         server_count, broadcasts still reach it): peers take at most {} names \
                         of at most {} bytes", wire::MAX_NAMESPACES, wire::MAX_NAMESPACE_LEN
                    );
                }
                match meta.parser {
                    Some(mine) if mine != parser => tracing::error!(
                        %ns,
                        "namespace uses the {parser} parser, but this node's other namespaces \
                         use the {mine} parser: its peers are checked against the {mine} parser"
                    ),
                    _ => meta.parser = Some(parser),
                }
            }
            MetaChange::Unhost(ns) => meta.namespaces.retain(|n| *n != ns),
        }
        meta.version += 1;
        // The members, and the peers refused now (members no more).
        let (refused, mut effects) = self.refuse_other_parsers();
        let mut targets: Vec<PeerId> = self.member_ids();
        targets.extend(refused);
        if !self.has_left() {
            effects.push(Effect::SendMeta(targets, self.meta.clone()));
        }
        effects
    }
}
