//! Unit tests of `metrics`.

use super::*;
use metrics::{Histogram, Key, KeyName, Metadata, Recorder};
use metrics_util::registry::{AtomicStorage, Registry};
use std::sync::atomic::Ordering;

/// A recorder whose values can be read any number of times (metrics-util's debugging
/// recorder resets what it reports).
#[derive(Clone)]
pub(crate) struct TestRecorder {
    registry: Arc<Registry<Key, AtomicStorage>>,
    units: Arc<Mutex<HashMap<String, Unit>>>,
}

impl TestRecorder {
    pub(crate) fn new() -> Self {
        Self {
            registry: Arc::new(Registry::atomic()),
            units: Arc::default(),
        }
    }

    /// The sum over every series of `name` whose labels include `labels`: a counter's
    /// count, a gauge's value, a histogram's number of observations.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matches = |key: &Key| {
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        };
        let counters: f64 = (self.registry.get_counter_handles().into_iter())
            .filter(|(k, _)| matches(k))
            .map(|(_, c)| c.load(Ordering::Relaxed) as f64)
            .sum();
        let gauges: f64 = (self.registry.get_gauge_handles().into_iter())
            .filter(|(k, _)| matches(k))
            .map(|(_, g)| f64::from_bits(g.load(Ordering::Relaxed)))
            .sum();
        let histograms: f64 = (self.registry.get_histogram_handles().into_iter())
            .filter(|(k, _)| matches(k))
            .map(|(_, h)| h.data().len() as f64)
            .sum();
        counters + gauges + histograms
    }

    /// The unit `name` was described with.
    pub(crate) fn unit(&self, name: &str) -> Option<Unit> {
        self.units.lock().unwrap().get(name).copied()
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

impl TestRecorder {
    fn describe(&self, key: KeyName, unit: Option<Unit>) {
        if let Some(unit) = unit {
            self.units
                .lock()
                .unwrap()
                .insert(key.as_str().to_string(), unit);
        }
    }
}

#[test]
fn every_documented_name_is_in_the_crate_docs_table_and_prefixed() {
    let docs = include_str!("../metrics.rs");
    for metric in ALL {
        assert!(metric.name.starts_with("socketioxide_cluster_"));
        assert!(
            docs.contains(&format!("| `{}` |", metric.name)),
            "{} is missing from the table",
            metric.name
        );
    }
    assert!(ALL.iter().any(|m| m.name == "socketioxide_cluster_members"));
}

#[test]
fn drops_and_requests_are_recorded_with_their_labels() {
    let recorder = TestRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        describe();
        let drops = Drops::new(label(&"me".into()));
        let b: Arc<str> = "b".into();
        drops.record(&b, DropReason::QueueFull, 3);
        drops.record(&b, DropReason::PeerGone, 0);
        drops.record(&"c".into(), DropReason::TooLarge, 1);
        assert_eq!(drops.of("b"), 3);
        drops.forget("b");
        assert_eq!(drops.of("b"), 0);
        let node = label(&"me".into());
        request_ended(
            &node,
            "rooms",
            RequestEnd::PeerLost,
            std::time::Duration::from_millis(3),
        );
        request_ended_early(&node, "rooms");
        #[cfg(feature = "cluster-gossip")]
        {
            let frames = FrameCounters::new(&node, FRAMES_SENT, BYTES_SENT);
            let mut tally = FrameTally::default();
            tally.add(1, 40);
            tally.add(9, 40);
            frames.record(&mut tally);
            frames.record(&mut tally);
        }
    });
    let v = |name, labels: &[(&str, &str)]| recorder.value(name, labels);
    assert_eq!(
        v(FRAMES_DROPPED, &[("peer", "b"), ("reason", "queue_full")]),
        3.0
    );
    assert_eq!(v(FRAMES_DROPPED, &[("reason", "peer_gone")]), 0.0);
    assert_eq!(
        v(FRAMES_DROPPED, &[("peer", "c"), ("reason", "too_large")]),
        1.0
    );
    assert_eq!(
        v(REQUESTS, &[("kind", "rooms"), ("outcome", "peer_lost")]),
        1.0
    );
    assert_eq!(v(REQUEST_DURATION, &[("kind", "rooms")]), 1.0);
    assert_eq!(v(REQUESTS_ENDED_EARLY, &[("node", "me")]), 1.0);
    #[cfg(feature = "cluster-gossip")]
    {
        assert_eq!(v(FRAMES_SENT, &[("kind", "response")]), 1.0);
        assert_eq!(v(BYTES_SENT, &[("kind", "response")]), 40.0);
        assert_eq!(
            v(FRAMES_SENT, &[]),
            1.0,
            "an unknown kind is not recorded, a tally once"
        );
    }
    assert_eq!(recorder.unit(REQUEST_DURATION), Some(Unit::Seconds));
    assert_eq!(recorder.unit(BYTES_SENT), Some(Unit::Bytes));
}
