//! `GET /metrics` in the Prometheus text format, for the examples: the library records
//! through the `metrics` facade, and this installs `metrics-exporter-prometheus` as the
//! recorder. Install it before the cluster node starts: the node takes its handles then.

use std::time::Duration;

use axum::{Router, http::header::CONTENT_TYPE, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use socketioxide_cluster::metrics::REQUEST_DURATION;

/// Buckets of the request duration histogram, in seconds: from a round trip on a LAN to
/// the default request timeout (5 s).
const REQUEST_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Install the Prometheus recorder for this process; its handle renders the page.
pub fn install() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), REQUEST_BUCKETS)?
        .install_recorder()?;
    // Histograms are folded into their buckets by the upkeep (and at each scrape).
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// A router serving `GET /metrics` from `handle`.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let page = handle.render();
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], page) }
        }),
    )
}
