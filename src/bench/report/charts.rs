//! The report's charts, drawn by plotters as SVG text to be inlined in the
//! page. Box plots are drawn from rectangles and lines rather than with
//! plotters' `Boxplot`, whose whiskers are the 1.5 IQR fences: unclamped,
//! they can reach below zero, a latency no run ever had. Here whiskers span
//! min to max and the box the quartiles, interpolated as in [`stats`].
//! Latencies and memory are drawn on a log axis because VM and container
//! figures often differ tenfold; on a linear one the smaller vanish.

use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::ranged1d::SegmentValue::{CenterOf, Exact};
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::RangedCoordi32;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::super::model::{Group, Results, Step, Subject};
use super::super::stats::{self, percentile, worse_factor};
use super::{times, ReportError};

const FONT: &str = "sans-serif";

fn color(subject: Subject) -> RGBColor {
    match subject {
        Subject::Container => RGBColor(31, 119, 180),
        Subject::Vm => RGBColor(214, 39, 40),
        Subject::Runc => RGBColor(44, 160, 44),
        Subject::Crun => RGBColor(255, 127, 14),
        Subject::QemuMicrovm => RGBColor(148, 103, 189),
    }
}

/// An axis label: no trailing zeros, no float noise (0.30000000000000004).
fn tick(v: f64) -> String {
    ((v * 1000.0).round() / 1000.0).to_string()
}

/// The ticks of a log axis from `low` to `high`. plotters puts its own
/// only at powers of ten, so an axis within one decade would have none:
/// 1-2-5 steps where they give at least three ticks, every 1..9 step where
/// that is needed, and the two ends when even that leaves fewer than two.
fn log_points(low: f64, high: f64) -> Vec<f64> {
    let within = |mantissas: &[f64]| -> Vec<f64> {
        let (first, last) = (low.log10().floor() as i32, high.log10().ceil() as i32);
        (first..=last)
            .flat_map(|k| mantissas.iter().map(move |m| m * 10f64.powi(k)))
            .filter(|v| *v >= low && *v <= high)
            .collect()
    };
    let coarse = within(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        return coarse;
    }
    let fine = within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    if fine.len() >= 2 {
        return fine;
    }
    let mut ends = vec![low * 1.05, high / 1.05];
    ends.extend(fine);
    ends.sort_by(f64::total_cmp);
    ends
}

/// Two significant digits: a tick at 3.4567 ms reads "3.5".
fn significant(v: f64) -> String {
    if v <= 0.0 {
        return tick(v);
    }
    let scale = 10f64.powf(v.log10().floor() - 1.0);
    tick((v / scale).round() * scale)
}

/// `n` categories along an axis. plotters maps a one-value range to a single
/// point, so one category gets an empty neighbour to keep its width.
fn segments(n: usize) -> SegmentedCoord<RangedCoordi32> {
    (0..n.max(2) as i32 - 1).into_segmented()
}

/// One chart per step: each subject's distribution as min, quartiles and
/// max. None when no series of the step has samples to draw (a log axis
/// has no place for a sample at or below zero, so such a series is left out).
pub fn boxes(step: &Step) -> Result<Option<String>, ReportError> {
    let boxes: Vec<(Subject, [f64; 5])> = step
        .series
        .iter()
        .filter(|s| stats::summary(s).is_some_and(|s| s.min > 0.0))
        .map(|s| {
            let mut sorted = s.samples.clone();
            sorted.sort_by(f64::total_cmp);
            (s.subject, [0.0, 0.25, 0.5, 0.75, 1.0].map(|p| percentile(&sorted, p)))
        })
        .collect();
    let Some(low) = boxes.iter().map(|(_, v)| v[0]).min_by(f64::total_cmp) else { return Ok(None) };
    let high = boxes.iter().map(|(_, v)| v[4]).fold(low, f64::max);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart =
            ChartBuilder::on(&root).margin(12).x_label_area_size(30).y_label_area_size(60).build_cartesian_2d(
                segments(boxes.len()),
                (low / 1.3..high * 1.3).log_scale().with_key_points(log_points(low / 1.3, high * 1.3)),
            )?;
        let label = |v: &_| match v {
            CenterOf(i) => boxes.get(*i as usize).map_or("", |b| b.0.label()).to_string(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&label)
            .y_label_formatter(&|v| significant(*v))
            .y_desc(format!("{} (log scale)", step.unit.symbol()))
            .label_style((FONT, 13))
            .draw()?;
        for (i, (subject, [min, q1, median, q3, max])) in boxes.iter().enumerate() {
            let (i, c) = (i as i32, color(*subject));
            let mut body = Rectangle::new([(Exact(i), *q1), (Exact(i + 1), *q3)], c.mix(0.25).filled());
            let mut outline = Rectangle::new([(Exact(i), *q1), (Exact(i + 1), *q3)], c.stroke_width(1));
            for r in [&mut body, &mut outline] {
                r.set_margin(0, 0, 30, 30);
            }
            chart.draw_series([PathElement::new(vec![(CenterOf(i), *min), (CenterOf(i), *max)], c)])?;
            if q3 > q1 {
                chart.draw_series([body, outline])?;
            }
            // The median and the whisker caps are lines across the box, in
            // pixels: a zero-height rectangle would be one, but SVG draws
            // no rectangle of height 0, so a series of one sample (whose
            // quartiles are all the same) would show nothing at all.
            for (v, inset, width) in [(*median, 30, 3), (*min, 50, 1), (*max, 50, 1)] {
                let (left, y) = chart.backend_coord(&(Exact(i), v));
                let (right, _) = chart.backend_coord(&(Exact(i + 1), v));
                root.draw(&PathElement::new(vec![(left + inset, y), (right - inset, y)], c.stroke_width(width)))?;
            }
        }
        root.present()?;
    }
    Ok(Some(svg))
}

/// How much worse than container isolation each other subject is, step by
/// step, for the workloads (not lifecycle, not density). None without data.
pub fn overhead(results: &Results) -> Result<Option<String>, ReportError> {
    let bars: Vec<(String, Subject, f64)> = results
        .steps
        .iter()
        .filter(|s| !matches!(s.group, Group::Lifecycle | Group::Density))
        .flat_map(|step| {
            step.series.iter().filter(|s| s.subject != Subject::Container).filter_map(move |s| {
                let baseline = stats::find(step, Subject::Container, s.x)?;
                let f = worse_factor(step.unit, stats::summary(s)?.median, baseline.median)?;
                Some((format!("{} · {}", step.id, s.subject.label()), s.subject, f))
            })
        })
        .collect();
    if bars.is_empty() {
        return Ok(None);
    }
    // Bars grow from 1.0 on a log axis, so that 0.5x and 2x are as long and
    // a 200x memory figure does not flatten the 1.3x ones.
    let low = bars.iter().map(|b| b.2).fold(1.0, f64::min) / 1.2;
    let high = bars.iter().map(|b| b.2).fold(1.0, f64::max) * 1.5;
    let rows = bars.len().max(2) as i32;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 70 + 18 * rows as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(250)
            .build_cartesian_2d((low..high).log_scale().with_key_points(log_points(low, high)), segments(bars.len()))?;
        // The first bar on top, in the order of the table.
        let label = |v: &_| match v {
            CenterOf(i) => bars.get((rows - 1 - i) as usize).map_or(String::new(), |b| b.0.clone()),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(TRANSPARENT)
            .y_labels(rows as usize)
            .y_label_formatter(&label)
            .x_label_formatter(&|v| significant(*v) + "x")
            .x_desc("median, times container isolation's (log scale; > 1: slower or costlier; throughput inverted)")
            .label_style((FONT, 12))
            .draw()?;
        let figure = TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, (_, subject, f)) in bars.iter().enumerate() {
            let y = rows - 1 - i as i32;
            let mut bar = Rectangle::new([(1.0, Exact(y)), (*f, Exact(y + 1))], color(*subject).filled());
            bar.set_margin(3, 3, 0, 0);
            chart.draw_series([bar])?;
            let text = EmptyElement::at((f.max(1.0), CenterOf(y))) + Text::new(times(*f), (4, 0), figure.clone());
            chart.draw_series([text])?;
        }
        chart.draw_series([PathElement::new(vec![(1.0, Exact(0)), (1.0, Exact(rows))], BLACK.stroke_width(2))])?;
        root.present()?;
    }
    Ok(Some(svg))
}

/// A density step as one line per subject: the median against the number
/// of instances. None when no subject has a point.
pub fn density(step: &Step) -> Result<Option<String>, ReportError> {
    let mut lines: Vec<(Subject, Vec<(u32, f64)>)> = Vec::new();
    for s in &step.series {
        let (Some(x), Some(summary)) = (s.x, stats::summary(s)) else { continue };
        if summary.median <= 0.0 {
            continue;
        }
        match lines.iter_mut().find(|(subject, _)| *subject == s.subject) {
            Some((_, points)) => points.push((x, summary.median)),
            None => lines.push((s.subject, vec![(x, summary.median)])),
        }
    }
    let points = lines.iter().flat_map(|(_, p)| p);
    let Some(low) = points.clone().map(|p| p.1).min_by(f64::total_cmp) else { return Ok(None) };
    let high = points.clone().map(|p| p.1).fold(low, f64::max);
    let right = points.map(|p| p.0).fold(1, u32::max);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE)?;
        // The legend beside the plot, where no line can run under it.
        let (plot, legend) = root.split_horizontally(500);
        let mut chart =
            ChartBuilder::on(&plot).margin(12).x_label_area_size(40).y_label_area_size(60).build_cartesian_2d(
                0..right + 1,
                (low / 1.5..high * 1.5).log_scale().with_key_points(log_points(low / 1.5, high * 1.5)),
            )?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_desc("instances")
            .y_desc(format!("median {} (log scale)", step.unit.symbol()))
            .y_label_formatter(&|v| significant(*v))
            .label_style((FONT, 13))
            .draw()?;
        let name = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (k, (subject, mut points)) in lines.into_iter().enumerate() {
            points.sort_by_key(|p| p.0);
            let c = color(subject);
            chart.draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))?;
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
            let y = 24 + 20 * k as i32;
            legend.draw(&PathElement::new(vec![(4, y), (24, y)], c.stroke_width(2)))?;
            legend.draw(&Text::new(subject.label(), (30, y), name.clone()))?;
        }
        root.present()?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_of_one_sample_is_drawn_as_a_line_in_its_color() {
        let step: Step = serde_json::from_value(serde_json::json!({
            "id": "lifecycle.create", "title": "create returns", "group": "lifecycle", "unit": "milliseconds",
            "series": [
                {"subject": "container", "x": null, "samples": [12.0], "error": null},
                {"subject": "vm", "x": null, "samples": [480.0], "error": null}
            ]
        }))
        .unwrap();
        let svg = boxes(&step).unwrap().unwrap();
        for subject in [Subject::Container, Subject::Vm] {
            let RGBColor(r, g, b) = color(subject);
            let stroke = format!("stroke=\"#{r:02X}{g:02X}{b:02X}\"");
            let lines = svg.lines().filter(|l| l.contains("<polyline") && l.contains(&stroke)).count();
            // The whisker (a point here), the median and both caps.
            assert!(lines >= 3, "{subject:?}: {lines} lines with {stroke} in {svg}");
            assert!(!svg.contains("height=\"0\""), "a zero-height rectangle draws nothing: {svg}");
        }
    }

    #[test]
    fn a_log_axis_has_ticks_even_within_one_decade() {
        assert_eq!(log_points(0.8, 120.0), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(log_points(1.2, 7.5), vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        let ends = log_points(1.21, 1.9);
        assert_eq!(ends.len(), 2);
        assert!(ends[0] > 1.21 && ends[1] < 1.9);
        assert_eq!(significant(3.4567), "3.5");
        assert_eq!(significant(1234.0), "1200");
    }
}
