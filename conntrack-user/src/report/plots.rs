//! The charts of `profile --html`, drawn by plotters into SVG strings
//! (its SVG backend writes text as `<text>` elements, so no font is read
//! or fetched; plotters' built-in size estimate lays the labels out).
use std::error::Error;

use hdrhistogram::Histogram;
use plotters::{coord::Shift, prelude::*};

use super::timeline::{Rate, Sample};

/// Chart size in pixels.
const SIZE: (u32, u32) = (760, 380);

/// Percentile ticks per half distance for the percentile plots (as
/// HdrHistogram's own plots are made).
const TICKS_PER_HALF_DISTANCE: u32 = 5;

type Drawing<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Runs `draw` on a white SVG canvas; the SVG text, or plotters' error as
/// text (its error types are generic over the backend).
fn svg(draw: impl FnOnce(&Drawing<'_>) -> Result<(), Box<dyn Error>>) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A legend swatch in `colour`: a filled bar, so that the only coloured
/// polylines of a chart are its data.
fn swatch(colour: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 2), (x + 20, y + 2)], colour.filled())
}

/// NEW and DESTROY per second over the run.
pub fn churn(rates: &[Rate], duration: f64, new: u64, destroy: u64) -> Result<String, String> {
    svg(|root| {
        let top = rates
            .iter()
            .map(|r| r.new.max(r.destroy))
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption("NEW and DESTROY per second", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..duration.max(1.0), 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds into the run")
            .y_desc("events per second")
            .y_label_formatter(&|y| number(*y))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                rates.iter().map(|r| (r.secs, r.new)),
                BLUE.stroke_width(2),
            ))?
            .label(format!("NEW ({new} in all)"))
            .legend(swatch(BLUE));
        chart
            .draw_series(LineSeries::new(
                rates.iter().map(|r| (r.secs, r.destroy)),
                RED.stroke_width(2),
            ))?
            .label(format!("DESTROY ({destroy} in all)"))
            .legend(swatch(RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// Entries in the table against nf_conntrack_max over the run.
pub fn entries(samples: &[Sample], duration: f64) -> Result<String, String> {
    svg(|root| {
        let peak = samples.iter().map(|s| s.entries).max().unwrap_or(0);
        let max = samples.iter().filter_map(|s| s.max).max();
        // A log scale: a few thousand entries against a max of a million
        // still show, and so does the headroom.
        let top = (peak.max(max.unwrap_or(0)).max(1) as f64) * 2.0;
        let mut chart = ChartBuilder::on(root)
            .caption("entries against nf_conntrack_max", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..duration.max(1.0), (1f64..top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds into the run")
            .y_desc("entries (log scale)")
            .y_label_formatter(&|y| number(*y))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.secs, s.entries.max(1) as f64)),
                BLUE.stroke_width(2),
            ))?
            .label(format!("entries (peak {peak})"))
            .legend(swatch(BLUE));
        if let Some(max) = max {
            chart
                .draw_series(LineSeries::new(
                    samples
                        .iter()
                        .filter_map(|s| s.max.map(|m| (s.secs, m as f64))),
                    RED.stroke_width(2),
                ))?
                .label(format!("nf_conntrack_max ({max})"))
                .legend(swatch(RED));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// An axis number: whole above 10 (the values are counts and integer
/// times), one decimal below.
fn number(y: f64) -> String {
    if y.abs() >= 10.0 || y.fract() == 0.0 {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

/// The 1-2-5 values from `lo` to `hi`: ticks of a log axis that read as
/// round numbers (plotters' own log ticks skip whole decades at times).
fn one_two_five(lo: u64, hi: u64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 1u64;
    while decade <= hi {
        for m in [1, 2, 5] {
            let v = decade.saturating_mul(m);
            if (lo..=hi).contains(&v) {
                ticks.push(v as f64);
            }
        }
        decade = decade.saturating_mul(10);
    }
    ticks
}

/// The colour of the `i`th series.
fn colour(i: usize) -> RGBColor {
    const COLOURS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
    ];
    COLOURS[i % COLOURS.len()]
}

/// The CDF of the lifetimes, one line a protocol, on a log time axis.
/// Only non-empty histograms are given.
pub fn lifetime_cdf(lifetimes: &[(&str, &Histogram<u64>)]) -> Result<String, String> {
    svg(|root| {
        let lo = lifetimes
            .iter()
            .map(|(_, h)| h.min())
            .min()
            .unwrap_or(1)
            .max(1);
        let hi = lifetimes
            .iter()
            .map(|(_, h)| h.max())
            .max()
            .unwrap_or(1)
            .max(lo);
        let mut chart = ChartBuilder::on(root)
            .caption("connection lifetime (CDF)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                ((lo as f64) / 2.0..(hi as f64) * 2.0)
                    .log_scale()
                    .with_key_points(one_two_five(lo / 2, hi * 2)),
                0f64..1.0,
            )?;
        chart
            .configure_mesh()
            .x_desc("lifetime, ms (log scale)")
            .x_label_formatter(&|x| number(*x))
            .y_desc("fraction ended at or below")
            .draw()?;
        for (i, (name, h)) in lifetimes.iter().enumerate() {
            let total = h.len() as f64;
            let mut below = 0u64;
            let mut points = Vec::new();
            for v in h.iter_recorded() {
                let x = v.value_iterated_to().max(1) as f64;
                points.push((x, below as f64 / total));
                below += v.count_at_value();
                points.push((x, below as f64 / total));
            }
            chart
                .draw_series(LineSeries::new(points, colour(i).stroke_width(2)))?
                .label(format!("{name} ({})", h.len()))
                .legend(swatch(colour(i)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// A percentile label for 1/(1-p): 10 -> "90%", 1000 -> "99.9%".
pub fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x.max(1.0));
    let decimals = (x.log10().round() as i64 - 2).clamp(0, 6) as usize;
    format!("{p:.decimals$}%")
}

/// HdrHistogram's classic percentile plot: value against percentile, the
/// percentile axis as 1/(1-p) on a log scale. The histogram is not empty.
pub fn percentiles(title: &str, unit: &str, h: &Histogram<u64>) -> Result<String, String> {
    svg(|root| {
        let mut points: Vec<(f64, f64)> = h
            .iter_quantiles(TICKS_PER_HALF_DISTANCE)
            .filter(|v| v.quantile_iterated_to() < 1.0)
            .map(|v| {
                (
                    1.0 / (1.0 - v.quantile_iterated_to()),
                    v.value_iterated_to() as f64,
                )
            })
            .collect();
        // Out to the decade past the last finite row (99 % at least); the
        // 100 % row (1/(1-p) infinite) is drawn as the max at the edge.
        let last = points.iter().map(|p| p.0).fold(1.0, f64::max);
        let right = 10f64.powi(last.log10().floor() as i32 + 1).max(100.0);
        points.push((right, h.max() as f64));
        let decades: Vec<f64> = (0..=right.log10().round() as i32)
            .map(|e| 10f64.powi(e))
            .collect();
        let top = (h.max().max(1) as f64) * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{title} by percentile"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (1f64..right).log_scale().with_key_points(decades),
                0f64..top,
            )?;
        chart
            .configure_mesh()
            .x_desc("percentile (1/(1-p), log scale)")
            .y_desc(format!("{title}, {unit}"))
            .y_label_formatter(&|y| number(*y))
            .x_label_formatter(&|x| percentile_label(*x))
            .draw()?;
        chart
            .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?
            .label(format!(
                "{title} ({} samples, max {} {unit})",
                h.len(),
                h.max()
            ))
            .legend(swatch(BLUE));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_go_one_two_five() {
        assert_eq!(
            one_two_five(80, 3000),
            [100.0, 200.0, 500.0, 1000.0, 2000.0]
        );
        assert_eq!(one_two_five(0, 1), [1.0]);
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10000.0), "99.99%");
    }

    #[test]
    fn a_percentile_plot_is_an_svg_with_its_line_and_labels() {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for v in 1..=1000 {
            h.record(v).expect("record");
        }
        let svg = percentiles("TCP set-up", "us", &h).expect("drawn");
        assert!(svg.starts_with("<svg"), "{svg}");
        // The data line, blue, one point a percentile row and the max.
        let line = svg
            .lines()
            .find(|l| l.contains("stroke=\"#0000FF\"") && l.starts_with("<polyline"))
            .expect("the data line");
        assert!(line.matches(',').count() > 40, "{line}");
        // plotters writes each text on its own line inside <text>.
        assert!(svg.contains(">\nTCP set-up, us\n</text>"), "{svg}");
        for tick in ["0%", "90%", "99%", "99.9%"] {
            assert!(
                svg.contains(&format!(">\n{tick}\n</text>")),
                "{tick}: {svg}"
            );
        }
        assert!(svg.contains("1000 samples, max 1000 us"), "{svg}");
    }
}
