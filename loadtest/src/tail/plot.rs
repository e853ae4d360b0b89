//! `--tail-svg FILE`: the tail scenario's phases side by side, one panel each (the probe
//! alone, idle, then each number of heavy jobs): every probe's total time, sorted, against its
//! percentile on a "nines" scale (p90, p99, p99.9 equally spaced, so the tail gets the room),
//! latency on one log scale for all panels, with the p99 and the maximum drawn across, so that
//! idle and saturated tails compare at a glance. One path per panel keeps the file small.

use std::path::Path;

use plotters::prelude::*;

use super::report::{Tail, TailPhase};
use crate::LoadtestError;

const DOTS: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(44, 160, 44);
const MAX: RGBColor = RGBColor(214, 39, 40);

/// Writes the plot of `tail` to `path`.
pub fn write_svg(tail: &Tail, path: &Path) -> Result<(), LoadtestError> {
    draw(tail, path).map_err(|e| LoadtestError::Write {
        flag: "--tail-svg",
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn draw(tail: &Tail, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let phases: Vec<&TailPhase> = tail.probe_alone.iter().chain(&tail.phases).collect();
    let all = phases.iter().flat_map(|p| p.totals_ms.iter().copied());
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), ms| {
        (lo.min(ms), hi.max(ms))
    });
    let (y_lo, y_hi) = (decade(lo.min(0.1), f64::floor), decade(hi * 1.5, f64::ceil));
    let root = SVGBackend::new(path, (360 * phases.len().max(1) as u32, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!(
        "forkpool /testrequest, new connection per probe, {} probes {:.1} ms apart (ms, log scale; green p99, red max)",
        tail.probes, tail.spacing_ms
    );
    let root = root.titled(&caption, ("sans-serif", 20))?;
    for (area, phase) in root
        .split_evenly((1, phases.len().max(1)))
        .iter()
        .zip(&phases)
    {
        panel(area, phase, (y_lo, y_hi))?;
    }
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    phase: &TailPhase,
    (y_lo, y_hi): (f64, f64),
) -> Result<(), Box<dyn std::error::Error>> {
    let mut sorted = phase.totals_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len().max(1) as f64;
    // Percentile p as nines: -log10(1 - p); the slowest probe sits at p = 1 - 1/(2n).
    let nines = |i: usize| -(1.0 - (i as f64 + 0.5) / n).log10();
    let x_hi = nines(sorted.len().saturating_sub(1)).max(1.0) * 1.05;
    let title = format!(
        "{}: p99 {:.2}, max {:.2}",
        phase.label, phase.total.p99, phase.total.max
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..x_hi, (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_labels(5)
        .x_label_formatter(
            &|x| match (x.round() as i32, (x - x.round()).abs() < 0.01) {
                (_, false) => String::new(),
                (0, true) => "p0".into(),
                (k, true) => {
                    let digits = (k - 2).max(0) as usize;
                    format!("p{:.digits$}", 100.0 - 100.0 * 10f64.powi(-k))
                }
            },
        )
        .label_style(("sans-serif", 13))
        .y_label_formatter(&|v| format!("{v}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let curve = sorted
        .iter()
        .enumerate()
        .map(|(i, &ms)| (nines(i), ms.max(y_lo)));
    chart.draw_series(std::iter::once(PathElement::new(
        curve.collect::<Vec<_>>(),
        DOTS.stroke_width(2),
    )))?;
    for (value, colour) in [(phase.total.p99, P99), (phase.total.max, MAX)] {
        let y = value.max(y_lo);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, y), (x_hi, y)],
            colour.stroke_width(1),
        )))?;
    }
    Ok(())
}

/// The power of ten at or below (`f64::floor`) or above (`f64::ceil`) `x`.
fn decade(x: f64, round: fn(f64) -> f64) -> f64 {
    10f64.powf(round(x.max(1e-3).log10()))
}
