//! PNG pictures of a training run — what the Keras tutorial shows with
//! matplotlib: the accuracy and loss curves, the confusion matrix, and grids of
//! faces with their predictions.
//!
//! `plotters` draws into an in-memory RGB buffer. Its text comes from DejaVu
//! Sans embedded in the binary (`assets/DejaVuSans.ttf`, Bitstream Vera
//! licence, see `assets/DejaVuSans-LICENSE.txt`), registered in plotters'
//! `ab_glyph` font table, so pictures render on a machine with no fonts. PNGs
//! are encoded with `image` and written with [`write_atomic`].

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use image::codecs::png::PngEncoder;
use image::{GrayImage, ImageEncoder, imageops};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::element::BitMapElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform, register_font};

use crate::fer::files::write_atomic;

/// DejaVu Sans, embedded once for the plots and the annotated photos.
pub(crate) static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
/// The family name plotters asks for by default; the embedded font answers it.
const FONT: &str = "sans-serif";

/// Side of a face in pixels, and how much faces are enlarged when drawn.
const FACE_SIDE: u32 = crate::fer::data::SIDE as u32;
const FACE_PIXELS: usize = (FACE_SIDE * FACE_SIDE) as usize;
const FACE_SCALE: u32 = 3;
/// Largest picture side drawn, to keep memory bounded on absurd inputs.
const MAX_SIDE: u32 = 16_384;
/// Size of the history picture (two charts side by side).
const HISTORY_SIZE: (u32, u32) = (1400, 560);
/// Height of the band between a chart's title and its plotting area that
/// holds the legend: outside the data, so the legend never hides a point.
const LEGEND_BAND: u32 = 34;

const TEXT: RGBColor = RGBColor(20, 20, 20);
const GRID: RGBColor = RGBColor(228, 228, 228);
const NOTE: RGBColor = RGBColor(150, 150, 150);
const TRAIN: RGBColor = RGBColor(31, 119, 180); // matplotlib blue
const VAL: RGBColor = RGBColor(255, 127, 14); // matplotlib orange
const RIGHT: RGBColor = RGBColor(0, 128, 0);
const WRONG: RGBColor = RGBColor(210, 0, 0);

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// One epoch of training history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
}

/// Training vs validation accuracy (left chart) and loss (right chart) per
/// epoch, each with its legend above the plotting area.
///
/// Non-finite values (a diverged run) leave a gap in their curve rather than
/// being refused, so the rest of the run still shows.
pub fn plot_history(path: &Path, points: &[EpochPoint]) -> Result<()> {
    if points.is_empty() {
        bail!(
            "cannot plot `{}`: the training history is empty (no epoch finished)",
            path.display()
        );
    }
    let mut points = points.to_vec();
    points.sort_by_key(|p| p.epoch);
    let pair = |train: fn(&EpochPoint) -> f64, val: fn(&EpochPoint) -> f64| {
        let series = |f: fn(&EpochPoint) -> f64| -> Vec<(f64, f64)> {
            points.iter().map(|p| (p.epoch as f64, f(p))).collect()
        };
        [
            Curve::new("training", series(train), TRAIN),
            Curve::new("validation", series(val), VAL),
        ]
    };
    let accuracy = pair(|p| p.train_acc, |p| p.val_acc);
    let loss = pair(|p| p.train_loss, |p| p.val_loss);
    render(path, HISTORY_SIZE, |root| {
        let (left, right) = root.split_horizontally(HISTORY_SIZE.0 / 2);
        draw_curves(
            &left,
            "Training and validation accuracy",
            "accuracy",
            &accuracy,
        )?;
        draw_curves(&right, "Training and validation loss", "loss", &loss)
    })
}

/// One named, coloured line of a chart; non-finite values leave gaps.
struct Curve {
    label: &'static str,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

impl Curve {
    fn new(label: &'static str, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Curve {
            label,
            points,
            color,
        }
    }
}

/// One chart: title, legend band, then axes with the curves.
fn draw_curves(area: &Area, title: &str, y_name: &str, curves: &[Curve]) -> Result<()> {
    let (legend, plot) = chart_bands(area, title)?;
    draw_legend(&legend, curves)?;
    let (x_range, y_range) = curve_ranges(curves);
    let mut chart = ChartBuilder::on(&plot)
        .margin_right(14)
        .x_label_area_size(58)
        .y_label_area_size(84)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_name)
        .axis_desc_style(text_style(18.0))
        .label_style(text_style(15.0))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(8)
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .draw()?;
    for curve in curves {
        draw_curve(&mut chart, curve)?;
    }
    if !curves
        .iter()
        .flat_map(|c| &c.points)
        .any(|p| p.1.is_finite())
    {
        let area = chart.plotting_area().strip_coord_spec();
        let (w, h) = area.dim_in_pixel();
        let style = text_style(18.0).color(&NOTE).pos(centred());
        area.draw_text(
            "no finite values to plot",
            &style,
            (w as i32 / 2, h as i32 / 2),
        )?;
    }
    Ok(())
}

type CurveChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<TickedAxis, RangedCoordf64>>;

/// A curve as lines with a marker per epoch (markers only while they do not
/// crowd). A non-finite value breaks the curve: no line is drawn across it.
fn draw_curve(chart: &mut CurveChart, curve: &Curve) -> Result<()> {
    let line = curve.color.stroke_width(2);
    let dot = |&p: &(f64, f64)| Circle::new(p, 4, curve.color.filled());
    for run in curve.points.split(|(_, y)| !y.is_finite()) {
        chart.draw_series(LineSeries::new(run.iter().copied(), line))?;
        if curve.points.len() <= 60 {
            chart.draw_series(run.iter().map(dot))?;
        }
    }
    Ok(())
}

/// A chart's area below its title, split into the legend band and the rest.
fn chart_bands<'a>(area: &Area<'a>, title: &str) -> Result<(Area<'a>, Area<'a>)> {
    let below_title = area.margin(10, 6, 8, 8).titled(title, text_style(22.0))?;
    Ok(below_title.split_vertically(LEGEND_BAND))
}

/// The legend as one centred row: a line sample with a marker, then the label.
fn draw_legend(band: &Area, curves: &[Curve]) -> Result<()> {
    const SAMPLE: i32 = 30;
    const GAP: i32 = 28;
    let style = text_style(16.0).pos(Pos::new(HPos::Left, VPos::Center));
    let widths: Vec<i32> = curves
        .iter()
        .map(|c| SAMPLE + 8 + text_width(c.label, 16.0) as i32)
        .collect();
    let total = widths.iter().sum::<i32>() + GAP * (curves.len() as i32 - 1);
    let (w, h) = band.dim_in_pixel();
    let (mut x, y) = ((w as i32 - total) / 2, h as i32 / 2);
    for (curve, width) in curves.iter().zip(widths) {
        let line = vec![(x, y), (x + SAMPLE, y)];
        band.draw(&PathElement::new(line, curve.color.stroke_width(3)))?;
        band.draw(&Circle::new((x + SAMPLE / 2, y), 4, curve.color.filled()))?;
        band.draw_text(curve.label, &style, (x + SAMPLE + 8, y))?;
        x += width + GAP;
    }
    Ok(())
}

/// The axes' ranges: epochs with integer ticks, values padded so markers do
/// not sit on the frame. Without any finite value the y axis is 0..1.
fn curve_ranges(curves: &[Curve]) -> (TickedAxis, Range<f64>) {
    let epochs = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0));
    let (first, last) = min_max(epochs).unwrap_or((0.0, 0.0));
    let pad = if last > first {
        (last - first) * 0.03
    } else {
        1.0
    };
    let ticks = epoch_ticks(first as usize, last as usize);
    let x = TickedAxis::new(first - pad..last + pad, ticks);
    let values = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (lo, hi) = min_max(values.filter(|v| v.is_finite()))
        .filter(|(lo, hi)| (hi - lo).is_finite())
        .unwrap_or((0.0, 1.0));
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        lo.abs() * 0.1 + 0.05
    };
    (x, lo - pad..hi + pad)
}

/// A linear axis with its ticks (grid lines and labels) exactly at the given
/// values: epoch numbers, or the centres of the confusion matrix's cells.
/// (plotters' own `with_key_points` drops the label formatting of `f64` axes.)
struct TickedAxis {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl TickedAxis {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
        TickedAxis { range, ticks }
    }
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.range.clone()).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only "bold" ticks: no minor grid lines between them.
        match hint.weight().allow_light_points() {
            true => Vec::new(),
            false => self.ticks.clone(),
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Round epoch numbers from `first` to `last` for the x axis: steps of 1, 2
/// or 5 times a power of ten, at most about ten ticks, none outside the run.
fn epoch_ticks(first: usize, last: usize) -> Vec<f64> {
    let span = (last - first) as f64;
    let step = [1.0, 2.0, 5.0]
        .iter()
        .flat_map(|m| (0..20).map(move |e| m * 10f64.powi(e)))
        .filter(|&s| s * 10.0 >= span)
        .fold(f64::INFINITY, f64::min);
    let start = (first as f64 / step).ceil() as u64;
    (start..)
        .map(|k| k as f64 * step)
        .take_while(|&t| t <= last as f64)
        .collect()
}

/// Confusion matrix as an annotated heat map: rows = true class, columns =
/// predicted; each cell shows its count and its share of the true class; class
/// names on both axes; a title with the accuracy; a colour bar.
///
/// Cells are coloured by their share of the row (the recall, on the diagonal),
/// so that rare classes such as `disgust` stay readable beside common ones.
pub fn plot_confusion(path: &Path, confusion: &[Vec<u64>], class_names: &[String]) -> Result<()> {
    check_confusion(path, confusion, class_names)?;
    register_embedded_font()?;
    let title = confusion_title(confusion);
    let layout = HeatLayout::new(class_names, &title);
    render(path, layout.size, |root| {
        // Matrix and colour bar side by side, centred under a wider title.
        let spare = layout.size.0 - layout.content_w;
        let below_title = root
            .margin(12, 0, spare / 2, spare - spare / 2)
            .titled(&title, text_style(22.0))?;
        let (matrix, bar) = below_title.split_horizontally(layout.content_w - HeatLayout::BAR);
        draw_heat_map(&matrix, &layout, confusion, class_names)?;
        draw_colour_bar(&bar, &layout)
    })
}

/// Refuse a matrix that is not square with one row per class name.
fn check_confusion(path: &Path, confusion: &[Vec<u64>], class_names: &[String]) -> Result<()> {
    let name = path.display();
    let n = class_names.len();
    if n == 0 {
        bail!("cannot plot `{name}`: no class names given");
    }
    if n > 200 {
        bail!("cannot plot `{name}`: {n} classes are too many for one confusion-matrix picture");
    }
    if confusion.len() != n {
        bail!(
            "cannot plot `{name}`: the confusion matrix has {} rows but there are {n} class names",
            confusion.len()
        );
    }
    if let Some((i, row)) = confusion.iter().enumerate().find(|(_, r)| r.len() != n) {
        bail!(
            "cannot plot `{name}`: row {i} (`{}`) of the confusion matrix has {} columns, \
             expected {n}",
            class_names[i],
            row.len()
        );
    }
    Ok(())
}

fn confusion_title(confusion: &[Vec<u64>]) -> String {
    let total: u128 = confusion.iter().flatten().map(|&c| c as u128).sum();
    let correct: u128 = (0..confusion.len()).map(|i| confusion[i][i] as u128).sum();
    if total == 0 {
        return "Confusion matrix (no samples)".to_string();
    }
    format!(
        "Confusion matrix — accuracy {:.1}% ({} of {} correct)",
        100.0 * correct as f64 / total as f64,
        group_digits(correct),
        group_digits(total)
    )
}

/// Sizes of the confusion picture, in pixels, worked out from the class names.
struct HeatLayout {
    cell: u32,
    label_size: f64,
    /// Column names turned to read upwards when they are wider than a cell.
    rotate_columns: bool,
    row_labels: u32,
    column_labels: u32,
    /// Width of the matrix with its labels and the colour bar.
    content_w: u32,
    size: (u32, u32),
}

impl HeatLayout {
    /// Width of the colour bar's strip, with its ticks and axis name.
    const BAR: u32 = 130;
    /// Room around the matrix: chart margin, axis names, title.
    const MARGIN: u32 = 12;
    const AXIS_NAME: u32 = 40;
    const TITLE: u32 = 60;

    fn new(class_names: &[String], title: &str) -> Self {
        let n = class_names.len() as u32;
        let cell = (600 / n).clamp(24, 110);
        let label_size = if cell >= 60 { 17.0 } else { 13.0 };
        let widest = class_names
            .iter()
            .map(|c| text_width(c, label_size))
            .fold(0.0, f64::max)
            .ceil() as u32;
        let rotate_columns = widest + 8 > cell;
        let row_labels = widest + 14 + Self::AXIS_NAME;
        let column_labels = if rotate_columns { widest } else { 20 } + 14 + Self::AXIS_NAME;
        let content_w = row_labels + n * cell + 2 * Self::MARGIN + Self::BAR;
        let title_w = text_width(title, 22.0) as u32 + 40;
        let w = content_w.max(title_w).max(300);
        let h = Self::TITLE + n * cell + column_labels + 2 * Self::MARGIN;
        HeatLayout {
            cell,
            label_size,
            rotate_columns,
            row_labels,
            column_labels,
            content_w,
            size: (w, h),
        }
    }
}

/// The matrix as a chart on [0, n] x [0, n]; row 0 (the first true class) at
/// the top, so row i spans y in [n - i - 1, n - i].
fn draw_heat_map(
    area: &Area,
    layout: &HeatLayout,
    confusion: &[Vec<u64>],
    class_names: &[String],
) -> Result<()> {
    let n = class_names.len();
    let centres: Vec<f64> = (0..n).map(|k| k as f64 + 0.5).collect();
    let mut chart = ChartBuilder::on(area)
        .margin(HeatLayout::MARGIN)
        .x_label_area_size(layout.column_labels)
        .y_label_area_size(layout.row_labels)
        .build_cartesian_2d(
            TickedAxis::new(0.0..n as f64, centres.clone()),
            TickedAxis::new(0.0..n as f64, centres),
        )?;
    draw_class_axes(&mut chart, layout, class_names)?;
    for (i, row) in confusion.iter().enumerate() {
        draw_heat_row(&mut chart, layout, (n - i - 1) as f64, row)?;
    }
    let frame = Rectangle::new([(0.0, 0.0), (n as f64, n as f64)], TEXT.stroke_width(1));
    chart.draw_series([frame])?;
    Ok(())
}

type HeatChart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<TickedAxis, TickedAxis>>;

/// Class names at the cells' centres, the axes' names.
fn draw_class_axes(chart: &mut HeatChart, layout: &HeatLayout, names: &[String]) -> Result<()> {
    let n = names.len() as f64;
    let name_of = |k: f64| names.get(k.max(0.0) as usize).cloned().unwrap_or_default();
    let column_name = |x: &f64| match layout.rotate_columns {
        true => String::new(), // drawn below
        false => name_of(*x),
    };
    let row_name = |y: &f64| name_of(n - y);
    let labels = text_style(layout.label_size);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("predicted class")
        .y_desc("true class")
        .axis_desc_style(text_style(18.0))
        .label_style(labels.clone())
        .x_label_formatter(&column_name)
        .y_label_formatter(&row_name)
        .x_labels(names.len())
        .y_labels(names.len())
        .draw()?;
    if layout.rotate_columns {
        // Reading upwards and ending just below the axis (plotters would
        // centre a rotated label on its tick, half of it inside the matrix).
        let end_at_axis = Pos::new(HPos::Right, VPos::Center);
        let style = labels.transform(FontTransform::Rotate270).pos(end_at_axis);
        for (j, name) in names.iter().enumerate() {
            let label = Text::new(name.clone(), (0, 8), style.clone());
            chart.draw_series([EmptyElement::at((j as f64 + 0.5, 0.0)) + label])?;
        }
    }
    Ok(())
}

/// One true class's row of cells, coloured by their share of the row, at
/// height `y`; white text on dark cells.
fn draw_heat_row(chart: &mut HeatChart, layout: &HeatLayout, y: f64, row: &[u64]) -> Result<()> {
    let total: u128 = row.iter().map(|&c| c as u128).sum();
    for (j, &count) in row.iter().enumerate() {
        let share = (total > 0).then(|| count as f64 / total as f64);
        let x = j as f64;
        let fill = blues(share.unwrap_or(0.0)).filled();
        chart.draw_series([Rectangle::new([(x, y), (x + 1.0, y + 1.0)], fill)])?;
        let ink = if share.unwrap_or(0.0) > 0.5 {
            &WHITE
        } else {
            &TEXT
        };
        for (text, size, dy) in cell_lines(count, share, layout.cell) {
            let style = text_style(size).color(ink).pos(centred());
            let text = Text::new(text, (0, dy), style);
            chart.draw_series([EmptyElement::at((x + 0.5, y + 0.5)) + text])?;
        }
    }
    Ok(())
}

/// A cell's lines as (text, size, vertical offset from the centre): its count
/// (shrunk, or abbreviated as "1.2k", to fit) and, in cells large enough, its
/// share of the row below it.
fn cell_lines(count: u64, share: Option<f64>, cell: u32) -> Vec<(String, f64, i32)> {
    let cell = cell as f64;
    let mut text = group_digits(count as u128);
    let mut size = (cell * 0.25).clamp(9.0, 24.0);
    while size > 8.0 && text_width(&text, size) > cell - 6.0 {
        size -= 1.0;
    }
    if text_width(&text, size) > cell - 4.0 {
        text = compact(count);
    }
    match share {
        Some(share) if cell >= 56.0 => {
            let below = format!("{:.0}%", share * 100.0);
            let offset = (cell * 0.15) as i32;
            vec![
                (text, size, -offset),
                (below, (size * 0.62).max(10.0), offset),
            ]
        }
        _ => vec![(text, size, 0)],
    }
}

/// The colour scale: share of the true class, 0 % at the bottom, its rows
/// level with the matrix's.
fn draw_colour_bar(area: &Area, layout: &HeatLayout) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .margin(HeatLayout::MARGIN)
        .margin_right(HeatLayout::BAR - HeatLayout::MARGIN - 22 - 60)
        .x_label_area_size(layout.column_labels)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..100.0)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .label_style(text_style(14.0))
        .y_labels(if layout.cell * 5 >= 200 { 5 } else { 3 })
        .y_label_formatter(&|v| format!("{v:.0}%"))
        .draw()?;
    let band = |k: u32| {
        let (lo, hi) = (k as f64 / 2.0, (k + 1) as f64 / 2.0);
        Rectangle::new([(0.0, lo), (1.0, hi)], blues(lo / 100.0).filled())
    };
    chart.draw_series((0..200).map(band))?;
    chart.draw_series([Rectangle::new(
        [(0.0, 0.0), (1.0, 100.0)],
        TEXT.stroke_width(1),
    )])?;
    Ok(())
}

/// matplotlib's "Blues" colour map, `t` in [0, 1].
fn blues(t: f64) -> RGBColor {
    const STOPS: [[u8; 3]; 9] = [
        [247, 251, 255],
        [222, 235, 247],
        [198, 219, 239],
        [158, 202, 225],
        [107, 174, 214],
        [66, 146, 198],
        [33, 113, 181],
        [8, 81, 156],
        [8, 48, 107],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = t * (STOPS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |c: usize| (a[c] as f64 + (b[c] as f64 - a[c] as f64) * f).round() as u8;
    RGBColor(mix(0), mix(1), mix(2))
}

/// `1234` -> `1.2k`, `5000000` -> `5.0M`: for counts too wide for their cell.
fn compact(v: u64) -> String {
    const UNITS: [(f64, &str); 6] = [
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ];
    let x = v as f64;
    for (scale, unit) in UNITS {
        if x >= scale {
            let short = x / scale;
            return if short < 10.0 {
                format!("{:.1}{unit}", (short * 10.0).floor() / 10.0)
            } else {
                format!("{:.0}{unit}", short.floor())
            };
        }
    }
    v.to_string()
}

/// `12345` -> `12,345`.
fn group_digits(v: u128) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A grid (e.g. 5x5) of 48x48 grayscale faces (u8, row-major), each titled
/// (e.g. "pred: sad / true: anger"), green when right and red when wrong.
///
/// `titles` and `correct` either have one entry per face or are empty (no
/// titles; black titles). Faces are enlarged 3x (nearest neighbour); long
/// titles wrap onto up to three lines.
pub fn plot_face_grid(
    path: &Path,
    faces: &[&[u8]],
    titles: &[String],
    correct: &[bool],
    columns: usize,
) -> Result<()> {
    let name = path.display();
    if columns == 0 {
        bail!("cannot plot `{name}`: a face grid needs at least one column");
    }
    if !titles.is_empty() && titles.len() != faces.len() {
        bail!(
            "cannot plot `{name}`: {} faces but {} titles",
            faces.len(),
            titles.len()
        );
    }
    if !correct.is_empty() && correct.len() != faces.len() {
        bail!(
            "cannot plot `{name}`: {} faces but {} right/wrong flags",
            faces.len(),
            correct.len()
        );
    }
    let colors: Vec<RGBColor> = match correct {
        [] => vec![TEXT; faces.len()],
        _ => correct
            .iter()
            .map(|&ok| if ok { RIGHT } else { WRONG })
            .collect(),
    };
    draw_faces(path, faces, titles, &colors, columns, 14.0)
}

/// One sample face per class, titled with the class name.
pub fn plot_class_samples(path: &Path, faces: &[&[u8]], class_names: &[String]) -> Result<()> {
    if faces.len() != class_names.len() {
        bail!(
            "cannot plot `{}`: {} faces but {} class names (one face per class is needed)",
            path.display(),
            faces.len(),
            class_names.len()
        );
    }
    let columns = faces.len().clamp(1, 8);
    let colors = vec![TEXT; faces.len()];
    draw_faces(path, faces, class_names, &colors, columns, 17.0)
}

/// Where the tiles of a face grid go, in pixels.
struct FaceLayout {
    columns: u32,
    tile: (u32, u32),
    /// Height of the titles' area above each face.
    title_h: u32,
    line_h: u32,
    size: (u32, u32),
}

impl FaceLayout {
    const SIDE: u32 = FACE_SIDE * FACE_SCALE;
    const MARGIN: u32 = 12;

    fn new(faces: usize, columns: usize, lines: usize, size: f64) -> Self {
        let columns = columns.min(faces) as u32;
        let rows = faces.div_ceil(columns as usize) as u32;
        let line_h = (size * 1.3).ceil() as u32;
        let title_h = if lines == 0 {
            4
        } else {
            lines as u32 * line_h + 6
        };
        let tile = (Self::SIDE + 36, title_h + Self::SIDE + 14);
        let size = (
            columns
                .saturating_mul(tile.0)
                .saturating_add(2 * Self::MARGIN),
            rows.saturating_mul(tile.1).saturating_add(2 * Self::MARGIN),
        );
        FaceLayout {
            columns,
            tile,
            title_h,
            line_h,
            size,
        }
    }

    /// Top-left corner of tile `k`.
    fn tile_at(&self, k: usize) -> (i32, i32) {
        let (col, row) = (k as u32 % self.columns, k as u32 / self.columns);
        (
            (Self::MARGIN + col * self.tile.0) as i32,
            (Self::MARGIN + row * self.tile.1) as i32,
        )
    }
}

fn draw_faces(
    path: &Path,
    faces: &[&[u8]],
    titles: &[String],
    colors: &[RGBColor],
    columns: usize,
    size: f64,
) -> Result<()> {
    let name = path.display();
    if faces.is_empty() {
        bail!("cannot plot `{name}`: there are no faces to show");
    }
    if let Some((i, f)) = faces
        .iter()
        .enumerate()
        .find(|(_, f)| f.len() != FACE_PIXELS)
    {
        bail!(
            "cannot plot `{name}`: face {i} has {} pixels, expected {FACE_PIXELS} (48x48)",
            f.len()
        );
    }
    register_embedded_font()?;
    let wrapped = wrap_titles(titles, size, (FaceLayout::SIDE + 30) as f64);
    let lines = wrapped.iter().map(Vec::len).max().unwrap_or(0);
    let layout = FaceLayout::new(faces.len(), columns, lines, size);
    let (w, h) = layout.size;
    if w > MAX_SIDE || h > MAX_SIDE {
        bail!(
            "cannot plot `{name}`: {} faces in {columns} columns make a {w}x{h} picture, \
             larger than {MAX_SIDE} pixels a side; show fewer faces or use more columns",
            faces.len()
        );
    }
    render(path, layout.size, |root| {
        for (k, face) in faces.iter().enumerate() {
            let lines = wrapped.get(k).map(Vec::as_slice).unwrap_or(&[]);
            draw_tile(root, &layout, k, face, lines, (size, &colors[k]))?;
        }
        Ok(())
    })
}

/// One face, enlarged, with its title lines just above it.
fn draw_tile(
    root: &Area,
    layout: &FaceLayout,
    k: usize,
    face: &[u8],
    lines: &[String],
    (size, color): (f64, &RGBColor),
) -> Result<()> {
    let (x0, y0) = layout.tile_at(k);
    let side = FaceLayout::SIDE;
    let face_at = (
        x0 + ((layout.tile.0 - side) / 2) as i32,
        y0 + layout.title_h as i32,
    );
    root.draw(&enlarged_face(face, face_at)?)?;
    let style = text_style(size).color(color).pos(centred());
    let first_row = layout.title_h as i32 - 2 - (lines.len() as u32 * layout.line_h) as i32;
    for (l, line) in lines.iter().enumerate() {
        let y = y0 + first_row + ((l as u32 * layout.line_h) + layout.line_h / 2) as i32;
        root.draw_text(line, &style, (x0 + layout.tile.0 as i32 / 2, y))?;
    }
    Ok(())
}

/// A 48x48 grayscale face enlarged with nearest-neighbour sampling, as an RGB
/// bitmap placed at `at`.
fn enlarged_face(face: &[u8], at: (i32, i32)) -> Result<BitMapElement<'static, (i32, i32)>> {
    let gray = GrayImage::from_raw(FACE_SIDE, FACE_SIDE, face.to_vec())
        .ok_or_else(|| anyhow!("a face must have {FACE_PIXELS} pixels"))?;
    let side = FaceLayout::SIDE;
    let big = imageops::resize(&gray, side, side, imageops::FilterType::Nearest);
    let rgb: Vec<u8> = big.into_raw().into_iter().flat_map(|v| [v, v, v]).collect();
    BitMapElement::with_owned_buffer(at, (side, side), rgb)
        .ok_or_else(|| anyhow!("the enlarged face's buffer has the wrong size"))
}

/// Titles wrapped to `max_w` pixels. Titles like "pred: sad / true: anger"
/// that do not fit on one line break at the " / " — in every tile alike, so
/// the grid reads evenly.
fn wrap_titles(titles: &[String], size: f64, max_w: f64) -> Vec<Vec<String>> {
    let break_at_slash = titles.iter().any(|t| text_width(t, size) > max_w);
    titles
        .iter()
        .map(|t| {
            let parts: Vec<&str> = if break_at_slash {
                t.split(" / ").collect()
            } else {
                vec![t.as_str()]
            };
            wrap_text(&parts, size, max_w, 3)
        })
        .collect()
}

/// Greedy word wrap of `parts` (each starts a new line) to `max_width` pixels,
/// at most `max_lines` lines (the last one ends in "…" when text is cut).
/// Words longer than a line are split.
fn wrap_text(parts: &[&str], size: f64, max_width: f64, max_lines: usize) -> Vec<String> {
    let fits = |s: &str| text_width(s, size) <= max_width;
    let mut lines: Vec<String> = Vec::new();
    for part in parts {
        let mut current = String::new();
        for word in part.split_whitespace() {
            let candidate = match current.is_empty() {
                true => word.to_string(),
                false => format!("{current} {word}"),
            };
            if fits(&candidate) {
                current = candidate;
                continue;
            }
            if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            // The word alone may still be too long: cut it.
            for ch in word.chars() {
                current.push(ch);
                if !fits(&current) && current.chars().count() > 1 {
                    current.pop();
                    lines.push(std::mem::replace(&mut current, ch.to_string()));
                }
            }
        }
        if !current.is_empty() {
            lines.push(current);
        }
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            while !last.is_empty() && !fits(&format!("{last}…")) {
                last.pop();
            }
            last.push('…');
        }
    }
    lines
}

// ---------------------------------------------------------------------------
// Text and pictures.

/// Put the embedded font in plotters' font table under [`FONT`], once.
fn register_embedded_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("the embedded font (assets/DejaVuSans.ttf) could not be read")
    }
}

fn centred() -> Pos {
    Pos::new(HPos::Center, VPos::Center)
}

fn text_style(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).color(&TEXT)
}

/// Width of one line of text in pixels (0 if the font is missing, which
/// [`render`] reports).
fn text_width(text: &str, size: f64) -> f64 {
    let _ = register_embedded_font();
    (FONT, size)
        .into_font()
        .box_size(text)
        .map_or(0.0, |(w, _)| w as f64)
}

/// Draw a `w`x`h` picture on white with `draw`, encode it as PNG and write it
/// to `path` atomically.
fn render(path: &Path, (w, h): (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    let name = path.display();
    register_embedded_font()?;
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        bail!("cannot plot `{name}`: a {w}x{h} picture is out of range");
    }
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(&root).with_context(|| format!("cannot draw `{name}`"))?;
        root.present()?;
    }
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| anyhow!("cannot encode `{name}` as PNG: {e}"))?;
    write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    /// Where test pictures go: `WGFER_PLOT_DIR` if set (kept, to look at),
    /// otherwise a temp dir that is removed.
    struct OutDir {
        dir: PathBuf,
        keep: bool,
    }

    impl OutDir {
        fn new(tag: &str) -> Self {
            match std::env::var_os("WGFER_PLOT_DIR") {
                Some(d) => {
                    let dir = PathBuf::from(d);
                    fs::create_dir_all(&dir).unwrap();
                    OutDir { dir, keep: true }
                }
                None => {
                    let dir = std::env::temp_dir()
                        .join(format!("wgfer-report-{tag}-{}", std::process::id()));
                    let _ = fs::remove_dir_all(&dir);
                    fs::create_dir_all(&dir).unwrap();
                    OutDir { dir, keep: false }
                }
            }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }
    }

    impl Drop for OutDir {
        fn drop(&mut self) {
            if !self.keep {
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
    }

    fn class_names() -> Vec<String> {
        ["anger", "disgust", "sad", "happiness", "surprise"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Decode a written PNG, return its size and pixels.
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let bytes = fs::read(path).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8();
        (img.width(), img.height(), img.into_raw())
    }

    /// Count pixels that are neither white nor gray: evidence of coloured ink.
    fn coloured_pixels(rgb: &[u8], want: impl Fn(u8, u8, u8) -> bool) -> usize {
        rgb.chunks_exact(3)
            .filter(|p| want(p[0], p[1], p[2]))
            .count()
    }

    /// A cartoon face: head, eyes, and a mouth that differs per `mood`.
    fn cartoon_face(mood: usize) -> Vec<u8> {
        let mut px = vec![0u8; FACE_PIXELS];
        for y in 0..48 {
            for x in 0..48 {
                let (fx, fy) = (x as f64 - 23.5, y as f64 - 24.0);
                let head = (fx / 17.0).powi(2) + (fy / 21.0).powi(2) <= 1.0;
                let mut v: u8 = if head { 170 } else { 40 + (x + y) as u8 };
                let eye = |cx: f64| (x as f64 - cx).powi(2) + (y as f64 - 18.0).powi(2) <= 6.0;
                if eye(16.0) || eye(31.0) {
                    v = 20;
                }
                let mx = x as f64 - 23.5;
                let curve = match mood % 5 {
                    0 => 34.0 + mx.abs() * 0.15,
                    1 => 34.0 + mx * 0.2,
                    2 => 36.0 - (9.0 - mx.abs()).max(0.0) * 0.3,
                    3 => 33.0 + (9.0 - mx.abs()).max(0.0) * 0.3,
                    _ => 34.0,
                };
                let mouth = if mood % 5 == 4 {
                    mx.powi(2) / 16.0 + (y as f64 - 34.0).powi(2) / 12.0 <= 1.0
                } else {
                    mx.abs() <= 9.0 && (y as f64 - curve).abs() <= 1.0
                };
                if mouth {
                    v = 30;
                }
                px[y * 48 + x] = v;
            }
        }
        px
    }

    fn history(n: usize) -> Vec<EpochPoint> {
        (1..=n)
            .map(|e| {
                let t = e as f64;
                EpochPoint {
                    epoch: e,
                    train_loss: 1.6 * (-t / 6.0).exp() + 0.35,
                    train_acc: 0.95 - 0.6 * (-t / 6.0).exp(),
                    val_loss: 1.5 * (-t / 5.0).exp() + 0.7 + 0.01 * t,
                    val_acc: 0.68 - 0.4 * (-t / 5.0).exp() + 0.01 * (t * 1.7).sin(),
                }
            })
            .collect()
    }

    #[test]
    fn history_plot_is_a_png_with_both_colours() {
        let out = OutDir::new("history");
        let path = out.path("history.png");
        plot_history(&path, &history(30)).unwrap();
        let (w, h, rgb) = decode(&path);
        assert_eq!((w, h), (1400, 560));
        let blue = coloured_pixels(&rgb, |r, g, b| r < 80 && g > 90 && b > 150);
        let orange = coloured_pixels(&rgb, |r, g, b| r > 230 && (100..160).contains(&g) && b < 60);
        assert!(blue > 500 && orange > 500, "blue {blue}, orange {orange}");
        // Text rendered: plenty of dark pixels outside the curves.
        let dark = coloured_pixels(&rgb, |r, g, b| r < 60 && g < 60 && b < 60);
        assert!(dark > 2000, "dark {dark}");
    }

    #[test]
    fn legend_sits_between_title_and_plot() {
        let (w, h) = HISTORY_SIZE;
        let mut buf = vec![255u8; (w * h * 3) as usize];
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let (left, _) = root.split_horizontally(w / 2);
        let (legend, plot) = chart_bands(&left, "title").unwrap();
        let (legend_x, legend_y) = legend.get_pixel_range();
        let (_, plot_y) = plot.get_pixel_range();
        assert!(legend_y.end <= plot_y.start, "{legend_y:?} vs {plot_y:?}");
        assert!(legend_y.start > 20, "the title is above: {legend_y:?}");
        drop(root);

        // The picture draws both legend entries in that band, and nothing
        // else coloured (the curves stay below it).
        let out = OutDir::new("legend");
        let path = out.path("history.png");
        plot_history(&path, &history(30)).unwrap();
        let (_, _, rgb) = decode(&path);
        let in_band = |want: &dyn Fn(u8, u8, u8) -> bool| {
            let mut n = 0;
            for y in legend_y.clone() {
                for x in legend_x.clone() {
                    let p = ((y as u32 * w + x as u32) * 3) as usize;
                    n += want(rgb[p], rgb[p + 1], rgb[p + 2]) as usize;
                }
            }
            n
        };
        let blue = in_band(&|r, g, b| r < 80 && g > 90 && b > 150);
        let orange = in_band(&|r, g, b| r > 230 && (100..160).contains(&g) && b < 60);
        // A 30-pixel, 3-pixel-wide line and a marker each: about 100-200 pixels.
        assert!((60..400).contains(&blue), "blue {blue}");
        assert!((60..400).contains(&orange), "orange {orange}");
    }

    #[test]
    fn history_edge_cases() {
        let out = OutDir::new("history-edge");
        // One epoch, constant values.
        let one = vec![EpochPoint {
            epoch: 0,
            train_loss: 1.0,
            train_acc: 0.5,
            val_loss: 1.0,
            val_acc: 0.5,
        }];
        plot_history(&out.path("history-one.png"), &one).unwrap();
        assert_eq!(decode(&out.path("history-one.png")).0, 1400);
        // Diverged: NaN and infinite losses are left out, not fatal.
        let mut diverged = history(8);
        diverged[5].train_loss = f64::NAN;
        diverged[6].train_loss = f64::INFINITY;
        diverged[7].val_loss = f64::NAN;
        diverged.reverse(); // out of order on purpose
        plot_history(&out.path("history-diverged.png"), &diverged).unwrap();
        // All non-finite.
        let all_nan: Vec<_> = history(3)
            .into_iter()
            .map(|p| EpochPoint {
                train_loss: f64::NAN,
                val_loss: f64::NAN,
                ..p
            })
            .collect();
        plot_history(&out.path("history-nan.png"), &all_nan).unwrap();
        // Huge epoch numbers and many points.
        let long: Vec<_> = history(400)
            .into_iter()
            .map(|p| EpochPoint {
                epoch: p.epoch + 1_000_000,
                ..p
            })
            .collect();
        plot_history(&out.path("history-long.png"), &long).unwrap();
    }

    #[test]
    fn empty_history_is_an_error() {
        let out = OutDir::new("history-empty");
        let path = out.path("h.png");
        let msg = format!("{:#}", plot_history(&path, &[]).unwrap_err());
        assert!(msg.contains("empty") && msg.contains("h.png"), "{msg}");
        assert!(!path.exists());
    }

    #[test]
    fn missing_directory_is_an_error() {
        let msg = format!(
            "{:#}",
            plot_history(Path::new("/no/such/dir/h.png"), &history(3)).unwrap_err()
        );
        assert!(msg.contains("does not exist"), "{msg}");
    }

    fn fer_confusion() -> Vec<Vec<u64>> {
        vec![
            vec![612, 9, 140, 98, 99],
            vec![31, 52, 12, 9, 7],
            vec![150, 4, 681, 133, 51],
            vec![60, 2, 77, 1584, 51],
            vec![29, 1, 40, 47, 714],
        ]
    }

    #[test]
    fn confusion_plot_is_a_png() {
        let out = OutDir::new("confusion");
        let path = out.path("confusion.png");
        plot_confusion(&path, &fer_confusion(), &class_names()).unwrap();
        let (w, h, rgb) = decode(&path);
        assert!(
            (500..1400).contains(&w) && (500..1200).contains(&h),
            "{w}x{h}"
        );
        let dark_blue = coloured_pixels(&rgb, |r, g, b| r < 40 && g < 100 && b > 90);
        assert!(dark_blue > 5000, "dark blue {dark_blue}");
    }

    /// The matrix's frame: the first row of pixels with a long run of the
    /// frame's colour gives its top and its left and right ends.
    fn matrix_frame(rgb: &[u8], w: u32, min_run: usize) -> (usize, usize, usize) {
        let w = w as usize;
        for (y, row) in rgb.chunks_exact(w * 3).enumerate() {
            let dark: Vec<usize> = (0..w)
                .filter(|&x| row[x * 3..x * 3 + 3] == [TEXT.0, TEXT.1, TEXT.2])
                .collect();
            if dark.len() >= min_run {
                return (y, dark[0], *dark.last().unwrap());
            }
        }
        panic!("no frame found");
    }

    #[test]
    fn confusion_cells_darken_with_their_share() {
        let out = OutDir::new("confusion-shades");
        let path = out.path("c-shades.png");
        let m = vec![vec![5, 10, 25, 60], vec![1; 4], vec![1; 4], vec![1; 4]];
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        plot_confusion(&path, &m, &names).unwrap();
        let (w, _, rgb) = decode(&path);
        let (top, x0, x1) = matrix_frame(&rgb, w, 300);
        let cell = (x1 - x0) as f64 / 4.0;
        // Just inside the top of the first row, clear of the cell's text.
        let y = top + (cell * 0.1) as usize;
        let brightness: Vec<u32> = (0..4)
            .map(|j| {
                let x = x0 + (cell * (j as f64 + 0.5)) as usize;
                let p = (y * w as usize + x) * 3;
                rgb[p..p + 3].iter().map(|&v| v as u32).sum()
            })
            .collect();
        assert!(brightness.windows(2).all(|b| b[0] > b[1]), "{brightness:?}");
        // And they are the colour map's colours for 5 %, 10 %, 25 % and 60 %.
        let expect = blues(0.60);
        let p = (y * w as usize + x0 + (cell * 3.5) as usize) * 3;
        assert_eq!(rgb[p..p + 3], [expect.0, expect.1, expect.2]);
    }

    #[test]
    fn confusion_cells_show_count_and_share() {
        let lines = cell_lines(1584, Some(0.891), 110);
        let texts: Vec<&str> = lines.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(texts, ["1,584", "89%"]);
        assert!(lines[0].2 < 0 && lines[1].2 > 0, "count above, share below");
        // A small cell has room for the count only, abbreviated if need be.
        let small = cell_lines(123_456_789, Some(0.5), 24);
        assert_eq!(small.len(), 1);
        assert!(small[0].0.ends_with('M'), "{small:?}");
        assert_eq!(
            cell_lines(7, None, 110).len(),
            1,
            "no share without samples"
        );
    }

    #[test]
    fn confusion_edge_cases() {
        let out = OutDir::new("confusion-edge");
        // No samples at all, and a single class.
        plot_confusion(
            &out.path("c-zero.png"),
            &vec![vec![0; 5]; 5],
            &class_names(),
        )
        .unwrap();
        plot_confusion(&out.path("c-one.png"), &[vec![7]], &["only".to_string()]).unwrap();
        // Many classes with long names: labels rotate, cells shrink.
        let n = 30;
        let names: Vec<String> = (0..n).map(|i| format!("class number {i}")).collect();
        let m: Vec<Vec<u64>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| if i == j { 1_000_000 } else { (i * j) as u64 })
                    .collect()
            })
            .collect();
        plot_confusion(&out.path("c-many.png"), &m, &names).unwrap();
        // Huge counts do not overflow.
        plot_confusion(
            &out.path("c-huge.png"),
            &[vec![u64::MAX, u64::MAX], vec![u64::MAX, 0]],
            &["a".to_string(), "b".to_string()],
        )
        .unwrap();
    }

    #[test]
    fn confusion_shape_errors() {
        let out = OutDir::new("confusion-bad");
        let p = out.path("c.png");
        let names = class_names();
        let mut m = fer_confusion();
        m.pop();
        let msg = format!("{:#}", plot_confusion(&p, &m, &names).unwrap_err());
        assert!(
            msg.contains("4 rows") && msg.contains("5 class names"),
            "{msg}"
        );
        let mut m = fer_confusion();
        m[2].push(1);
        let msg = format!("{:#}", plot_confusion(&p, &m, &names).unwrap_err());
        assert!(msg.contains("row 2 (`sad`)"), "{msg}");
        assert!(plot_confusion(&p, &[], &[]).is_err());
        assert!(!p.exists());
    }

    #[test]
    fn face_grid_is_a_png_with_red_and_green_titles() {
        let out = OutDir::new("faces");
        let names = class_names();
        let faces: Vec<Vec<u8>> = (0..25).map(cartoon_face).collect();
        let refs: Vec<&[u8]> = faces.iter().map(|f| f.as_slice()).collect();
        let truth: Vec<usize> = (0..25).map(|i| i % 5).collect();
        let pred: Vec<usize> = (0..25)
            .map(|i| if i % 3 == 0 { (i + 1) % 5 } else { i % 5 })
            .collect();
        let titles: Vec<String> = (0..25)
            .map(|i| format!("pred: {} / true: {}", names[pred[i]], names[truth[i]]))
            .collect();
        let correct: Vec<bool> = (0..25).map(|i| pred[i] == truth[i]).collect();
        let path = out.path("faces.png");
        plot_face_grid(&path, &refs, &titles, &correct, 5).unwrap();
        let (w, h, rgb) = decode(&path);
        assert!(w >= 5 * 144 && h >= 5 * 144, "{w}x{h}");
        let red = coloured_pixels(&rgb, |r, g, b| r > 150 && g < 80 && b < 80);
        let green = coloured_pixels(&rgb, |r, g, b| r < 80 && g > 100 && b < 80);
        assert!(red > 300 && green > 300, "red {red}, green {green}");

        // Untitled, uneven last row, more columns than faces.
        plot_face_grid(&out.path("faces-plain.png"), &refs[..7], &[], &[], 3).unwrap();
        plot_face_grid(
            &out.path("faces-wide.png"),
            &refs[..2],
            &titles[..2],
            &[],
            10,
        )
        .unwrap();
        let (w, _, _) = decode(&out.path("faces-wide.png"));
        assert!(w < 600, "{w}");
    }

    #[test]
    fn each_title_is_green_when_right_and_red_when_wrong() {
        let out = OutDir::new("faces-colours");
        let faces: Vec<Vec<u8>> = (0..6).map(cartoon_face).collect();
        let refs: Vec<&[u8]> = faces.iter().map(|f| f.as_slice()).collect();
        let titles: Vec<String> = (0..6)
            .map(|i| format!("pred: sad / true: face {i}"))
            .collect();
        let correct = [true, false, false, true, true, false];
        let path = out.path("faces-colours.png");
        plot_face_grid(&path, &refs, &titles, &correct, 3).unwrap();
        let (w, _, rgb) = decode(&path);
        let wrapped = wrap_titles(&titles, 14.0, (FaceLayout::SIDE + 30) as f64);
        let layout = FaceLayout::new(6, 3, wrapped[0].len(), 14.0);
        for (k, &ok) in correct.iter().enumerate() {
            let (x0, y0) = layout.tile_at(k);
            let (mut red, mut green) = (0, 0);
            for y in y0 as usize..y0 as usize + layout.title_h as usize {
                for x in x0 as usize..x0 as usize + layout.tile.0 as usize {
                    let p = (y * w as usize + x) * 3;
                    let (r, g, b) = (rgb[p], rgb[p + 1], rgb[p + 2]);
                    red += (r > 150 && g < 80 && b < 80) as usize;
                    green += (r < 80 && g > 100 && b < 80) as usize;
                }
            }
            if ok {
                assert!(green > 30 && red == 0, "face {k}: green {green}, red {red}");
            } else {
                assert!(red > 30 && green == 0, "face {k}: green {green}, red {red}");
            }
        }
    }

    #[test]
    fn face_grid_errors() {
        let out = OutDir::new("faces-bad");
        let p = out.path("f.png");
        let face = cartoon_face(0);
        let short = vec![0u8; 100];
        let titles = vec!["a".to_string()];
        let ok = [face.as_slice()];
        assert!(plot_face_grid(&p, &[], &[], &[], 5).is_err());
        assert!(plot_face_grid(&p, &ok, &titles, &[true], 0).is_err());
        let msg = format!(
            "{:#}",
            plot_face_grid(&p, &[face.as_slice(), &short], &[], &[], 2).unwrap_err()
        );
        assert!(msg.contains("face 1 has 100 pixels"), "{msg}");
        assert!(plot_face_grid(&p, &ok, &["a".into(), "b".into()], &[], 1).is_err());
        assert!(plot_face_grid(&p, &ok, &titles, &[true, false], 1).is_err());
        let many = vec![face.as_slice(); 2000];
        let msg = format!("{:#}", plot_face_grid(&p, &many, &[], &[], 1).unwrap_err());
        assert!(msg.contains("larger than"), "{msg}");
        assert!(!p.exists());
    }

    #[test]
    fn class_samples_is_a_png() {
        let out = OutDir::new("samples");
        let faces: Vec<Vec<u8>> = (0..5).map(cartoon_face).collect();
        let refs: Vec<&[u8]> = faces.iter().map(|f| f.as_slice()).collect();
        let path = out.path("samples.png");
        plot_class_samples(&path, &refs, &class_names()).unwrap();
        let (w, h, _) = decode(&path);
        assert!(w >= 5 * 144 && (144..400).contains(&h), "{w}x{h}");
        let msg = format!(
            "{:#}",
            plot_class_samples(&out.path("s2.png"), &refs[..4], &class_names()).unwrap_err()
        );
        assert!(msg.contains("4 faces but 5 class names"), "{msg}");
        assert!(plot_class_samples(&out.path("s3.png"), &[], &[]).is_err());
    }

    #[test]
    fn text_wraps_and_truncates() {
        let lines = wrap_text(&["pred: happiness / true: surprise"], 14.0, 170.0, 3);
        assert!(lines.len() >= 2, "{lines:?}");
        let split = wrap_text(&["pred: happiness", "true: sad"], 14.0, 170.0, 3);
        assert_eq!(split, vec!["pred: happiness", "true: sad"]);
        assert!(lines.iter().all(|l| text_width(l, 14.0) <= 170.0));
        let long = wrap_text(&[&"x".repeat(500)], 14.0, 100.0, 3);
        assert_eq!(long.len(), 3);
        assert!(long[2].ends_with('…'));
        assert!(wrap_text(&["   "], 14.0, 100.0, 3).is_empty());
    }

    #[test]
    fn helpers() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(1234567), "1,234,567");
        assert_eq!(compact(999), "999");
        assert_eq!(compact(1_000_000), "1.0M");
        assert_eq!(compact(1_990), "1.9k");
        assert_eq!(compact(123_456), "123k");
        assert_eq!(compact(u64::MAX), "18E");
        assert_eq!(blues(0.0), RGBColor(247, 251, 255));
        assert_eq!(blues(1.0), RGBColor(8, 48, 107));
        assert_eq!(blues(f64::NAN), RGBColor(247, 251, 255));
        assert_eq!(epoch_ticks(1, 30), vec![5.0, 10.0, 15.0, 20.0, 25.0, 30.0]);
        assert_eq!(epoch_ticks(0, 0), vec![0.0]);
        assert_eq!(epoch_ticks(0, 3), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(epoch_ticks(7, 9), vec![7.0, 8.0, 9.0]);
        let far = epoch_ticks(1_000_001, 1_000_400);
        assert!((4..=11).contains(&far.len()), "{far:?}");
        assert!(
            far.iter()
                .all(|&t| (1_000_001.0..=1_000_400.0).contains(&t))
        );
    }
}
