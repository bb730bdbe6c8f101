//! Unit tests of the envelope checks, fed with envelopes written by [`super::craft`].

use super::{
    craft::{self, Id, Op},
    *,
};
use crate::gossip::membership::codec::Decoder;
use proptest::prelude::*;

const CLUSTER: &str = "chat";

fn id(name: &str) -> Id {
    Id {
        name: name.into(),
        generation: 7,
        addr: "127.0.0.1:7946".parse().unwrap(),
    }
}

fn kv(key: &str, value: &str, version: u64) -> Op {
    Op::Kv {
        key: key.into(),
        value: value.into(),
        version,
        status: 0,
    }
}

fn node(name: &str, from: u64) -> Op {
    Op::Node {
        id: id(name),
        last_gc: 0,
        from,
    }
}

fn chitchat_id(i: &Id) -> ChitchatId {
    ChitchatId::new(i.name.clone(), i.generation, i.addr)
}

#[test]
fn what_the_nodes_send_passes() {
    let digest = [(id("a"), 5, 0, 2), (id("b"), 9, 0, 1)];
    let syn = check(&craft::syn(CLUSTER, &digest), CLUSTER).unwrap();
    assert_eq!(syn.kind, Kind::Syn);
    assert_eq!(
        syn.digest,
        vec![chitchat_id(&id("a")), chitchat_id(&id("b"))]
    );
    let ops = [
        node("a", 0),
        kv("mesh", "127.0.0.1:7947", 1),
        kv("leaving", "1", 2),
        node("b", 3),
        Op::SetMax(4),
    ];
    let syn_ack = check(&craft::syn_ack(&digest, &ops), CLUSTER).unwrap();
    assert_eq!(syn_ack.kind, Kind::SynAck);
    assert_eq!(syn_ack.deltas.len(), 2);
    assert_eq!(syn_ack.deltas[0].keys, ["mesh", "leaving"]);
    assert_eq!(syn_ack.deltas[1].from_version, 3);
    let ack = check(&craft::ack(&ops), CLUSTER).unwrap();
    assert_eq!(ack.kind, Kind::Ack);
    assert!(ack.digest.is_empty());
    // Compressed blocks too, as chitchat writes them.
    let data = craft::ops(&ops);
    let mut compressed = vec![0x53, 0xb0, 0, 2, 1];
    let block = zstd::bulk::compress(&data, 0).unwrap();
    compressed.extend_from_slice(&(block.len() as u16).to_le_bytes());
    compressed.extend_from_slice(&block);
    compressed.push(0);
    assert_eq!(check(&compressed, CLUSTER).unwrap().deltas, ack.deltas);
}

#[test]
fn each_rule_refuses() {
    let long = Id {
        name: "x".repeat(MAX_NAME + 1),
        ..id("a")
    };
    let cases: Vec<(Vec<u8>, Invalid)> = vec![
        (b"\x01".to_vec(), Invalid::Truncated),
        (b"junk".to_vec(), Invalid::NotEnvelope),
        (craft::v1_syn_bomb(CLUSTER, 3), Invalid::Version(1)),
        (vec![0x53, 0xb0, 0, 3], Invalid::Kind(3)),
        (craft::syn("other", &[]), Invalid::ClusterId),
        (
            craft::syn(CLUSTER, &[(long.clone(), 1, 0, 0)]),
            Invalid::Name(MAX_NAME + 1),
        ),
        (craft::syn(CLUSTER, &[(id(""), 1, 0, 0)]), Invalid::Name(0)),
        (
            craft::syn(CLUSTER, &[(id("a"), 1, 0, 0), (id("a"), 2, 0, 0)]),
            Invalid::Twice,
        ),
        (
            craft::syn(CLUSTER, &[(id("a"), 1, 5, 0)]),
            Invalid::Deletion,
        ),
        (
            craft::ack(&[Op::Node {
                id: id("a"),
                last_gc: 3,
                from: 0,
            }]),
            Invalid::Deletion,
        ),
        (
            craft::ack(&[
                node("a", 0),
                Op::Kv {
                    key: "k".into(),
                    value: String::new(),
                    version: 1,
                    status: 1,
                },
            ]),
            Invalid::Deletion,
        ),
        (
            craft::ack(&[node("a", 0), kv(&"k".repeat(MAX_KEY + 1), "", 1)]),
            Invalid::Key(MAX_KEY + 1),
        ),
        (craft::ack(&[node("a", 0), kv("", "", 1)]), Invalid::Key(0)),
        (
            craft::ack(&[node("a", 0), kv("k", &"v".repeat(MAX_VALUE + 1), 1)]),
            Invalid::Value(MAX_VALUE + 1),
        ),
        (
            craft::ack(&[node("a", 0), kv("k", "", 1), kv("k", "", 2)]),
            Invalid::Keys,
        ),
        (
            craft::ack(
                &std::iter::once(node("a", 0))
                    .chain((1..=MAX_KEYS as u64 + 1).map(|v| kv(&format!("k{v}"), "", v)))
                    .collect::<Vec<_>>(),
            ),
            Invalid::Keys,
        ),
        (
            craft::ack(&[kv("k", "", 1)]),
            Invalid::Delta("a key before any node"),
        ),
        (
            craft::ack(&[node("a", 0), node("a", 0)]),
            Invalid::Delta("a node twice"),
        ),
        (
            craft::ack(&[node("a", 0), kv("k", "", 2), kv("j", "", 2)]),
            Invalid::Delta("versions that do not rise"),
        ),
        (
            craft::ack(&[node("a", 0), kv("k", "", 1), Op::SetMax(1)]),
            Invalid::Delta("a max version but for a node without keys"),
        ),
        (
            craft::ack(&[node("a", 0), Op::SetMax(0)]),
            Invalid::Delta("a max version but for a node without keys"),
        ),
        (
            craft::ack(&[node("a", 0), Op::SetMax(3), kv("k", "", 4)]),
            Invalid::Delta("a key after a max version"),
        ),
        (craft::ack_bomb(8), Invalid::TooLarge),
        (
            {
                let mut b = craft::syn(CLUSTER, &[]);
                b.push(0);
                b
            },
            Invalid::Trailing,
        ),
        (
            {
                let mut b = vec![0x53, 0xb0, 0, 2, 1, 3, 0];
                b.extend_from_slice(b"xyz");
                b.push(0);
                b
            },
            Invalid::Inflate,
        ),
    ];
    for (bytes, why) in cases {
        assert_eq!(check(&bytes, CLUSTER), Err(why.clone()), "{why}");
    }
}

#[test]
fn a_bomb_is_refused_after_inflating_at_most_the_bound() {
    // The checker stops at the first block past the bound: five blocks of 64 KiB.
    let bomb = craft::ack_bomb(2_900);
    let mut r = Reader(&bomb[4..]);
    assert_eq!(blocks(&mut r), Err(Invalid::TooLarge));
    let consumed = bomb.len() - 4 - r.0.len();
    assert!(consumed < 10 * 32, "read {consumed} bytes of blocks");
}

/// Whatever the checker takes, chitchat parses too (it refuses more, never less); and
/// what it takes keeps within the bounds. Each envelope goes through a real decoder,
/// chitchat's own socket.
#[test]
fn chitchat_parses_all_the_checker_takes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let decoder = std::cell::RefCell::new(rt.block_on(Decoder::open()).unwrap());
    let taken = std::cell::Cell::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&craft::envelopes(CLUSTER), |bytes| {
            let Ok(c) = check(&bytes, CLUSTER) else {
                return Ok(());
            };
            taken.set(taken.get() + 1);
            let parsed = rt.block_on(decoder.borrow_mut().decode(&bytes));
            prop_assert!(parsed.is_ok(), "taken but not parsed: {:?}", parsed.err());
            prop_assert!(c.decoded <= bytes.len() + MAX_DECODED);
            for id in c.digest.iter().chain(c.deltas.iter().map(|d| &d.id)) {
                prop_assert!((1..=MAX_NAME).contains(&id.node_id.len()));
            }
            for d in &c.deltas {
                prop_assert!(d.keys.len() <= MAX_KEYS);
            }
            Ok(())
        })
        .unwrap();
    println!("{} of 512 envelopes taken", taken.get());
    assert!(taken.get() > 50, "the strategy reaches past the checks");
}

proptest! {
    /// Any bytes at all: the checker never panics.
    #[test]
    fn the_checker_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = check(&bytes, CLUSTER);
        let mut enveloped = vec![0x53, 0xb0, 0];
        enveloped.extend_from_slice(&bytes);
        let _ = check(&enveloped, CLUSTER);
    }
}
