//! A property test of the presence replica: a model cluster of replicas, a FIFO link per
//! ordered pair, links cut and healed, messages dropped; once the links heal and every
//! message is delivered, all replicas hold the same entries.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;

use super::{
    tests::{meta, replica},
    *,
};

#[derive(Clone, Debug)]
enum Action {
    Track(usize, u8, u8, u8, u8),
    Untrack(usize, u8, u8, u8),
    Deliver(usize, usize),
    Drop(usize, usize),
    Announce(usize),
    Cut(usize, usize),
    Heal(usize, usize),
}

const N: usize = 3;

fn arb_action() -> impl Strategy<Value = Action> {
    let n = || 0..N;
    prop_oneof![
        4 => (n(), 0..2u8, 0..3u8, 0..3u8, 0..3u8).prop_map(|(a, b, c, d, e)| Action::Track(a, b, c, d, e)),
        2 => (n(), 0..2u8, 0..3u8, 0..3u8).prop_map(|(a, b, c, d)| Action::Untrack(a, b, c, d)),
        8 => (n(), n()).prop_map(|(a, b)| Action::Deliver(a, b)),
        1 => (n(), n()).prop_map(|(a, b)| Action::Drop(a, b)),
        1 => n().prop_map(Action::Announce),
        1 => (n(), n()).prop_map(|(a, b)| Action::Cut(a, b)),
        1 => (n(), n()).prop_map(|(a, b)| Action::Heal(a, b)),
    ]
}

struct Model {
    nodes: Vec<Replica>,
    links: BTreeMap<(usize, usize), VecDeque<PresenceMsg>>,
    cut: std::collections::BTreeSet<(usize, usize)>,
}

impl Model {
    fn new() -> Self {
        let nodes = (0..N).map(|i| replica(&format!("n{i}"))).collect();
        Self {
            nodes,
            links: BTreeMap::new(),
            cut: Default::default(),
        }
    }
    fn send(&mut self, from: usize, to: usize, m: PresenceMsg) {
        if from != to && !self.cut.contains(&(from.min(to), from.max(to))) {
            self.links.entry((from, to)).or_default().push_back(m);
        }
    }
    fn broadcast(&mut self, from: usize, msgs: Vec<PresenceMsg>) {
        for m in msgs {
            for to in 0..N {
                self.send(from, to, m.clone());
            }
        }
    }
    fn deliver(&mut self, from: usize, to: usize) -> bool {
        let Some(m) = self
            .links
            .get_mut(&(from, to))
            .and_then(VecDeque::pop_front)
        else {
            return false;
        };
        let who = self.nodes[from].me.clone();
        let r = self.nodes[to].on_message(&who, m);
        if r.send_state {
            for s in self.nodes[to].own_state(300) {
                self.send(to, from, s);
            }
        }
        if r.request_state {
            self.send(to, from, PresenceMsg::StateRequest);
        }
        true
    }
    /// What the service does on a membership change.
    fn membership(&mut self, a: usize, b: usize, up: bool) {
        let key = (a.min(b), a.max(b));
        if a == b || self.cut.contains(&key) != up {
            return;
        }
        if up {
            self.cut.remove(&key);
            for (x, y) in [(a, b), (b, a)] {
                let who = self.nodes[y].me.clone();
                self.nodes[x].joined(&who);
                for s in self.nodes[x].own_state(300) {
                    self.send(x, y, s);
                }
                self.send(x, y, PresenceMsg::StateRequest);
            }
        } else {
            self.cut.insert(key);
            self.links.remove(&(a, b));
            self.links.remove(&(b, a));
            for (x, y) in [(a, b), (b, a)] {
                let who = self.nodes[y].me.clone();
                self.nodes[x].left(&who);
            }
        }
    }
    fn apply(&mut self, action: Action) {
        let s = |x: u8| format!("{x}");
        match action {
            Action::Track(n, t, k, sock, m) => {
                let (msgs, _) = self.nodes[n]
                    .track(&s(t), &s(k), &s(sock), meta(&s(m)))
                    .unwrap();
                self.broadcast(n, msgs);
            }
            Action::Untrack(n, t, k, sock) => {
                let (msgs, _) = self.nodes[n].untrack([(s(t), s(k), s(sock))]);
                self.broadcast(n, msgs);
            }
            Action::Deliver(a, b) => {
                self.deliver(a, b);
            }
            Action::Drop(a, b) => {
                if let Some(l) = self.links.get_mut(&(a, b)) {
                    l.pop_front();
                }
            }
            Action::Announce(n) => {
                let m = self.nodes[n].seq_msg();
                self.broadcast(n, vec![m]);
            }
            Action::Cut(a, b) => self.membership(a, b, false),
            Action::Heal(a, b) => self.membership(a, b, true),
        }
    }
    /// Heal every link, then deliver everything, announcements included, until quiet.
    fn settle(&mut self) {
        for a in 0..N {
            for b in 0..N {
                self.membership(a, b, true);
            }
        }
        for _ in 0..10 {
            for _ in 0..10_000 {
                let mut any = false;
                for a in 0..N {
                    for b in 0..N {
                        any |= self.deliver(a, b);
                    }
                }
                if !any {
                    break;
                }
            }
            for n in 0..N {
                let m = self.nodes[n].seq_msg();
                self.broadcast(n, vec![m]);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever is lost, reordered between links, cut and healed, once every link is up
    /// and messages flow, every replica holds exactly the entries of every node.
    #[test]
    fn replicas_converge(actions in proptest::collection::vec(arb_action(), 0..120)) {
        let mut model = Model::new();
        for a in actions {
            model.apply(a);
        }
        model.settle();
        let mut want = BTreeMap::new();
        for n in &model.nodes {
            let own = n.me.name.clone();
            want.extend(n.view().into_iter().filter(|(k, _)| k.0 == own));
        }
        for n in &model.nodes {
            prop_assert_eq!(&n.view(), &want, "replica of {}", n.me.name);
        }
    }
}
