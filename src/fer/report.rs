//! PNG pictures of a training run — what the Keras tutorial shows with
//! matplotlib: the accuracy and loss curves, the confusion matrix, and grids of
//! faces with their predictions.
//!
//! Everything is drawn on an in-memory RGB canvas by the small rasteriser at
//! the end of this file (anti-aliased lines, discs, rectangles) and text is
//! laid out and rasterised with `ab_glyph` from DejaVu Sans, embedded in the
//! binary (`assets/DejaVuSans.ttf`, Bitstream Vera licence, see
//! `assets/DejaVuSans-LICENSE.txt`), so it renders on a machine with no fonts.
//! PNGs are encoded with `image` and written with
//! [`crate::fer::checkpoint::write_atomic`].

use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};
use anyhow::{Result, anyhow, bail};
use image::ImageEncoder;
use image::codecs::png::PngEncoder;

static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Side of a face in pixels, and how much faces are enlarged when drawn.
const FACE_SIDE: usize = 48;
const FACE_PIXELS: usize = FACE_SIDE * FACE_SIDE;
const FACE_SCALE: usize = 3;
/// Largest picture side drawn, to keep memory bounded on absurd inputs.
const MAX_SIDE: usize = 16_384;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const TEXT: Rgb = [20, 20, 20];
const AXIS: Rgb = [60, 60, 60];
const GRID: Rgb = [228, 228, 228];
const TRAIN: Rgb = [31, 119, 180]; // matplotlib blue
const VAL: Rgb = [255, 127, 14]; // matplotlib orange
const RIGHT: Rgb = [0, 128, 0];
const WRONG: Rgb = [210, 0, 0];

/// One epoch of training history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
}

/// Training vs validation accuracy (one panel) and loss (second panel) per
/// epoch, with axes, ticks, legend and titles.
///
/// Points are drawn in epoch order. Non-finite values (a diverged run) leave a
/// gap in their curve rather than being refused, so the rest of the run still
/// shows.
pub fn plot_history(path: &Path, points: &[EpochPoint]) -> Result<()> {
    let name = path.display();
    if points.is_empty() {
        bail!("cannot plot `{name}`: the training history is empty (no epoch finished)");
    }
    let font = font()?;
    let mut points = points.to_vec();
    points.sort_by_key(|p| p.epoch);
    let first = points.first().map_or(0, |p| p.epoch);
    let last = points.last().map_or(0, |p| p.epoch);
    let series = |value: fn(&EpochPoint) -> f64| -> Vec<(f64, f64)> {
        points
            .iter()
            .map(|p| {
                let v = value(p);
                (p.epoch as f64, if v.is_finite() { v } else { f64::NAN })
            })
            .collect()
    };

    let mut canvas = Canvas::new(1400, 560)?;
    let panel = |x0: f64| Panel {
        left: x0 + 85.0,
        right: x0 + 680.0,
        top: 62.0,
        bottom: 480.0,
    };
    draw_curves(
        &mut canvas,
        font,
        panel(0.0),
        "Training and validation accuracy",
        "accuracy",
        (first, last),
        &[
            Curve::new("training", series(|p| p.train_acc), TRAIN),
            Curve::new("validation", series(|p| p.val_acc), VAL),
        ],
        Corner::LowerRight,
    );
    draw_curves(
        &mut canvas,
        font,
        panel(700.0),
        "Training and validation loss",
        "loss",
        (first, last),
        &[
            Curve::new("training", series(|p| p.train_loss), TRAIN),
            Curve::new("validation", series(|p| p.val_loss), VAL),
        ],
        Corner::UpperRight,
    );
    canvas.write_png(path)
}

/// One named, coloured line of a chart; NaN values leave gaps.
struct Curve<'a> {
    label: &'a str,
    points: Vec<(f64, f64)>,
    color: Rgb,
}

impl<'a> Curve<'a> {
    fn new(label: &'a str, points: Vec<(f64, f64)>, color: Rgb) -> Self {
        Curve {
            label,
            points,
            color,
        }
    }
}

/// The plotting rectangle of one chart, in canvas pixels.
#[derive(Clone, Copy)]
struct Panel {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

#[derive(Clone, Copy)]
enum Corner {
    UpperRight,
    LowerRight,
}

#[allow(clippy::too_many_arguments)]
fn draw_curves(
    canvas: &mut Canvas,
    font: &FontRef<'static>,
    p: Panel,
    title: &str,
    y_name: &str,
    (first, last): (usize, usize),
    curves: &[Curve<'_>],
    legend_at: Corner,
) {
    // Data ranges, padded so markers do not sit on the frame.
    let span = last.saturating_sub(first) as f64;
    let pad = if span == 0.0 { 1.0 } else { span * 0.03 };
    let (x_lo, x_hi) = (first as f64 - pad, last as f64 + pad);
    let values = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|&(_, v)| v))
        .filter(|v| v.is_finite());
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let nothing_to_show = !(lo.is_finite() && hi.is_finite() && (hi - lo).is_finite());
    if nothing_to_show {
        (lo, hi) = (0.0, 1.0);
    }
    let y_pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        lo.abs() * 0.1 + 0.05
    };
    let (y_lo, y_hi) = (lo - y_pad, hi + y_pad);
    let to_px = |(x, y): (f64, f64)| {
        (
            p.left + (x - x_lo) / (x_hi - x_lo) * (p.right - p.left),
            p.bottom - (y - y_lo) / (y_hi - y_lo) * (p.bottom - p.top),
        )
    };

    // Grid, ticks and tick labels.
    // Epoch ticks only where there are epochs (no "-1" beside a single epoch 0).
    let x_ticks: Vec<f64> = nice_ticks(x_lo, x_hi, 10, true)
        .into_iter()
        .filter(|&t| t >= first as f64 && t <= last as f64)
        .collect();
    let y_ticks: Vec<f64> = nice_ticks(y_lo, y_hi, 8, false);
    let y_decimals = decimals_for(&y_ticks);
    for &t in &x_ticks {
        let (x, _) = to_px((t, y_lo));
        canvas.line(&[(x, p.top), (x, p.bottom)], 1.0, GRID);
        canvas.line(&[(x, p.bottom), (x, p.bottom + 6.0)], 1.0, AXIS);
        let label = format!("{t:.0}");
        canvas.text(
            font,
            &label,
            (x, p.bottom + 10.0),
            15.0,
            TEXT,
            Align::TOP_CENTER,
        );
    }
    for &t in &y_ticks {
        let (_, y) = to_px((x_lo, t));
        canvas.line(&[(p.left, y), (p.right, y)], 1.0, GRID);
        canvas.line(&[(p.left - 6.0, y), (p.left, y)], 1.0, AXIS);
        let label = format_tick(t, y_decimals);
        canvas.text(
            font,
            &label,
            (p.left - 10.0, y),
            15.0,
            TEXT,
            Align::RIGHT_MIDDLE,
        );
    }
    canvas.stroke_rect(p.left, p.top, p.right, p.bottom, AXIS);

    // Titles.
    let mid_x = (p.left + p.right) / 2.0;
    canvas.text(
        font,
        title,
        (mid_x, p.top - 22.0),
        22.0,
        TEXT,
        Align::CENTER,
    );
    canvas.text(
        font,
        "epoch",
        (mid_x, p.bottom + 52.0),
        18.0,
        TEXT,
        Align::CENTER,
    );
    let widest_y_label = y_ticks
        .iter()
        .map(|&t| text_width(font, &format_tick(t, y_decimals), 15.0))
        .fold(0.0, f64::max);
    canvas.text(
        font,
        y_name,
        (p.left - 26.0 - widest_y_label, (p.top + p.bottom) / 2.0),
        18.0,
        TEXT,
        Align::CENTER.rotated(),
    );

    // Curves and markers.
    // A non-finite value (NaN) breaks the curve: no line is drawn across it.
    for curve in curves {
        for run in curve.points.split(|(_, v)| !v.is_finite()) {
            let px: Vec<(f64, f64)> = run.iter().map(|&q| to_px(q)).collect();
            canvas.line(&px, 2.2, curve.color);
            if curve.points.len() <= 60 {
                for &q in &px {
                    canvas.disc(q, 3.6, curve.color);
                }
            }
        }
    }

    if nothing_to_show {
        let centre = ((p.left + p.right) / 2.0, (p.top + p.bottom) / 2.0);
        let note = "no finite values to plot";
        canvas.text(font, note, centre, 18.0, [150, 150, 150], Align::CENTER);
    }

    // Legend.
    let size = 16.0;
    let row_h = 26.0;
    let sample = 30.0;
    let text_w = curves
        .iter()
        .map(|c| text_width(font, c.label, size))
        .fold(0.0, f64::max);
    let box_w = 12.0 + sample + 10.0 + text_w + 12.0;
    let box_h = 8.0 + row_h * curves.len() as f64;
    let bx1 = p.right - 12.0;
    let bx0 = bx1 - box_w;
    let by0 = match legend_at {
        Corner::UpperRight => p.top + 12.0,
        Corner::LowerRight => p.bottom - 12.0 - box_h,
    };
    canvas.fill_rect_alpha(bx0, by0, bx1, by0 + box_h, WHITE, 0.88);
    canvas.stroke_rect(bx0, by0, bx1, by0 + box_h, [170, 170, 170]);
    for (k, curve) in curves.iter().enumerate() {
        let y = by0 + 4.0 + row_h * (k as f64 + 0.5);
        canvas.line(
            &[(bx0 + 12.0, y), (bx0 + 12.0 + sample, y)],
            3.0,
            curve.color,
        );
        canvas.text(
            font,
            curve.label,
            (bx0 + 22.0 + sample, y),
            size,
            TEXT,
            Align::LEFT_MIDDLE,
        );
    }
}

/// Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of
/// ten, at most about `max_ticks` of them (integers only if `integer`).
fn nice_ticks(lo: f64, hi: f64, max_ticks: usize, integer: bool) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) || max_ticks == 0 {
        return Vec::new();
    }
    let raw = span / max_ticks as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    if integer {
        step = step.max(1.0).round();
    }
    if !(step.is_finite() && step > 0.0) {
        return Vec::new();
    }
    let start = (lo / step).ceil();
    (0..=max_ticks * 2 + 2)
        .map(|i| (start + i as f64) * step)
        .take_while(|&v| v <= hi + step * 1e-9)
        .collect()
}

/// Decimals needed to tell the ticks apart.
fn decimals_for(ticks: &[f64]) -> usize {
    match ticks {
        [a, b, ..] => {
            let step = (b - a).abs();
            if step > 0.0 && step.is_finite() {
                (-(step.log10().floor())).clamp(0.0, 10.0) as usize
            } else {
                0
            }
        }
        _ => 2,
    }
}

fn format_tick(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    // "-0.0" reads oddly on an axis.
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// Confusion matrix as an annotated heat map: rows = true class, columns =
/// predicted; each cell shows its count (and its share of the true class); axis
/// labels with class names; a title with the accuracy.
///
/// Cells are coloured by their share of the row (the recall, on the diagonal),
/// so that rare classes such as `disgust` stay readable beside common ones.
pub fn plot_confusion(path: &Path, confusion: &[Vec<u64>], class_names: &[String]) -> Result<()> {
    let name = path.display();
    let n = class_names.len();
    if n == 0 {
        bail!("cannot plot `{name}`: no class names given");
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
    if n > 200 {
        bail!("cannot plot `{name}`: {n} classes are too many for one confusion-matrix picture");
    }
    let font = font()?;

    let row_totals: Vec<u128> = confusion
        .iter()
        .map(|r| r.iter().map(|&c| c as u128).sum())
        .collect();
    let total: u128 = row_totals.iter().sum();
    let correct: u128 = (0..n).map(|i| confusion[i][i] as u128).sum();
    let title = if total == 0 {
        "Confusion matrix (no samples)".to_string()
    } else {
        format!(
            "Confusion matrix — accuracy {:.1}% ({} of {} correct)",
            100.0 * correct as f64 / total as f64,
            group_digits(correct),
            group_digits(total)
        )
    };

    // Layout, in pixels.
    let cell = (600.0 / n as f64).floor().clamp(24.0, 110.0);
    let label_size = if cell >= 60.0 { 17.0 } else { 13.0 };
    let widest_label = class_names
        .iter()
        .map(|c| text_width(font, c, label_size))
        .fold(0.0, f64::max)
        .ceil();
    let rotate_columns = widest_label > cell - 8.0;
    let grid = cell * n as f64;
    let axis_title = 40.0; // room for "true class" / "predicted class"
    let top = 76.0;
    let col_labels = if rotate_columns {
        widest_label + 18.0
    } else {
        label_size + 18.0
    };
    let bar_w = 22.0;
    let right = 30.0 + bar_w + 70.0;
    let title_size = 22.0;
    let title_w = text_width(font, &title, title_size) + 40.0;
    let content_w = axis_title + widest_label + 14.0 + grid + right;
    let w = content_w.max(title_w).max(300.0).ceil();
    // Centre the matrix under a title wider than it.
    let x_shift = ((w - content_w) / 2.0).floor();
    let left = x_shift + axis_title + widest_label + 14.0;
    let bar_x = left + grid + 30.0;
    let h = (top + grid + col_labels + axis_title + 12.0).ceil();
    let mut canvas = Canvas::new(w as usize, h as usize)?;

    canvas.text(
        font,
        &title,
        (w / 2.0, 32.0),
        title_size,
        TEXT,
        Align::CENTER,
    );

    // Cells with their count and share of the row.
    for (i, row) in confusion.iter().enumerate() {
        for (j, &count) in row.iter().enumerate() {
            let share = if row_totals[i] == 0 {
                0.0
            } else {
                count as f64 / row_totals[i] as f64
            };
            let x0 = left + j as f64 * cell;
            let y0 = top + i as f64 * cell;
            canvas.fill_rect(x0, y0, x0 + cell, y0 + cell, blues(share));
            let ink = if share > 0.5 { WHITE } else { TEXT };
            let mut count_text = group_digits(count as u128);
            let mut size = (cell * 0.25).clamp(9.0, 24.0);
            while size > 8.0 && text_width(font, &count_text, size) > cell - 6.0 {
                size -= 1.0;
            }
            if text_width(font, &count_text, size) > cell - 4.0 {
                count_text = compact(count);
            }
            let (cx, cy) = (x0 + cell / 2.0, y0 + cell / 2.0);
            let show_share = cell >= 56.0 && row_totals[i] > 0;
            let count_y = if show_share { cy - cell * 0.1 } else { cy };
            canvas.text(font, &count_text, (cx, count_y), size, ink, Align::CENTER);
            if show_share {
                let share_text = format!("{:.0}%", share * 100.0);
                let share_size = (size * 0.62).max(10.0);
                canvas.text(
                    font,
                    &share_text,
                    (cx, cy + cell * 0.2),
                    share_size,
                    ink,
                    Align::CENTER,
                );
            }
        }
    }
    canvas.stroke_rect(left, top, left + grid, top + grid, AXIS);

    // Class names: rows on the left, columns below.
    for (k, class) in class_names.iter().enumerate() {
        let mid = k as f64 * cell + cell / 2.0;
        canvas.text(
            font,
            class,
            (left - 8.0, top + mid),
            label_size,
            TEXT,
            Align::RIGHT_MIDDLE,
        );
        let (pos, align) = if rotate_columns {
            (
                (left + mid, top + grid + 8.0),
                Align::RIGHT_MIDDLE.rotated(),
            )
        } else {
            ((left + mid, top + grid + 8.0), Align::TOP_CENTER)
        };
        canvas.text(font, class, pos, label_size, TEXT, align);
    }
    canvas.text(
        font,
        "predicted class",
        (
            left + grid / 2.0,
            top + grid + col_labels + axis_title / 2.0,
        ),
        18.0,
        TEXT,
        Align::CENTER,
    );
    canvas.text(
        font,
        "true class",
        (x_shift + axis_title / 2.0 + 2.0, top + grid / 2.0),
        18.0,
        TEXT,
        Align::CENTER.rotated(),
    );

    // Colour bar: share of the true class, 0% at the bottom.
    let steps = grid.max(1.0) as usize;
    for s in 0..steps {
        let share = 1.0 - s as f64 / (steps.max(2) - 1) as f64;
        let y = top + s as f64;
        canvas.fill_rect(bar_x, y, bar_x + bar_w, y + 1.0, blues(share));
    }
    canvas.stroke_rect(bar_x, top, bar_x + bar_w, top + grid, AXIS);
    let ticks = if grid >= 200.0 { 4 } else { 2 };
    for t in 0..=ticks {
        let share = t as f64 / ticks as f64;
        let y = top + grid - (share * grid).round();
        canvas.line(&[(bar_x + bar_w, y), (bar_x + bar_w + 5.0, y)], 1.0, AXIS);
        let label = format!("{:.0}%", share * 100.0);
        canvas.text(
            font,
            &label,
            (bar_x + bar_w + 8.0, y),
            14.0,
            TEXT,
            Align::LEFT_MIDDLE,
        );
    }
    canvas.text(
        font,
        "share of row",
        (bar_x + bar_w / 2.0, top - 18.0),
        13.0,
        TEXT,
        Align::CENTER,
    );
    canvas.write_png(path)
}

/// matplotlib's "Blues" colour map, `t` in [0, 1].
fn blues(t: f64) -> Rgb {
    const STOPS: [Rgb; 9] = [
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
    std::array::from_fn(|c| (a[c] as f64 + (b[c] as f64 - a[c] as f64) * f).round() as u8)
}

/// `1234` -> `1.2k`, `5000000` -> `5M`: for counts too wide for their cell.
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
/// (e.g. "pred: sad / true: anger"), coloured green when right and red when
/// wrong.
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
    let colors: Vec<Rgb> = if correct.is_empty() {
        vec![TEXT; faces.len()]
    } else {
        correct
            .iter()
            .map(|&ok| if ok { RIGHT } else { WRONG })
            .collect()
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

fn draw_faces(
    path: &Path,
    faces: &[&[u8]],
    titles: &[String],
    colors: &[Rgb],
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
    let font = font()?;
    let columns = columns.min(faces.len());
    let rows = faces.len().div_ceil(columns);

    let side = FACE_SIDE * FACE_SCALE;
    let tile_w = side + 36;
    let line_h = (size * 1.3).ceil() as usize;
    // Titles like "pred: sad / true: anger" that do not fit on one line break
    // at the " / " — in every tile alike, so the grid reads evenly.
    let max_w = tile_w as f64 - 6.0;
    let break_at_slash = titles.iter().any(|t| text_width(font, t, size) > max_w);
    let wrapped: Vec<Vec<String>> = titles
        .iter()
        .map(|t| {
            let parts: Vec<&str> = if break_at_slash {
                t.split(" / ").collect()
            } else {
                vec![t.as_str()]
            };
            wrap_text(font, &parts, size, max_w, 3)
        })
        .collect();
    let used_lines = wrapped.iter().map(Vec::len).max().unwrap_or(0);
    let title_h = if used_lines == 0 {
        4
    } else {
        used_lines * line_h + 6
    };
    let tile_h = title_h + side + 14;
    let margin = 12;
    let (w, h) = (columns * tile_w + 2 * margin, rows * tile_h + 2 * margin);
    if w > MAX_SIDE || h > MAX_SIDE {
        bail!(
            "cannot plot `{name}`: {} faces in {columns} columns make a {w}x{h} picture, \
             larger than {MAX_SIDE} pixels a side; show fewer faces or use more columns",
            faces.len()
        );
    }
    let mut canvas = Canvas::new(w, h)?;
    for (k, face) in faces.iter().enumerate() {
        let x0 = margin + (k % columns) * tile_w + (tile_w - side) / 2;
        let y0 = margin + (k / columns) * tile_h + title_h;
        canvas.blit_gray(face, FACE_SIDE, FACE_SCALE, x0, y0);
        // Lines sit at the bottom of the title area, just above the face.
        let lines = wrapped.get(k).map(Vec::as_slice).unwrap_or(&[]);
        let cx = (margin + (k % columns) * tile_w + tile_w / 2) as f64;
        for (l, line) in lines.iter().enumerate() {
            let row = used_lines - lines.len() + l;
            let y = (margin + (k / columns) * tile_h + 2 + row * line_h + line_h / 2) as f64;
            canvas.text(font, line, (cx, y), size, colors[k], Align::CENTER);
        }
    }
    canvas.write_png(path)
}

/// Greedy word wrap of `parts` (each starts a new line) to `max_width` pixels,
/// at most `max_lines` lines (the last one ends in "…" when text is cut).
/// Words longer than a line are split.
fn wrap_text(
    font: &FontRef<'static>,
    parts: &[&str],
    size: f64,
    max_width: f64,
    max_lines: usize,
) -> Vec<String> {
    let fits = |s: &str| text_width(font, s, size) <= max_width;
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    let words = parts.iter().flat_map(|part| {
        // `None` marks the start of a part: a forced line break.
        std::iter::once(None).chain(part.split_whitespace().map(Some))
    });
    for word in words {
        let Some(word) = word else {
            if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            continue;
        };
        let candidate = if current.is_empty() {
            word.to_string()
        } else {
            format!("{current} {word}")
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
                lines.push(std::mem::take(&mut current));
                current.push(ch);
            }
        }
    }
    if !current.is_empty() {
        lines.push(current);
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
// Text: layout and rasterisation with ab_glyph.

/// The embedded font, parsed once.
fn font() -> Result<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
        .ok_or_else(|| anyhow!("the embedded font (assets/DejaVuSans.ttf) could not be read"))
}

/// Where a text's anchor point lies on it, and whether it reads bottom-to-top.
#[derive(Clone, Copy)]
struct Align {
    /// 0 = left edge, 0.5 = centre, 1 = right edge.
    h: f64,
    /// 0 = top (ascender line), 0.5 = middle of capital letters, 1 = baseline.
    v: f64,
    rotated: bool,
}

impl Align {
    const CENTER: Align = Align {
        h: 0.5,
        v: 0.5,
        rotated: false,
    };
    const TOP_CENTER: Align = Align {
        h: 0.5,
        v: 0.0,
        rotated: false,
    };
    const LEFT_MIDDLE: Align = Align {
        h: 0.0,
        v: 0.5,
        rotated: false,
    };
    const RIGHT_MIDDLE: Align = Align {
        h: 1.0,
        v: 0.5,
        rotated: false,
    };
    /// The same anchor, text turned 90° counter-clockwise (reads upwards).
    fn rotated(self) -> Align {
        Align {
            rotated: true,
            ..self
        }
    }
}

/// Glyphs of one line of text, the baseline at y = 0, starting at x = 0.
fn layout(font: &FontRef<'static>, text: &str, size: f64) -> (Vec<(GlyphId, f32)>, f64) {
    let scaled = font.as_scaled(PxScale::from(size as f32));
    let mut caret = 0.0f32;
    let mut prev: Option<GlyphId> = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for ch in text.chars().filter(|c| !c.is_control()) {
        let id = scaled.glyph_id(ch);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        glyphs.push((id, caret));
        caret += scaled.h_advance(id);
        prev = Some(id);
    }
    (glyphs, caret as f64)
}

fn text_width(font: &FontRef<'static>, text: &str, size: f64) -> f64 {
    layout(font, text, size).1
}

/// Height of capital letters, in pixels at `size`.
fn cap_height(font: &FontRef<'static>, size: f64) -> f64 {
    let scale = PxScale::from(size as f32);
    let glyph = font
        .glyph_id('H')
        .with_scale_and_position(scale, point(0.0, 0.0));
    font.outline_glyph(glyph)
        .map(|g| -g.px_bounds().min.y as f64)
        .filter(|h| *h > 0.0)
        .unwrap_or(size * 0.7)
}

// ---------------------------------------------------------------------------
// A small RGB canvas.

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Result<Canvas> {
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
            bail!("a {w}x{h} picture is out of range");
        }
        Ok(Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        })
    }

    /// Mix `color` into pixel (x, y) with opacity `a`; outside pixels are ignored.
    fn blend(&mut self, x: i64, y: i64, color: Rgb, a: f32) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 || a.is_nan() || a <= 0.0 {
            return;
        }
        let a = a.min(1.0);
        let at = (y as usize * self.w + x as usize) * 3;
        for (dst, src) in self.px[at..at + 3].iter_mut().zip(color) {
            *dst = (*dst as f32 * (1.0 - a) + src as f32 * a).round() as u8;
        }
    }

    /// Pixel range [from, to) covering [a, b), clipped to 0..limit.
    fn span(a: f64, b: f64, limit: usize) -> std::ops::Range<i64> {
        let lo = a.min(b).round().max(0.0) as i64;
        let hi = (a.max(b).round() as i64).min(limit as i64);
        lo..hi.max(lo)
    }

    fn fill_rect_alpha(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, color: Rgb, a: f32) {
        for y in Self::span(y0, y1, self.h) {
            for x in Self::span(x0, x1, self.w) {
                self.blend(x, y, color, a);
            }
        }
    }

    fn fill_rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, color: Rgb) {
        self.fill_rect_alpha(x0, y0, x1, y1, color, 1.0);
    }

    /// A one-pixel outline just inside [x0, x1] x [y0, y1].
    fn stroke_rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, color: Rgb) {
        self.fill_rect(x0, y0, x1, y0 + 1.0, color);
        self.fill_rect(x0, y1 - 1.0, x1, y1, color);
        self.fill_rect(x0, y0, x0 + 1.0, y1, color);
        self.fill_rect(x1 - 1.0, y0, x1, y1, color);
    }

    /// An anti-aliased polyline of `width` pixels through `points` (pixel
    /// coordinates; a pixel's centre is at +0.5). Overlaps are blended once.
    fn line(&mut self, points: &[(f64, f64)], width: f64, color: Rgb) {
        let points: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if points.is_empty() {
            return;
        }
        let half = width / 2.0;
        let reach = half + 1.0;
        let (mut x_lo, mut y_lo, mut x_hi, mut y_hi) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for &(x, y) in &points {
            (x_lo, y_lo, x_hi, y_hi) = (x_lo.min(x), y_lo.min(y), x_hi.max(x), y_hi.max(y));
        }
        let xs = Self::span(x_lo - reach, x_hi + reach + 1.0, self.w);
        let ys = Self::span(y_lo - reach, y_hi + reach + 1.0, self.h);
        let mask_w = (xs.end - xs.start) as usize;
        let mut mask = vec![0f32; mask_w * (ys.end - ys.start) as usize];
        let segments: Vec<_> = if points.len() == 1 {
            vec![(points[0], points[0])]
        } else {
            points.windows(2).map(|s| (s[0], s[1])).collect()
        };
        for (a, b) in segments {
            let sx = Self::span(a.0.min(b.0) - reach, a.0.max(b.0) + reach + 1.0, self.w);
            let sy = Self::span(a.1.min(b.1) - reach, a.1.max(b.1) + reach + 1.0, self.h);
            for y in sy {
                for x in sx.clone() {
                    let d = distance_to_segment((x as f64 + 0.5, y as f64 + 0.5), a, b);
                    let coverage = (half + 0.5 - d).clamp(0.0, 1.0) as f32;
                    let at = (y - ys.start) as usize * mask_w + (x - xs.start) as usize;
                    if let Some(m) = mask.get_mut(at) {
                        *m = m.max(coverage);
                    }
                }
            }
        }
        for (i, &a) in mask.iter().enumerate() {
            if a > 0.0 {
                let x = xs.start + (i % mask_w) as i64;
                let y = ys.start + (i / mask_w) as i64;
                self.blend(x, y, color, a);
            }
        }
    }

    /// An anti-aliased filled circle.
    fn disc(&mut self, (cx, cy): (f64, f64), r: f64, color: Rgb) {
        if !(cx.is_finite() && cy.is_finite()) {
            return;
        }
        for y in Self::span(cy - r - 1.0, cy + r + 2.0, self.h) {
            for x in Self::span(cx - r - 1.0, cx + r + 2.0, self.w) {
                let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
                self.blend(x, y, color, (r + 0.5 - d).clamp(0.0, 1.0) as f32);
            }
        }
    }

    /// Copy a grayscale image (row-major, `side` x `side`) at (x0, y0),
    /// enlarged `scale` times with nearest-neighbour sampling.
    fn blit_gray(&mut self, pixels: &[u8], side: usize, scale: usize, x0: usize, y0: usize) {
        for y in 0..side * scale {
            for x in 0..side * scale {
                let Some(&v) = pixels.get((y / scale) * side + x / scale) else {
                    continue;
                };
                let (cx, cy) = (x0 + x, y0 + y);
                if cx < self.w && cy < self.h {
                    let at = (cy * self.w + cx) * 3;
                    self.px[at..at + 3].copy_from_slice(&[v, v, v]);
                }
            }
        }
    }

    /// Draw one line of text anchored at `at` (see [`Align`]).
    fn text(
        &mut self,
        font: &FontRef<'static>,
        text: &str,
        at: (f64, f64),
        size: f64,
        color: Rgb,
        align: Align,
    ) {
        if !(at.0.is_finite() && at.1.is_finite() && size.is_finite() && size > 0.0) {
            return;
        }
        let (glyphs, width) = layout(font, text, size);
        let scaled = font.as_scaled(PxScale::from(size as f32));
        let ascent = scaled.ascent() as f64;
        let cap = cap_height(font, size);
        // Baseline offset below the anchor: top -> ascent, middle -> half the
        // capitals' height, bottom (1.0) -> 0.
        let baseline = if align.v <= 0.5 {
            ascent + (cap / 2.0 - ascent) * (align.v / 0.5)
        } else {
            cap / 2.0 * (1.0 - (align.v - 0.5) / 0.5)
        };
        let dx = -width * align.h;
        let (ax, ay) = (at.0.round() as i64, at.1.round() as i64);
        for (id, caret) in glyphs {
            let glyph = id.with_scale_and_position(
                PxScale::from(size as f32),
                point((dx + caret as f64) as f32, baseline as f32),
            );
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            let (bx, by) = (bounds.min.x as i64, bounds.min.y as i64);
            let mut put = |gx: u32, gy: u32, coverage: f32| {
                let (lx, ly) = (bx + gx as i64, by + gy as i64);
                let (x, y) = if align.rotated {
                    (ax + ly, ay - lx)
                } else {
                    (ax + lx, ay + ly)
                };
                self.blend(x, y, color, coverage);
            };
            outline.draw(&mut put);
        }
    }

    fn write_png(&self, path: &Path) -> Result<()> {
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(
                &self.px,
                self.w as u32,
                self.h as u32,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| anyhow!("cannot encode `{}` as PNG: {e}", path.display()))?;
        crate::fer::checkpoint::write_atomic(path, &png)
    }
}

fn distance_to_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx, a.1 + t * dy);
    ((p.0 - qx).powi(2) + (p.1 - qy).powi(2)).sqrt()
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
        let font = font().unwrap();
        let lines = wrap_text(font, &["pred: happiness / true: surprise"], 14.0, 170.0, 3);
        assert!(lines.len() >= 2, "{lines:?}");
        let split = wrap_text(font, &["pred: happiness", "true: sad"], 14.0, 170.0, 3);
        assert_eq!(split, vec!["pred: happiness", "true: sad"]);
        assert!(lines.iter().all(|l| text_width(font, l, 14.0) <= 170.0));
        let long = wrap_text(font, &[&"x".repeat(500)], 14.0, 100.0, 3);
        assert_eq!(long.len(), 3);
        assert!(long[2].ends_with('…'));
        assert!(wrap_text(font, &["   "], 14.0, 100.0, 3).is_empty());
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
        assert_eq!(format_tick(0.25, 2), "0.25");
        assert_eq!(format_tick(-0.0001, 2), "0.00");
        assert_eq!(blues(0.0), [247, 251, 255]);
        assert_eq!(blues(1.0), [8, 48, 107]);
        assert_eq!(blues(f64::NAN), [247, 251, 255]);
        assert_eq!(
            nice_ticks(0.5, 30.5, 10, true),
            vec![5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
        );
        assert_eq!(nice_ticks(-1.0, 1.0, 10, true), vec![-1.0, 0.0, 1.0]);
        let t = nice_ticks(0.31, 0.97, 8, false);
        assert!(t.len() >= 4 && t.len() <= 9, "{t:?}");
        assert_eq!(decimals_for(&t), 1);
        assert!(nice_ticks(0.0, f64::INFINITY, 8, false).is_empty());
        assert!(nice_ticks(1.0, 1.0, 8, false).is_empty());
        assert!(nice_ticks(f64::NAN, 1.0, 8, false).is_empty());
    }
}
