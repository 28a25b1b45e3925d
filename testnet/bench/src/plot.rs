//! `results.svg`: box plots of the set-up latencies, and bar charts of throughput (with the
//! file transfer through the CLI), DHT lookups and memory.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::Results;
use crate::rtc::order_word;

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 1000;
const FONT: &str = "sans-serif";
/// Colours: kadrtc, the relay baseline, TCP, bare WebRTC (and the file transfer).
const KADRTC: RGBColor = RGBColor(31, 119, 180);
const RELAY: RGBColor = RGBColor(255, 127, 14);
const TCP: RGBColor = RGBColor(127, 127, 127);
const BARE: RGBColor = RGBColor(44, 160, 44);
const TARGET: RGBColor = RGBColor(214, 39, 40);

/// One bar.
struct Bar {
    label: String,
    value: f64,
    color: RGBColor,
}

/// Draws the four panels into an SVG file at `path`.
pub fn write_svg(results: &Results, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let title = format!(
        "kadrtc-bench{} — {}",
        if results.quick { " --quick" } else { "" },
        results.machine.describe()
    );
    let root = root.titled(&title, (FONT, 20)).map_err(plot_error)?;
    let panels = root.split_evenly((2, 2));
    latency_panel(&panels[0], results)?;
    throughput_panel(&panels[1], results)?;
    dht_panel(&panels[2], results)?;
    memory_panel(&panels[3], results)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Box plots of each set-up time (quartiles; Tukey whiskers: the furthest samples within
/// 1.5 IQR of the box), with every sample as a dot.
fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    results: &Results,
) -> anyhow::Result<()> {
    let mut series: Vec<(String, Vec<f64>, RGBColor)> = Vec::new();
    if let Some(bare) = &results.bare_offer_to_open {
        series.push(("bare offer-to-open".into(), bare.samples_ms.clone(), BARE));
    }
    if let Some(join) = &results.join_kadrtc {
        series.push((
            "join via kadrtc".into(),
            join.both_open.samples_ms.clone(),
            KADRTC,
        ));
    }
    if let Some(join) = &results.join_relay {
        series.push((
            "join via WS relay".into(),
            join.both_open.samples_ms.clone(),
            RELAY,
        ));
    }
    let boxes: Vec<BoxStats> = series.iter().filter_map(|s| BoxStats::of(&s.1)).collect();
    if series.is_empty() || boxes.len() != series.len() {
        return empty(area, "set-up latency: not measured");
    }
    let labels: Vec<String> = series.iter().map(|s| s.0.clone()).collect();
    // Scaled to the boxes and whiskers: one retransmission timeout (≈ 1 s) would flatten
    // them. Samples above the axis are listed in the panel.
    let top = boxes.iter().map(|b| b.high).fold(1.0_f64, f64::max) * 1.3;
    let off_scale: Vec<String> = series
        .iter()
        .filter_map(|(label, samples, _)| {
            let above: Vec<String> = samples
                .iter()
                .filter(|v| **v > top)
                .map(|v| format!("{v:.0}"))
                .collect();
            (!above.is_empty()).then(|| format!("{label} {} ms", above.join(", ")))
        })
        .collect();
    let last = labels.len() as f64 - 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption("Set-up to open channel (both sides), ms", (FONT, 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5..last, 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .draw()
        .map_err(plot_error)?;
    for (x, ((_, samples, color), b)) in (0..).map(f64::from).zip(series.iter().zip(&boxes)) {
        let style = color.stroke_width(2);
        let (left, right) = (x - 0.2, x + 0.2);
        chart
            .draw_series([
                PathElement::new([(x, b.q3), (x, b.high)], style),
                PathElement::new([(x, b.q1), (x, b.low)], style),
                PathElement::new([(x - 0.08, b.high), (x + 0.08, b.high)], style),
                PathElement::new([(x - 0.08, b.low), (x + 0.08, b.low)], style),
                PathElement::new([(left, b.median), (right, b.median)], color.stroke_width(3)),
            ])
            .map_err(plot_error)?;
        chart
            .draw_series([Rectangle::new([(left, b.q1), (right, b.q3)], style)])
            .map_err(plot_error)?;
        chart
            .draw_series(
                samples
                    .iter()
                    .filter(|v| **v <= top)
                    .map(|v| Circle::new((x, *v), 2, color.mix(0.5).filled())),
            )
            .map_err(plot_error)?;
        chart
            .draw_series([Text::new(
                format!("median {:.1}", b.median),
                (x, b.high + top * 0.02),
                above(),
            )])
            .map_err(plot_error)?;
    }
    if !off_scale.is_empty() {
        chart
            .draw_series([Text::new(
                format!("off scale: {}", off_scale.join("; ")),
                (-0.45, top * 0.97),
                (FONT, 12),
            )])
            .map_err(plot_error)?;
    }
    Ok(())
}

/// A box plot's five figures, ms.
struct BoxStats {
    low: f64,
    q1: f64,
    median: f64,
    q3: f64,
    high: f64,
}

impl BoxStats {
    /// Quartiles by linear interpolation between samples; whiskers at the furthest samples
    /// within 1.5 IQR of the box. `None` without samples.
    fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let last = sorted.len().checked_sub(1)?;
        let quantile = |p: f64| {
            let pos = p * last as f64;
            let (below, above) = (pos.floor() as usize, pos.ceil() as usize);
            sorted[below] + (sorted[above] - sorted[below]) * (pos - pos.floor())
        };
        let (q1, median, q3) = (quantile(0.25), quantile(0.5), quantile(0.75));
        let reach = 1.5 * (q3 - q1);
        let low = sorted
            .iter()
            .copied()
            .find(|v| *v >= q1 - reach)
            .unwrap_or(q1);
        let high = sorted
            .iter()
            .rev()
            .copied()
            .find(|v| *v <= q3 + reach)
            .unwrap_or(q3);
        Some(Self {
            low,
            q1,
            median,
            q3,
            high,
        })
    }
}

/// Median MB/s of each channel configuration, of TCP and of the file sent through the CLI,
/// log scale, with the 100 MB/s target.
fn throughput_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    results: &Results,
) -> anyhow::Result<()> {
    let mut bars: Vec<Bar> = results
        .throughput
        .iter()
        .flatten()
        .map(|t| Bar {
            label: if t.transport == "tcp" {
                format!("TCP {} KiB", t.message_bytes / 1024)
            } else {
                format!("{} KiB {}", t.message_bytes / 1024, order_word(t.ordered))
            },
            value: t.median_mb_per_s,
            color: if t.transport == "tcp" { TCP } else { KADRTC },
        })
        .collect();
    if let Some(files) = &results.files {
        bars.push(Bar {
            label: format!("file {} MiB, CLI", files.file_bytes / (1024 * 1024)),
            value: files.median_mb_per_s,
            color: BARE,
        });
    }
    if bars.is_empty() {
        return empty(area, "throughput: not measured");
    }
    let caption = if results.files.is_some() {
        "Throughput: one channel, TCP, a file via kadrtc send/recv; MB/s (log)"
    } else {
        "Throughput over one channel vs TCP, MB/s (log)"
    };
    let top = bars.iter().map(|b| b.value).fold(100.0_f64, f64::max) * 3.0;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(segments(labels.len()), (1.0..top).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&|v| label_of(&labels, v))
        .y_desc("MB/s")
        .x_label_style((FONT, 11))
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .margin(12)
                .baseline(1.0)
                .style_func(|key, _| color_of(&bars, key).filled())
                .data((0..).zip(&bars).map(|(key, b)| (key, b.value.max(1.0)))),
        )
        .map_err(plot_error)?;
    for (key, bar) in (0..).zip(bars.iter()) {
        chart
            .draw_series([Text::new(
                format!("{:.0}", bar.value),
                (SegmentValue::CenterOf(key), bar.value.max(1.0) * 1.05),
                above(),
            )])
            .map_err(plot_error)?;
    }
    chart
        .draw_series(LineSeries::new(
            [(SegmentValue::Exact(0), 100.0), (SegmentValue::Last, 100.0)],
            TARGET.stroke_width(1),
        ))
        .map_err(plot_error)?
        .label("target ≥ 100 MB/s (16 KiB ordered)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], TARGET));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// `get_record` p50 and p90 by network size.
fn dht_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, results: &Results) -> anyhow::Result<()> {
    if results.dht.is_empty() {
        return empty(area, "DHT lookups: not measured");
    }
    let mut bars = Vec::new();
    for dht in &results.dht {
        bars.push(Bar {
            label: format!("N={} p50", dht.nodes),
            value: dht.get.median_ms,
            color: KADRTC,
        });
        bars.push(Bar {
            label: format!("N={} p90", dht.nodes),
            value: dht.get.p90_ms,
            color: RELAY,
        });
    }
    let requests: Vec<String> = results
        .dht
        .iter()
        .map(|d| format!("N={}: {:.1} req/get", d.nodes, d.mean_requests))
        .collect();
    bar_panel(
        area,
        &format!("DHT get_record latency, ms ({})", requests.join(", ")),
        "ms",
        &bars,
        None,
    )
}

/// RSS of the `kadrtc` processes, with the idle node's 15 MiB target, and the peak RSS of
/// `kadrtc send` and `kadrtc recv` during the file transfer.
fn memory_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    results: &Results,
) -> anyhow::Result<()> {
    let mut bars = Vec::new();
    let mut caption = "RSS of kadrtc processes, MiB".to_string();
    if let Some(resources) = &results.resources {
        bars.push(Bar {
            label: "idle node".into(),
            value: resources.node_idle_rss_mib,
            color: TCP,
        });
        for sample in &resources.joiner_rss_mib {
            bars.push(Bar {
                label: format!("join, {} ch", sample.channels),
                value: sample.rss_mib,
                color: KADRTC,
            });
        }
        caption = format!(
            "{caption} (join idle CPU with {} ch: {:.2} %)",
            resources.cpu_channels, resources.joiner_idle_cpu_percent
        );
    }
    if let Some(files) = &results.files {
        bars.push(Bar {
            label: "send, peak".into(),
            value: files.sender_peak_rss_mib,
            color: BARE,
        });
        bars.push(Bar {
            label: "recv, peak".into(),
            value: files.receiver_peak_rss_mib,
            color: BARE,
        });
    }
    if bars.is_empty() {
        return empty(area, "memory: not measured");
    }
    bar_panel(
        area,
        &caption,
        "MiB",
        &bars,
        results
            .resources
            .is_some()
            .then_some((15.0, "idle node target ≤ 15 MiB")),
    )
}

/// A linear bar chart with the value over each bar and an optional target line.
fn bar_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    y_desc: &str,
    bars: &[Bar],
    target: Option<(f64, &str)>,
) -> anyhow::Result<()> {
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let top = bars
        .iter()
        .map(|b| b.value)
        .chain(target.map(|t| t.0))
        .fold(1.0_f64, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(segments(labels.len()), 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&|v| label_of(&labels, v))
        .y_desc(y_desc)
        .x_label_style((FONT, 11))
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .margin(12)
                .style_func(|key, _| color_of(bars, key).filled())
                .data((0..).zip(bars).map(|(key, b)| (key, b.value))),
        )
        .map_err(plot_error)?;
    for (key, bar) in (0..).zip(bars.iter()) {
        chart
            .draw_series([Text::new(
                format!("{:.1}", bar.value),
                (SegmentValue::CenterOf(key), bar.value + top * 0.01),
                above(),
            )])
            .map_err(plot_error)?;
    }
    if let Some((value, text)) = target {
        chart
            .draw_series(LineSeries::new(
                [(SegmentValue::Exact(0), value), (SegmentValue::Last, value)],
                TARGET.stroke_width(1),
            ))
            .map_err(plot_error)?
            .label(text.to_string())
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], TARGET));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

/// `n` categories on a segmented axis, keyed 0..n (plotters' integer ranges include their
/// end); at least two, as plotters cannot place a lone category (a single bar, the file
/// transfer alone, gets an empty neighbour).
fn segments(
    n: usize,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordi32> {
    (0..i32::try_from(n)
        .unwrap_or(i32::MAX)
        .saturating_sub(1)
        .max(1))
        .into_segmented()
}

/// Labels centred above the point they name.
fn above() -> TextStyle<'static> {
    TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom))
}

/// The label of category `value`.
fn label_of(labels: &[String], value: &SegmentValue<i32>) -> String {
    match value {
        SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => usize::try_from(*i)
            .ok()
            .and_then(|i| labels.get(i))
            .cloned()
            .unwrap_or_default(),
        SegmentValue::Last => String::new(),
    }
}

/// The colour of the bar of category `key`.
fn color_of(bars: &[Bar], key: &SegmentValue<i32>) -> RGBColor {
    match key {
        SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => usize::try_from(*i)
            .ok()
            .and_then(|i| bars.get(i))
            .map_or(KADRTC, |b| b.color),
        SegmentValue::Last => KADRTC,
    }
}

fn empty(area: &DrawingArea<SVGBackend<'_>, Shift>, text: &str) -> anyhow::Result<()> {
    area.draw(&Text::new(text.to_string(), (40, 40), (FONT, 16)))
        .map_err(plot_error)
}

fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiskers_end_at_samples_and_leave_outliers_out() {
        let mut samples: Vec<f64> = (10..=20).map(f64::from).collect();
        samples.push(1000.0);
        let b = BoxStats::of(&samples).expect("samples");
        assert_eq!((b.q1, b.median, b.q3), (12.75, 15.5, 18.25));
        assert_eq!((b.low, b.high), (10.0, 20.0));
        assert!(BoxStats::of(&[]).is_none());
    }
}
