//! Cost against table size, one line per table kind, log-scale x axis.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::ScalePoint;

pub fn scale_svg(points: &[ScalePoint], path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let max_size = points.iter().map(|p| p.size).max().unwrap_or(10).max(10) as f64;
    let max_ns = points.iter().map(|p| p.ns).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("gateway per-packet cost vs table size", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..max_size * 2.0).log_scale(), 0f64..max_ns)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("entries in the table (log scale)")
        .y_desc("ns per packet")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let series_of = [
        ("routes", "routes: whole VPC->IDC path", RED),
        (
            "lookup: destination cache + ROUTES hash",
            "routes: lookup alone, destination cache + hash (datapath)",
            CYAN,
        ),
        (
            "lookup: ROUTES hash",
            "routes: lookup alone, ROUTES hash (a cache miss)",
            MAGENTA,
        ),
        (
            "lookup: LPM trie",
            "routes: lookup alone, LPM trie (before)",
            BLACK,
        ),
        ("nat", "NAT mappings: IDC->VPC path", BLUE),
        ("tunnels", "tunnels: IDC->VPC path", GREEN),
    ];
    for (table, label, color) in series_of {
        let series: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.table == table)
            .map(|p| (p.size.max(1) as f64, p.ns))
            .collect();
        if series.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(series.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
