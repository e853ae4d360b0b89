//! `--svg FILE`: /testrequest probe latency over time, log scale, one colour per kind of
//! connection, with the saturated phases shaded and labelled with their K.

use std::path::Path;

use plotters::prelude::*;

use super::report::{ConnKind, Report};
use super::LoadtestError;

const NEW_CONN: RGBColor = RGBColor(31, 119, 180);
const KEPT_ALIVE: RGBColor = RGBColor(214, 39, 40);
const SHADE: RGBColor = RGBColor(255, 170, 60);

pub fn write_svg(report: &Report, path: &Path) -> Result<(), LoadtestError> {
    draw(report, path).map_err(|e| LoadtestError::Write {
        flag: "--svg",
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn draw(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let samples: Vec<_> = report.samples.iter().filter(|s| s.ok).collect();
    let t_max = samples.iter().map(|s| s.t_s).fold(1.0, f64::max) * 1.02;
    let ms_max = samples.iter().map(|s| s.ms).fold(1.0, f64::max);
    let ms_min = samples.iter().map(|s| s.ms).fold(f64::INFINITY, f64::min);
    let (y_lo, y_hi) = (floor_decade(ms_min.min(1.0)), ceil_decade(ms_max * 1.5));

    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let phases = report.saturated.as_ref().map_or(&[][..], |s| &s.phases[..]);
    let caption = format!(
        "forkpool: /testrequest latency, {} workers{}; shaded: all workers busy, K heavy jobs in flight",
        report.workers,
        report
            .worker_priority
            .as_ref()
            .map_or_else(String::new, |p| format!(" at {p}"))
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("latency (ms, log scale)")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .y_label_formatter(&|v| format!("{v}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;

    chart.draw_series(phases.iter().map(|p| {
        Rectangle::new(
            [(p.start_s, y_lo), (p.end_s, y_hi)],
            SHADE.mix(0.25).filled(),
        )
    }))?;
    chart.draw_series(phases.iter().map(|p| {
        Text::new(
            format!("K={}", p.k),
            (p.start_s, y_hi / 1.6),
            ("sans-serif", 18).into_font().color(&BLACK),
        )
    }))?;

    for (kind, colour, label) in [
        (ConnKind::New, NEW_CONN, "new connection per probe"),
        (ConnKind::KeptAlive, KEPT_ALIVE, "kept-alive connection"),
    ] {
        chart
            .draw_series(
                samples
                    .iter()
                    .filter(|s| s.conn == kind)
                    .map(|s| Circle::new((s.t_s, s.ms.max(y_lo)), 2, colour.mix(0.7).filled())),
            )?
            .label(label)
            .legend(move |(x, y)| Circle::new((x, y), 4, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 17))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

fn floor_decade(x: f64) -> f64 {
    10f64.powf(x.max(1e-3).log10().floor())
}

fn ceil_decade(x: f64) -> f64 {
    10f64.powf(x.max(1e-3).log10().ceil())
}
