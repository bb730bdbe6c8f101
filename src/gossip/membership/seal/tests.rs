//! Unit tests of sealing and opening gossip datagrams: round trips, keyrings, parts,
//! replays and every refusal.

use super::*;
use crate::gossip::{
    keys::{Secret, derive_keyring, tests::OTHER, tests::SECRET},
    membership::clock::Clock,
};
use std::sync::{Mutex, OnceLock};

const NOW: u64 = 1_800_000_000_000;

pub(crate) fn keys(cluster: &str, secrets: &[&str]) -> Arc<GossipKeys> {
    // Derivation is the slow part: derive each (cluster, secret) once for all tests.
    static CACHE: OnceLock<Mutex<HashMap<(String, String), Keys>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let derived: Vec<Keys> = secrets
        .iter()
        .map(|s| {
            let mut cache = cache.lock().unwrap();
            cache
                .entry((cluster.to_string(), s.to_string()))
                .or_insert_with(|| derive_keyring(cluster, &[Secret::from(*s)]).unwrap()[0].clone())
                .clone()
        })
        .collect();
    Arc::new(GossipKeys::new(cluster, &derived).unwrap())
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A node: its sealer, and its opener at `port`.
fn node(keys: &Arc<GossipKeys>, port: u16) -> (Sealer, Opener) {
    let sealer = Sealer::new(keys.clone());
    let opener = Opener::new(keys.clone(), sealer.session(), vec![addr(port)]);
    (sealer, opener)
}

fn opened(o: Result<Opened, Refused>) -> Result<Option<Vec<u8>>, Refused> {
    o.map(|o| o.envelope)
}

#[test]
fn seals_and_opens_and_hides_the_envelope() {
    let k = keys("c", &[SECRET]);
    let (mut a, _) = node(&k, 1);
    let (_, mut b) = node(&k, 2);
    let envelope = b"node-1 127.0.0.1:7947 server id ABCDEFGHIJKLMNOP".to_vec();
    let sealed = a.seal(&envelope, &Recipient::Addr(addr(2)), NOW);
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].len(), envelope.len() + OVERHEAD);
    assert!(
        !sealed[0].windows(6).any(|w| w == b"node-1"),
        "nothing in clear"
    );
    let o = b.open(&sealed[0], NOW).unwrap();
    assert_eq!(
        o,
        Opened {
            envelope: Some(envelope),
            session: a.session()
        }
    );
}

/// What sealing adds to a datagram, printed: `cargo test --all-features --lib --
/// --nocapture seal::tests::the_cost`.
#[test]
fn the_cost_of_sealing_per_datagram() {
    let k = keys("c", &[SECRET]);
    let (mut a, _) = node(&k, 1);
    for len in [5, 100, 1_000, 60_000] {
        let sealed = a.seal(&vec![7u8; len], &Recipient::Addr(addr(2)), NOW);
        assert_eq!(sealed[0].len() - len, OVERHEAD);
    }
    println!("sealing adds {OVERHEAD} bytes to a datagram (header {HEADER}, tag {TAG})");
}

#[test]
fn a_datagram_opens_only_at_its_recipient() {
    let k = keys("c", &[SECRET]);
    let (mut a, mut a_open) = node(&k, 1);
    let (mut b, mut b_open) = node(&k, 2);
    let (_, mut c_open) = node(&k, 3);
    // For an address: only the node with that address opens it.
    let d = a.seal(b"syn", &Recipient::Addr(addr(2)), NOW).remove(0);
    assert_eq!(opened(c_open.open(&d, NOW)), Err(Refused::BadSeal));
    assert!(opened(b_open.open(&d, NOW)).unwrap().is_some());
    // For a session: only the node of that session.
    let d = b
        .seal(b"syn-ack", &Recipient::Session(a.session()), NOW)
        .remove(0);
    assert_eq!(opened(c_open.open(&d, NOW)), Err(Refused::BadSeal));
    assert!(opened(a_open.open(&d, NOW)).unwrap().is_some());
    // A node at the same address, restarted (another session), does not open what was
    // sealed for the session of the one before.
    let (_, mut b_again) = node(&k, 2);
    let d = a
        .seal(b"ack", &Recipient::Session(b.session()), NOW)
        .remove(0);
    assert_eq!(opened(b_again.open(&d, NOW)), Err(Refused::BadSeal));
    // The bound address counts as well as the advertised one.
    let mut both = Opener::new(k.clone(), [0; 16], vec![addr(4), addr(5)]);
    let d = a.seal(b"syn", &Recipient::Addr(addr(5)), NOW).remove(0);
    assert!(opened(both.open(&d, NOW)).unwrap().is_some());
}

#[test]
fn numbers_never_repeat_and_sessions_differ() {
    let k = keys("c", &[SECRET]);
    let (mut a, _) = node(&k, 1);
    let (b, _) = node(&k, 2);
    assert_ne!(a.session(), b.session());
    let numbers: Vec<u64> = (0..10)
        .flat_map(|_| a.seal(&[1; 70_000], &Recipient::Addr(addr(2)), NOW))
        .map(|d| header(&d).unwrap().number)
        .collect();
    assert_eq!(numbers, (0..20).collect::<Vec<_>>());
    a.next = u64::MAX;
    assert!(
        a.seal(b"x", &Recipient::Addr(addr(2)), NOW).is_empty(),
        "no wrap"
    );
}

#[test]
fn wrong_key_other_cluster_tampering_and_truncation_are_refused() {
    let k = keys("c", &[SECRET]);
    let (mut a, _) = node(&k, 1);
    let to = Recipient::Addr(addr(2));
    let d = a.seal(b"hello gossip", &to, NOW).remove(0);
    let other = keys("c", &[OTHER]);
    assert_eq!(
        opened(Opener::new(other, [0; 16], vec![addr(2)]).open(&d, NOW)),
        Err(Refused::UnknownKey)
    );
    assert_eq!(
        opened(Opener::new(keys("d", &[SECRET]), [0; 16], vec![addr(2)]).open(&d, NOW)),
        Err(Refused::UnknownKey),
        "another cluster id derives other keys"
    );
    let (_, mut b) = node(&k, 2);
    for at in [5, 10, 30, 35, HEADER - 1, HEADER + 2, d.len() - 1] {
        let mut bad = d.clone();
        bad[at] ^= 0x40;
        let r = b.open(&bad, NOW);
        assert!(r.is_err(), "flipped byte {at}: {r:?}");
    }
    for len in [0, 3, OVERHEAD - 1, d.len() - 1] {
        assert!(b.open(&d[..len], NOW).is_err(), "truncated to {len}");
    }
    // Same key, but the receiver belongs to another cluster id: the seal does not open.
    let same_key_other_cluster = Arc::new(GossipKeys {
        cluster_id: b"d".to_vec(),
        keys: vec![(
            k.keys[0].0,
            hkdf::Prk::new_less_safe(
                hkdf::HKDF_SHA256,
                &derive_keyring("c", &[Secret::from(SECRET)]).unwrap()[0].gossip,
            ),
        )],
    });
    assert_eq!(
        opened(Opener::new(same_key_other_cluster, [0; 16], vec![addr(2)]).open(&d, NOW)),
        Err(Refused::BadSeal)
    );
    assert_eq!(opened(b.open(&d, NOW)), Ok(Some(b"hello gossip".to_vec())));
}

#[test]
fn other_format_versions_are_told_apart() {
    let k = keys("c", &[SECRET]);
    let (mut a, _) = node(&k, 1);
    let (_, mut b) = node(&k, 2);
    let mut d = a.seal(b"x", &Recipient::Addr(addr(2)), NOW).remove(0);
    d[3] = 1;
    assert_eq!(opened(b.open(&d, NOW)), Err(Refused::Version(1)));
    assert_eq!(opened(b.open(b"XYZ\x02", NOW)), Err(Refused::Malformed));
}

#[test]
fn rotation_works_both_ways() {
    let old = keys("c", &[OTHER]);
    let mixed_old_first = keys("c", &[OTHER, SECRET]);
    let mixed_new_first = keys("c", &[SECRET, OTHER]);
    let new = keys("c", &[SECRET]);
    let to = Recipient::Addr(addr(2));
    for (sender, receiver) in [
        (&old, &mixed_old_first),
        (&mixed_old_first, &mixed_new_first),
        (&mixed_new_first, &mixed_old_first),
        (&mixed_new_first, &new),
        (&new, &mixed_new_first),
    ] {
        let d = Sealer::new(sender.clone()).seal(b"x", &to, NOW).remove(0);
        let mut o = Opener::new(receiver.clone(), [0; 16], vec![addr(2)]);
        assert_eq!(opened(o.open(&d, NOW)), Ok(Some(b"x".to_vec())));
    }
    let d = Sealer::new(old).seal(b"x", &to, NOW).remove(0);
    assert_eq!(
        opened(Opener::new(new, [0; 16], vec![addr(2)]).open(&d, NOW)),
        Err(Refused::UnknownKey),
        "the old key is gone at the last step"
    );
}

#[test]
fn replays_and_stale_datagrams_are_refused() {
    let k = keys("c", &[SECRET]);
    let (mut a, _) = node(&k, 1);
    let (_, mut b) = node(&k, 2);
    let to = Recipient::Addr(addr(2));
    let d = a.seal(b"syn", &to, NOW).remove(0);
    assert!(opened(b.open(&d, NOW)).unwrap().is_some());
    assert_eq!(opened(b.open(&d, NOW)), Err(Refused::Replayed));
    let old = a.seal(b"syn", &to, NOW - FRESH_MS - 1).remove(0);
    assert_eq!(opened(b.open(&old, NOW)), Err(Refused::Stale));
    let future = a.seal(b"syn", &to, NOW + FRESH_MS + 1).remove(0);
    assert_eq!(opened(b.open(&future, NOW)), Err(Refused::Stale));
    // Just inside the window both ways.
    let skewed = a.seal(b"syn", &to, NOW + FRESH_MS).remove(0);
    assert!(opened(b.open(&skewed, NOW)).unwrap().is_some());
}

#[test]
fn a_wall_clock_step_back_does_not_reopen_replays() {
    let k = keys("c", &[SECRET]);
    let (mut a, _) = node(&k, 1);
    let (_, mut b) = node(&k, 2);
    let clock = Clock::default();
    let t0 = std::time::Instant::now();
    let to = Recipient::Addr(addr(2));
    let captured = a.seal(b"syn", &to, NOW).remove(0);
    assert!(
        opened(b.open(&captured, clock.at(NOW, t0)))
            .unwrap()
            .is_some()
    );
    // Two minutes of gossip from many nodes later, the receiver forgot that session...
    let s = std::time::Duration::from_secs(1);
    let later = clock.at(NOW + 130_000, t0 + 130 * s);
    for _ in 0..300 {
        let d = Sealer::new(k.clone()).seal(b"x", &to, later).remove(0);
        assert!(opened(b.open(&d, later)).unwrap().is_some());
    }
    // ... then its wall clock steps back by two minutes, and the capture is replayed.
    let stepped = clock.at(NOW + 10_000, t0 + 131 * s);
    assert_eq!(opened(b.open(&captured, stepped)), Err(Refused::Stale));
}

#[test]
fn an_envelope_near_the_datagram_limit_travels_in_two_parts() {
    let k = keys("c", &[SECRET]);
    let (mut a, _) = node(&k, 1);
    let to = Recipient::Addr(addr(2));
    let envelope: Vec<u8> = (0..MAX_ENVELOPE).map(|i| (i * 7 % 251) as u8).collect();
    // Either order.
    for order in [[0, 1], [1, 0]] {
        let sealed = a.seal(&envelope, &to, NOW);
        assert_eq!(sealed.len(), 2);
        assert!(sealed.iter().all(|d| d.len() <= MAX_DATAGRAM));
        let (_, mut b) = node(&k, 2);
        assert_eq!(opened(b.open(&sealed[order[0]], NOW)), Ok(None));
        assert_eq!(
            opened(b.open(&sealed[order[1]], NOW)),
            Ok(Some(envelope.clone()))
        );
    }
    // The largest envelope that fits one datagram.
    let sealed = a.seal(&vec![1u8; MAX_PART], &to, NOW);
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].len(), MAX_DATAGRAM);
    // A part from another session does not complete an envelope.
    let (_, mut b) = node(&k, 2);
    let first = a.seal(&envelope, &to, NOW).remove(0);
    let second = Sealer::new(k.clone()).seal(&envelope, &to, NOW).remove(1);
    assert_eq!(opened(b.open(&first, NOW)), Ok(None));
    assert_eq!(opened(b.open(&second, NOW)), Ok(None));
}

#[test]
fn waiting_parts_are_bounded() {
    let k = keys("c", &[SECRET]);
    let (mut a, _) = node(&k, 1);
    let (_, mut b) = node(&k, 2);
    let envelope = vec![3u8; MAX_PART + 10];
    for _ in 0..100 {
        let parts = a.seal(&envelope, &Recipient::Addr(addr(2)), NOW);
        assert_eq!(opened(b.open(&parts[0], NOW)), Ok(None));
    }
    assert!(b.partial.len() <= MAX_PARTIAL);
}
