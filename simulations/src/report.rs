//! Results as markdown tables and PNG plots against the number of nodes.

use std::{fmt::Write as _, path::Path, time::Duration};

use crate::{
    real::{GossipCost, SEAL_OVERHEAD},
    scenarios::{Churn, Crash, Join, Partition, SlowPeer},
};

/// One measured figure.
#[derive(Clone, Copy, Debug)]
pub enum Value {
    /// A duration, shown in milliseconds.
    Ms(Duration),
    /// `got` of `of`, shown as both and plotted as a percentage.
    Ratio(usize, usize),
    /// A count.
    Count(u64),
    /// Per second.
    Rate(f64),
    /// A quantity with two decimals.
    Decimal(f64),
    /// A duration, shown in microseconds.
    Us(Duration),
    /// Did not happen within the run.
    Never,
}

impl Value {
    fn cell(&self) -> String {
        match self {
            Value::Ms(d) => format!("{:.0}", d.as_secs_f64() * 1e3),
            Value::Ratio(got, of) => format!("{got}/{of}"),
            Value::Count(n) => n.to_string(),
            Value::Rate(r) => format!("{r:.0}"),
            Value::Decimal(x) => format!("{x:.2}"),
            Value::Us(d) => format!("{:.0}", d.as_secs_f64() * 1e6),
            Value::Never => "—".into(),
        }
    }
    fn number(&self) -> Option<f64> {
        match self {
            Value::Ms(d) => Some(d.as_secs_f64() * 1e3),
            Value::Ratio(got, of) => Some(100.0 * *got as f64 / (*of).max(1) as f64),
            Value::Count(n) => Some(*n as f64),
            Value::Rate(r) | Value::Decimal(r) => Some(*r),
            Value::Us(d) => Some(d.as_secs_f64() * 1e6),
            Value::Never => None,
        }
    }
}

/// A scenario's figures for one cluster size, by column.
pub trait Row {
    /// Nodes in the run.
    fn nodes(&self) -> usize;
    /// `(column, value)`; the column names carry the unit.
    fn columns(&self) -> Vec<(&'static str, Value)>;
    /// Columns worth a plot, all of one unit, and that unit.
    fn plotted(&self) -> (&'static str, Vec<&'static str>);
}

impl Row for Join {
    fn nodes(&self) -> usize {
        self.nodes
    }
    fn columns(&self) -> Vec<(&'static str, Value)> {
        vec![("all see all (ms)", Value::Ms(self.converged))]
    }
    fn plotted(&self) -> (&'static str, Vec<&'static str>) {
        ("ms", vec!["all see all (ms)"])
    }
}

impl Row for GossipCost {
    fn nodes(&self) -> usize {
        self.nodes
    }
    fn columns(&self) -> Vec<(&'static str, Value)> {
        let ratio = self.cpu_sealed.as_secs_f64() / self.cpu_plain.as_secs_f64().max(1e-9);
        vec![
            ("all see all, in clear (ms)", Value::Ms(self.join_plain)),
            ("all see all, sealed (ms)", Value::Ms(self.join_sealed)),
            (
                "sealed datagrams per node per round",
                Value::Decimal(self.datagrams),
            ),
            (
                "bytes added per node per round",
                Value::Rate(self.datagrams * SEAL_OVERHEAD as f64),
            ),
            (
                "CPU in clear (µs per node per round)",
                Value::Us(self.cpu_plain),
            ),
            (
                "CPU sealed (µs per node per round)",
                Value::Us(self.cpu_sealed),
            ),
            ("sealed / clear", Value::Decimal(ratio)),
        ]
    }
    fn plotted(&self) -> (&'static str, Vec<&'static str>) {
        (
            "µs",
            vec![
                "CPU in clear (µs per node per round)",
                "CPU sealed (µs per node per round)",
            ],
        )
    }
}

impl Row for Crash {
    fn nodes(&self) -> usize {
        self.nodes
    }
    fn columns(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("killed", Value::Count(self.killed as u64)),
            (
                "survivors see only survivors (ms)",
                Value::Ms(self.detected),
            ),
            (
                "pending fetch_sockets returned (ms)",
                Value::Ms(self.request),
            ),
            (
                "sockets returned / alive",
                Value::Ratio(self.sockets, self.expected_sockets),
            ),
        ]
    }
    fn plotted(&self) -> (&'static str, Vec<&'static str>) {
        (
            "ms",
            vec![
                "survivors see only survivors (ms)",
                "pending fetch_sockets returned (ms)",
            ],
        )
    }
}

impl Row for Partition {
    fn nodes(&self) -> usize {
        self.nodes
    }
    fn columns(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("split seen (ms)", Value::Ms(self.split_seen)),
            (
                "delivered within a side during the split",
                Value::Ratio(self.split_delivered.0, self.split_delivered.1),
            ),
            ("healed (ms)", Value::Ms(self.healed)),
            (
                "delivered to all after healing",
                Value::Ratio(self.after_heal_delivered.0, self.after_heal_delivered.1),
            ),
        ]
    }
    fn plotted(&self) -> (&'static str, Vec<&'static str>) {
        ("ms", vec!["split seen (ms)", "healed (ms)"])
    }
}

impl Row for Churn {
    fn nodes(&self) -> usize {
        self.nodes
    }
    fn columns(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("changes", Value::Count(self.changes as u64)),
            ("crashes", Value::Count(self.crashes as u64)),
            ("leaves", Value::Count(self.leaves as u64)),
            ("restarted and up", Value::Count(self.rejoined as u64)),
            ("broadcasts", Value::Count(self.broadcasts as u64)),
            (
                "delivered to stable nodes",
                Value::Ratio(self.delivered.0, self.delivered.1),
            ),
            ("duplicates", Value::Count(self.duplicates)),
            (
                "frames dropped for departed nodes",
                Value::Count(self.dropped),
            ),
        ]
    }
    fn plotted(&self) -> (&'static str, Vec<&'static str>) {
        ("% delivered", vec!["delivered to stable nodes"])
    }
}

impl Row for SlowPeer {
    fn nodes(&self) -> usize {
        self.nodes
    }
    fn columns(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("offered (msg/s)", Value::Rate(self.offered())),
            ("delivered before (msg/s)", Value::Rate(self.before)),
            (
                "delivered during the hang (msg/s)",
                Value::Rate(self.during),
            ),
            (
                "hung node dropped from members (ms)",
                self.evicted.map_or(Value::Never, Value::Ms),
            ),
            ("frames dropped", Value::Count(self.dropped)),
            (
                "memory growth during the hang (KiB)",
                self.memory_growth
                    .map_or(Value::Never, |b| Value::Count(b / 1024)),
            ),
            (
                "most queued by a node during the hang (KiB)",
                Value::Count(self.peak_queued / 1024),
            ),
        ]
    }
    fn plotted(&self) -> (&'static str, Vec<&'static str>) {
        (
            "msg/s",
            vec![
                "delivered before (msg/s)",
                "delivered during the hang (msg/s)",
            ],
        )
    }
}

/// A markdown table: one line per run.
pub fn table(rows: &[Box<dyn Row>]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let heads: Vec<&str> = first.columns().iter().map(|(h, _)| *h).collect();
    let mut out = format!("| nodes | {} |\n", heads.join(" | "));
    let _ = writeln!(out, "|---:|{}", "---:|".repeat(heads.len()));
    for r in rows {
        let cells: Vec<String> = r.columns().iter().map(|(_, v)| v.cell()).collect();
        let _ = writeln!(out, "| {} | {} |", r.nodes(), cells.join(" | "));
    }
    out
}

/// Where the plot's lettering comes from: a TrueType font on this machine.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Draw the plotted columns against the number of nodes into `path` (PNG).
pub fn plot(title: &str, rows: &[Box<dyn Row>], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    static FONT_LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT_LOADED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e}"))?;
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
                .map_err(|_| format!("{FONT} is not a font"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("no font for the plots: {e}"))?;
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let (unit, columns) = first.plotted();
    let series: Vec<(&str, Vec<(f64, f64)>)> = columns
        .iter()
        .map(|&c| {
            let points = rows
                .iter()
                .filter_map(|r| {
                    let v = r.columns().into_iter().find(|(h, _)| *h == c)?.1.number()?;
                    Some((r.nodes() as f64, v))
                })
                .collect();
            (c, points)
        })
        .collect();
    let max_x = rows.iter().map(|r| r.nodes()).max().unwrap_or(1) as f64;
    let max_y = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0f64, f64::max);
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x * 1.05, 0f64..max_y * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("nodes")
        .y_desc(unit)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA];
    for (k, (name, points)) in series.into_iter().enumerate() {
        let color = colors[k % colors.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
