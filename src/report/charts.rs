//! The report's charts, drawn by `plotters` into SVG strings. Each chart also returns where its
//! plot area lies and what ranges its axes cover (`Frame`), written beside the SVG as data
//! attributes, so that a test can read the plotted values back out of the picture.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Series colours (matplotlib's tab10, so the pictures look like what users know).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// A chart: its SVG and how values map to its pixels.
pub struct Chart {
    pub svg: String,
    pub frame: Frame,
}

/// The fonts a chart's text asks for: CJK faces first (class names are often Chinese), then
/// any sans-serif. Written into the SVG itself, so a chart saved alone renders the same.
pub const FONTS: &str =
    "'Noto Sans CJK SC','Source Han Sans SC','WenQuanYi Micro Hei','PingFang SC','Microsoft YaHei',sans-serif";

impl Chart {
    fn new(svg: String, frame: Frame) -> Chart {
        let svg = svg.replace(
            "font-family=\"sans-serif\"",
            &format!("font-family=\"{FONTS}\""),
        );
        Chart { svg, frame }
    }
}

/// The plot area in pixels and the value ranges it shows; `log_x`: the x axis is log10.
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    pub pixels_x: (i32, i32),
    pub pixels_y: (i32, i32),
    pub range_x: (f64, f64),
    pub range_y: (f64, f64),
    pub log_x: bool,
}

impl Frame {
    fn new(
        (px, py): (std::ops::Range<i32>, std::ops::Range<i32>),
        range_x: (f64, f64),
        range_y: (f64, f64),
        log_x: bool,
    ) -> Frame {
        Frame {
            pixels_x: (px.start, px.end),
            pixels_y: (py.start, py.end),
            range_x,
            range_y,
            log_x,
        }
    }
}

pub fn hex(c: &RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// A value range that is never empty.
fn span(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi + pad * (hi - lo))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn failed(e: impl std::fmt::Display) -> String {
    format!("a chart could not be drawn: {e}")
}

/// Lines over a shared x axis: `series` are (name, points), drawn in palette order; `marks` are
/// vertical lines with a label (the best epoch).
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    y_range: Option<(f64, f64)>,
    marks: &[(f64, String)],
) -> Result<Chart, String> {
    let mut svg = String::new();
    let frame;
    {
        let root: Area = SVGBackend::with_string(&mut svg, (720, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
        let range_x = span(xs, 0.0);
        let range_y = y_range.unwrap_or_else(|| {
            let r = span(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)), 0.05);
            (r.0.min(0.0), r.1)
        });
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(range_x.0..range_x.1, range_y.0..range_y.1)
            .map_err(failed)?;
        // Steps and epochs are whole: whole-number ticks only, never "2.5".
        let whole = series
            .iter()
            .flat_map(|s| s.1.iter())
            .all(|p| p.0.fract() == 0.0);
        let ticks = if whole {
            ((range_x.1 - range_x.0).floor() as usize + 1).clamp(2, 10)
        } else {
            10
        };
        let label_x = |x: &f64| match whole {
            true if x.fract().abs() > 1e-9 => String::new(),
            true => format!("{x:.0}"),
            false => format!("{x}"),
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_labels(ticks)
            .x_label_formatter(&label_x)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(failed)?;
        for (x, label) in marks {
            let grey = RGBColor(0x99, 0x99, 0x99);
            // Right of the line, or left of it in the right half (so it stays inside).
            let right_half = *x > (range_x.0 + range_x.1) / 2.0;
            let anchor = if right_half { HPos::Right } else { HPos::Left };
            chart
                .draw_series(LineSeries::new(
                    [(*x, range_y.0), (*x, range_y.1)],
                    grey.stroke_width(1),
                ))
                .map_err(failed)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*x, range_y.1),
                    ("sans-serif", 11)
                        .into_font()
                        .color(&grey)
                        .pos(Pos::new(anchor, VPos::Top)),
                )))
                .map_err(failed)?;
        }
        for (i, (name, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(failed)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            // A dot on each point where they are few: a one-epoch run still shows its score.
            if points.len() <= 60 {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(failed)?;
            }
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(failed)?;
        }
        frame = Frame::new(
            chart.plotting_area().get_pixel_range(),
            range_x,
            range_y,
            false,
        );
        root.present().map_err(failed)?;
    }
    Ok(Chart::new(svg, frame))
}

/// Per-class F1 against the class's training count (log x): one labelled dot per class.
pub fn classes(points: &[(String, f64, f64)]) -> Result<Chart, String> {
    let mut svg = String::new();
    let frame;
    {
        let root: Area = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let (lo, hi) = span(points.iter().map(|p| p.1.max(1.0)), 0.0);
        let range_x = (lo / 1.5, hi * 1.5);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Per-class dev F1 against the class's training records",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d((range_x.0..range_x.1).log_scale(), -0.02f64..1.05f64)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("training records of the class (log scale)")
            .y_desc("dev F1")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(failed)?;
        let color = PALETTE[0];
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(_, n, f1)| Circle::new((n.max(1.0), *f1), 4, color.filled())),
            )
            .map_err(failed)?;
        chart
            .draw_series(points.iter().map(|(name, n, f1)| {
                Text::new(
                    name.clone(),
                    (n.max(1.0) * 1.08, *f1),
                    ("sans-serif", 10).into_font().color(&BLACK.mix(0.75)),
                )
            }))
            .map_err(failed)?;
        frame = Frame::new(
            chart.plotting_area().get_pixel_range(),
            range_x,
            (-0.02, 1.05),
            true,
        );
        root.present().map_err(failed)?;
    }
    Ok(Chart::new(svg, frame))
}

/// The confusion matrix as a row-normalised heat map (rows: truth, columns: prediction), one
/// cell per class pair, darker for a larger share of the row.
pub fn confusion(labels: &[String], counts: &[Vec<u64>]) -> Result<Chart, String> {
    let k = labels.len();
    let cell = (640 / k.max(1)).clamp(8, 40) as u32;
    // Rows carry "n name", columns the number n alone (names would collide at small cells).
    let label_area = 40 + 12 * labels.iter().map(|l| l.chars().count()).max().unwrap_or(4) as u32;
    let side = cell * k as u32;
    let mut svg = String::new();
    let frame;
    {
        let root: Area = SVGBackend::with_string(&mut svg, (side + label_area + 30, side + 80))
            .into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Dev confusion matrix, each row normalised (rows: truth, columns: predicted)",
                ("sans-serif", 14),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0f64..k as f64, k as f64..0f64)
            .map_err(failed)?;
        let index = |v: &f64| -> Option<usize> {
            let i = v.floor();
            ((v - i - 0.5).abs() < 1e-6 && (i as usize) < k).then_some(i as usize)
        };
        let column = |v: &f64| index(v).map_or(String::new(), |i| format!("{}", i + 1));
        let row = |v: &f64| index(v).map_or(String::new(), |i| format!("{} {}", i + 1, labels[i]));
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(2 * k + 1)
            .y_labels(2 * k + 1)
            .x_label_formatter(&column)
            .y_label_formatter(&row)
            .x_label_style(("sans-serif", 11).into_font())
            .y_label_style(("sans-serif", 11).into_font())
            .draw()
            .map_err(failed)?;
        let blue = PALETTE[0];
        chart
            .draw_series(counts.iter().enumerate().flat_map(|(t, row)| {
                let total: u64 = row.iter().sum();
                row.iter().enumerate().map(move |(p, &c)| {
                    let share = if total == 0 {
                        0.0
                    } else {
                        c as f64 / total as f64
                    };
                    Rectangle::new(
                        [(p as f64, t as f64), (p as f64 + 1.0, t as f64 + 1.0)],
                        blue.mix(0.05 + 0.95 * share).filled(),
                    )
                })
            }))
            .map_err(failed)?;
        let pixels = chart.plotting_area().get_pixel_range();
        frame = Frame::new(pixels, (0.0, k as f64), (k as f64, 0.0), false);
        root.present().map_err(failed)?;
    }
    Ok(Chart::new(svg, frame))
}

/// Grouped bars: one group per `groups` entry, one bar per `members` entry (coloured, with a
/// legend); `values[g][m]` is (mean, standard deviation), drawn as a bar and, when the deviation
/// is not zero, an error bar of ± one deviation (None: that cell is missing).
pub fn grouped_bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    members: &[String],
    values: &[Vec<Option<(f64, f64)>>],
) -> Result<Chart, String> {
    let mut svg = String::new();
    let frame;
    {
        let root: Area = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let g = groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..g, 0f64..1.05f64)
            .map_err(failed)?;
        let group_name = |v: &f64| -> String {
            let i = v.floor();
            if (v - i - 0.5).abs() < 1e-6 && (i as usize) < groups.len() {
                groups[i as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * groups.len() + 1)
            .x_label_formatter(&group_name)
            .y_desc(y_label)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(failed)?;
        let width = 0.8 / members.len().max(1) as f64;
        for (m, member) in members.iter().enumerate() {
            let color = PALETTE[m % PALETTE.len()];
            let cell = |gi: usize| -> Option<(f64, f64, f64)> {
                let (mean, std) = values.get(gi)?.get(m).copied().flatten()?;
                Some((gi as f64 + 0.1 + m as f64 * width, mean, std))
            };
            let bars = (0..values.len()).filter_map(|gi| {
                let (x0, mean, _) = cell(gi)?;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width, mean)],
                    color.filled(),
                ))
            });
            chart
                .draw_series(bars)
                .map_err(failed)?
                .label(member.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            let spreads = (0..values.len()).filter_map(|gi| {
                let (x0, mean, std) = cell(gi).filter(|c| c.2 > 0.0)?;
                Some(ErrorBar::new_vertical(
                    x0 + width / 2.0,
                    mean - std,
                    mean,
                    mean + std,
                    BLACK.stroke_width(1),
                    6,
                ))
            });
            chart.draw_series(spreads).map_err(failed)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(failed)?;
        frame = Frame::new(
            chart.plotting_area().get_pixel_range(),
            (0.0, g),
            (0.0, 1.05),
            false,
        );
        root.present().map_err(failed)?;
    }
    Ok(Chart::new(svg, frame))
}
