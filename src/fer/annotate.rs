//! `predict --annotate`: the picture with each face's box and its top class
//! and probability, a colour per class, and the model's name in the
//! bottom-right corner. Lines and letters scale with the picture, so the
//! labels read the same on a 300-pixel thumbnail and on a 4,000-pixel photo.

use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use anyhow::{Context, Result, anyhow};
use image::{Rgb, RgbImage};

use crate::fer::predict::FaceReport;

use crate::fer::report::FONT_BYTES;

/// Box and label colours by class index (FER-2013's seven classes at most;
/// more classes reuse them).
const PALETTE: [[u8; 3]; 7] = [
    [220, 40, 40],   // red
    [40, 150, 60],   // green
    [40, 100, 220],  // blue
    [245, 170, 0],   // amber
    [170, 60, 200],  // purple
    [0, 170, 190],   // teal
    [120, 120, 120], // gray
];

/// The model name's tag: dark gray, a colour no class has.
pub const FOOTER: Rgb<u8> = Rgb([40, 40, 40]);

/// The colour of a class, by its index among the model's classes.
pub fn class_colour(index: usize) -> Rgb<u8> {
    Rgb(PALETTE[index % PALETTE.len()])
}

/// Line width and letter size (pixel height) for a picture: a 300-pixel
/// picture gets 2-pixel lines and 13-pixel letters, a 4,000-pixel one
/// 13-pixel lines and 100-pixel letters.
pub fn sizes(width: u32, height: u32) -> (u32, f32) {
    let longer = width.max(height) as f32;
    let line = (longer / 300.0).round().max(2.0) as u32;
    let text = (longer / 40.0).max(13.0);
    (line, text)
}

fn font() -> Result<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
        .ok_or_else(|| anyhow!("the embedded font (assets/DejaVuSans.ttf) could not be read"))
}

/// Draw every face's box and label, and `model`'s name, on a copy of the picture.
pub fn annotate(
    picture: &RgbImage,
    faces: &[FaceReport],
    class_names: &[String],
    model: &str,
) -> Result<RgbImage> {
    let font = font()?;
    let mut out = picture.clone();
    let (line, size) = sizes(out.width(), out.height());
    // Labels last, so that no box crosses a label.
    for face in faces {
        let colour = colour_of(face, class_names);
        let [x, y, w, h] = face.bbox;
        stroke_rect(&mut out, x, y, w, h, line, colour);
    }
    for face in faces {
        let colour = colour_of(face, class_names);
        let (class, p) = face.probabilities.best();
        let text = format!("{class} {:.0} %", 100.0 * p);
        label(&mut out, font, &text, face.bbox, size, colour);
    }
    footer(&mut out, font, &format!("model: {model}"), size);
    Ok(out)
}

fn colour_of(face: &FaceReport, class_names: &[String]) -> Rgb<u8> {
    let index = class_names
        .iter()
        .position(|c| *c == face.prediction)
        .unwrap_or(0);
    class_colour(index)
}

/// Write an annotated picture as PNG.
pub fn save_png(picture: &RgbImage, path: &Path) -> Result<()> {
    picture
        .save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A rectangle outline `line` pixels wide, drawn inside the box.
fn stroke_rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, line: u32, c: Rgb<u8>) {
    let t = line.min(w.div_ceil(2)).min(h.div_ceil(2));
    fill_rect(img, x, y, w, t, c);
    fill_rect(img, x, (y + h).saturating_sub(t), w, t, c);
    fill_rect(img, x, y, t, h, c);
    fill_rect(img, (x + w).saturating_sub(t), y, t, h, c);
}

fn fill_rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, c: Rgb<u8>) {
    let (iw, ih) = img.dimensions();
    for yy in y.min(ih)..(y.saturating_add(h)).min(ih) {
        for xx in x.min(iw)..(x.saturating_add(w)).min(iw) {
            img.put_pixel(xx, yy, c);
        }
    }
}

/// A filled tag in the class colour with the text in white (black on light
/// colours), above the box when there is room, else inside its top edge;
/// shifted left when it would leave the picture.
fn label(
    img: &mut RgbImage,
    font: &FontRef<'static>,
    text: &str,
    bbox: [u32; 4],
    size: f32,
    colour: Rgb<u8>,
) {
    let (tag_w, tag_h) = tag_size(font, text, size);
    let [bx, by, _, _] = bbox;
    let x = bx.min(img.width().saturating_sub(tag_w));
    let y = if by >= tag_h { by - tag_h } else { by };
    draw_tag(img, font, text, (x, y), size, colour);
}

/// The model's name in the bottom-right corner, in letters smaller than the
/// faces' labels (it is a caption, not a result).
fn footer(img: &mut RgbImage, font: &FontRef<'static>, text: &str, label_size: f32) {
    let size = (label_size * 0.6).max(11.0);
    let (w, h) = tag_size(font, text, size);
    let x = img.width().saturating_sub(w);
    let y = img.height().saturating_sub(h);
    draw_tag(img, font, text, (x, y), size, FOOTER);
}

/// Width and height of a tag holding `text` in letters `size` pixels high.
fn tag_size(font: &FontRef<'static>, text: &str, size: f32) -> (u32, u32) {
    let scaled = font.as_scaled(PxScale::from(size));
    let width: f32 = text
        .chars()
        .map(|ch| scaled.h_advance(font.glyph_id(ch)))
        .sum();
    let pad = tag_pad(size);
    let tag_h = (scaled.ascent() - scaled.descent()).ceil() as u32 + pad;
    (width.ceil() as u32 + 2 * pad, tag_h)
}

fn tag_pad(size: f32) -> u32 {
    (size * 0.2).ceil() as u32
}

/// A tag of `tag_size` at `(x, y)` filled with `colour`, its text in white
/// (black on light colours).
fn draw_tag(
    img: &mut RgbImage,
    font: &FontRef<'static>,
    text: &str,
    (x, y): (u32, u32),
    size: f32,
    colour: Rgb<u8>,
) {
    let scaled = font.as_scaled(PxScale::from(size));
    let (tag_w, tag_h) = tag_size(font, text, size);
    let pad = tag_pad(size);
    fill_rect(img, x, y, tag_w, tag_h, colour);
    let luma = 0.299 * colour[0] as f32 + 0.587 * colour[1] as f32 + 0.114 * colour[2] as f32;
    let ink = if luma > 150.0 {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    };
    let baseline = y as f32 + pad as f32 / 2.0 + scaled.ascent();
    let mut caret = x as f32 + pad as f32;
    for ch in text.chars() {
        let id = font.glyph_id(ch);
        let glyph = id.with_scale_and_position(PxScale::from(size), point(caret, baseline));
        caret += scaled.h_advance(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let b = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let px = b.min.x as i64 + gx as i64;
            let py = b.min.y as i64 + gy as i64;
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                let p = img.get_pixel_mut(px as u32, py as u32);
                for k in 0..3 {
                    let v = p[k] as f32 * (1.0 - coverage) + ink[k] as f32 * coverage;
                    p[k] = v.round() as u8;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fer::predict::Probabilities;

    fn face(bbox: [u32; 4], class: &str) -> FaceReport {
        FaceReport {
            bbox,
            score: Some(10.0),
            whole_image: false,
            prediction: class.to_string(),
            probabilities: Probabilities(vec![
                ("anger".into(), if class == "anger" { 0.9 } else { 0.1 }),
                ("sad".into(), if class == "sad" { 0.9 } else { 0.1 }),
            ]),
        }
    }

    fn count(img: &RgbImage, c: Rgb<u8>) -> usize {
        img.pixels().filter(|p| **p == c).count()
    }

    #[test]
    fn boxes_and_labels_scale_with_the_picture() {
        let names = vec!["anger".to_string(), "sad".to_string()];
        for side in [300u32, 4000] {
            let blank = RgbImage::from_pixel(side, side * 3 / 4, Rgb([200, 200, 200]));
            let b = side / 4;
            let faces = [face([b, b, b, b], "anger"), face([2 * b, b, b, b], "sad")];
            let out = annotate(&blank, &faces, &names, "fer7").unwrap();
            let (line, size) = sizes(out.width(), out.height());
            // Each box's outline, plus its label tag, in its class colour.
            for (i, f) in faces.iter().enumerate() {
                let drawn = count(&out, class_colour(i));
                let outline = 4 * (f.bbox[2] * line) as usize;
                assert!(drawn > outline, "{side} px, class {i}: {drawn} pixels");
                // The tag is at least as tall as the letters.
                assert!(drawn > outline + (size * size) as usize);
            }
            // White letters on the tags.
            let white = out
                .pixels()
                .filter(|p| p.0.iter().all(|&v| v > 240))
                .count();
            assert!(
                white as f32 > size * 2.0,
                "{side} px: {white} letter pixels"
            );
        }
        assert_eq!(sizes(300, 200), (2, 13.0));
        assert_eq!(sizes(4000, 3000), (13, 100.0));
    }

    #[test]
    fn a_face_at_the_corner_keeps_its_label_inside() {
        let names = vec!["anger".to_string(), "sad".to_string()];
        let blank = RgbImage::from_pixel(120, 90, Rgb([0, 0, 0]));
        let out = annotate(&blank, &[face([100, 0, 20, 20], "anger")], &names, "fer7").unwrap();
        // The tag moved left to fit: red pixels well left of the box.
        let red_left = (0..60).any(|x| out.get_pixel(x, 5) == &class_colour(0));
        assert!(red_left);
    }

    #[test]
    fn the_model_is_named_in_the_bottom_right_corner() {
        let names = vec!["anger".to_string(), "sad".to_string()];
        let blank = RgbImage::from_pixel(400, 300, Rgb([200, 200, 200]));
        let draw = |model: &str| annotate(&blank, &[], &names, model).unwrap();
        let fer7 = draw("fer7");
        // A dark tag in the corner, light letters on it, nothing elsewhere.
        let background = Rgb([200, 200, 200]);
        assert_eq!(fer7.get_pixel(399, 299), &FOOTER);
        let tag = count(&fer7, FOOTER);
        assert!(tag > 200, "{tag} tag pixels");
        let letters = fer7
            .enumerate_pixels()
            .filter(|(_, _, p)| **p != background && p.0.iter().all(|&v| v > 120))
            .map(|(x, y, _)| (x, y))
            .collect::<Vec<_>>();
        assert!(letters.len() > 20, "{} letter pixels", letters.len());
        assert!(
            letters.iter().all(|&(x, y)| x > 250 && y > 270),
            "{letters:?}"
        );
        assert!(
            fer7.enumerate_pixels()
                .all(|(x, y, p)| (x > 250 && y > 270) || *p == background)
        );
        // The text is the name: another name draws other letters.
        assert_ne!(fer7, draw("best.safetensors"));
    }
}
