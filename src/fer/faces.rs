//! Faces in photos: the SeetaFace detector (the `rustface` crate, its model
//! embedded in the binary), and the 48x48 grayscale crops the model reads.
//!
//! `analyze_image` is the CPU half of `wgfer predict` for one picture: bytes
//! in (no path, so an HTTP handler can call it too), faces with their boxes
//! and crops out. Classifying the crops is a separate, batched GPU step
//! (`predict::classify`), so the faces of many pictures share dispatches.

use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use image::imageops::FilterType;
use image::{GrayImage, Luma, RgbImage};

use crate::fer::image_input::{self, FACE_SIDE};

/// The detector's model (SeetaFace frontal, BSD-2-Clause; see
/// models/seeta_fd_frontal_v1.0.LICENSE.txt), inside the binary so that it
/// works from any directory.
static DETECTOR_MODEL: &[u8] = include_bytes!("../../models/seeta_fd_frontal_v1.0.bin");

/// The crop is a square this many times the detector's box, same centre:
/// rustface's box on a FER-2013 face is a median 43.5 of its 48 pixels, so
/// 1.10x frames a photo's face as the training faces were framed.
pub const CROP_SCALE: f64 = 1.10;
/// Pictures whose longer side is above this are shrunk to it for detection
/// (not for the crops): the detector's time grows with the pixel count, and
/// the faces it then misses (under ~40 pixels across in the original) are too
/// small to classify anyway.
pub const DETECT_MAX_SIDE: u32 = 2048;
/// A picture with no face found whose sides are both at most this is
/// classified whole (it is most likely a face cropped already).
pub const SMALL_IMAGE_SIDE: u32 = 128;
/// The retry's upscaling stops at this longer side (its cost grows with it;
/// pre-cropped faces, what the retry is for, are small pictures).
const RETRY_MAX_SIDE: u32 = 1024;
/// Detections below this score are dropped (rustface's scale: 2.0 in its
/// examples; higher finds fewer faces and fewer false ones).
pub const SCORE_THRESHOLD: f64 = 2.0;
/// rustface's smallest window; smaller pictures are not searched.
const MIN_DETECT_SIDE: u32 = 40;

/// A face the detector found, in the pixels of the picture it was given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Left and top edges (may be negative: a box can overhang the picture).
    pub x: f64,
    pub y: f64,
    /// The box is square.
    pub side: f64,
    pub score: f64,
}

/// The face detector: a rustface detector with the embedded model. Not
/// `Sync` (it keeps scratch buffers): one per thread.
pub struct FaceDetector {
    inner: Box<dyn rustface::Detector>,
}

impl FaceDetector {
    pub fn new() -> Result<FaceDetector> {
        // Parsed once per process, copied for each detector.
        static MODEL: OnceLock<std::result::Result<rustface::Model, String>> = OnceLock::new();
        let model = MODEL
            .get_or_init(|| rustface::read_model(DETECTOR_MODEL).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| anyhow!("the embedded face detector model cannot be read: {e}"))?;
        let mut inner = rustface::create_detector_with_model(model.clone());
        inner.set_min_face_size(20);
        inner.set_score_thresh(SCORE_THRESHOLD);
        inner.set_pyramid_scale_factor(0.8);
        inner.set_slide_window_step(4, 4);
        Ok(FaceDetector { inner })
    }

    /// Faces in a grayscale picture, largest first (ties: top to bottom, then
    /// left to right), in the picture's pixels.
    pub fn detect(&mut self, gray: &GrayImage) -> Vec<Detection> {
        let (w, h) = gray.dimensions();
        let longer = w.max(h);
        let shrunk;
        let (searched, scale) = if longer > DETECT_MAX_SIDE {
            let s = DETECT_MAX_SIDE as f64 / longer as f64;
            let (sw, sh) = (scaled(w, s), scaled(h, s));
            shrunk = image::imageops::resize(gray, sw, sh, FilterType::Triangle);
            (&shrunk, w as f64 / sw as f64)
        } else {
            (gray, 1.0)
        };
        if searched.width().min(searched.height()) < MIN_DETECT_SIDE {
            return vec![];
        }
        let data = rustface::ImageData::new(searched.as_raw(), searched.width(), searched.height());
        let mut found: Vec<Detection> = self
            .inner
            .detect(&data)
            .into_iter()
            .map(|f| {
                let b = f.bbox();
                Detection {
                    x: b.x() as f64 * scale,
                    y: b.y() as f64 * scale,
                    side: b.width() as f64 * scale,
                    score: f.score(),
                }
            })
            .collect();
        found.sort_by(|a, b| {
            b.side
                .total_cmp(&a.side)
                .then(a.y.total_cmp(&b.y))
                .then(a.x.total_cmp(&b.x))
        });
        found
    }

    /// `detect`, and when nothing is found, once more on the picture padded
    /// by a quarter of its longer side all round and upscaled (2x, at most
    /// to `RETRY_MAX_SIDE`): the detector misses most faces that fill their
    /// frame. Boxes are in the original picture's pixels.
    pub fn detect_with_retry(&mut self, gray: &GrayImage) -> Vec<Detection> {
        let found = self.detect(gray);
        if !found.is_empty() || gray.width().max(gray.height()) > RETRY_MAX_SIDE {
            return found;
        }
        let (padded, pad) = pad(gray);
        let longer = padded.width().max(padded.height());
        let zoom = (RETRY_MAX_SIDE as f64 / longer as f64).clamp(1.0, 2.0);
        let big = image::imageops::resize(
            &padded,
            scaled(padded.width(), zoom),
            scaled(padded.height(), zoom),
            FilterType::Triangle,
        );
        let sx = padded.width() as f64 / big.width() as f64;
        let sy = padded.height() as f64 / big.height() as f64;
        self.detect(&big)
            .into_iter()
            .map(|d| Detection {
                x: d.x * sx - pad as f64,
                y: d.y * sy - pad as f64,
                side: d.side * sx,
                score: d.score,
            })
            .collect()
    }
}

fn scaled(v: u32, s: f64) -> u32 {
    ((v as f64 * s).round() as u32).max(1)
}

/// The picture with a border of a quarter of its longer side, filled with
/// its mean gray (a flat border adds no edges the detector could take for a
/// face); returns the border width too.
fn pad(gray: &GrayImage) -> (GrayImage, u32) {
    let (w, h) = gray.dimensions();
    let pad = (w.max(h) / 4).max(1);
    let mean = (gray.as_raw().iter().map(|&v| v as u64).sum::<u64>()
        / gray.as_raw().len().max(1) as u64) as u8;
    let mut out = GrayImage::from_pixel(w + 2 * pad, h + 2 * pad, Luma([mean]));
    image::imageops::replace(&mut out, gray, pad as i64, pad as i64);
    (out, pad)
}

/// The 48x48 face for a detection: a square `CROP_SCALE` times the box, same
/// centre; where it overhangs the picture, the edge pixels are repeated.
/// Resized with Catmull-Rom, which (like every filter of `image`) widens its
/// support when shrinking, so it averages rather than skips pixels.
pub fn crop_face(gray: &GrayImage, d: &Detection) -> Vec<u8> {
    let side = (d.side * CROP_SCALE).round().max(1.0);
    let cx = d.x + d.side / 2.0;
    let cy = d.y + d.side / 2.0;
    let x0 = (cx - side / 2.0).round() as i64;
    let y0 = (cy - side / 2.0).round() as i64;
    let side = side as i64;
    let (w, h) = (gray.width() as i64, gray.height() as i64);
    let inside = x0 >= 0 && y0 >= 0 && x0 + side <= w && y0 + side <= h;
    let square = if inside {
        image::imageops::crop_imm(gray, x0 as u32, y0 as u32, side as u32, side as u32).to_image()
    } else {
        GrayImage::from_fn(side as u32, side as u32, |x, y| {
            let sx = (x0 + x as i64).clamp(0, w - 1) as u32;
            let sy = (y0 + y as i64).clamp(0, h - 1) as u32;
            *gray.get_pixel(sx, sy)
        })
    };
    if square.width() == FACE_SIDE {
        return square.into_raw();
    }
    image::imageops::resize(&square, FACE_SIDE, FACE_SIDE, FilterType::CatmullRom).into_raw()
}

/// How `analyze_image` works.
#[derive(Clone, Copy, Debug)]
pub struct AnalyzeOptions {
    /// Look for faces (false: the whole picture is one face, `--no-detect`).
    pub detect: bool,
    /// Keep the decoded picture in the result (to draw on it).
    pub keep_image: bool,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            detect: true,
            keep_image: false,
        }
    }
}

/// One face of a picture, ready to classify.
#[derive(Clone, Debug)]
pub struct FoundFace {
    /// [x, y, width, height] in the picture's pixels, within the picture.
    pub bbox: [u32; 4],
    /// The detector's score; None for a whole picture.
    pub score: Option<f64>,
    /// The whole picture (its centred square) stands for the face: no
    /// detection (`--no-detect`, or a small picture with no face found).
    pub whole_image: bool,
    /// 48x48 grayscale, row-major.
    pub pixels: Vec<u8>,
}

/// A picture's faces before classification.
#[derive(Clone, Debug)]
pub struct ImageFaces {
    /// Of the upright picture (after the EXIF orientation).
    pub width: u32,
    pub height: u32,
    pub faces: Vec<FoundFace>,
    /// The decoded picture, when `keep_image` was asked for.
    pub image: Option<RgbImage>,
}

/// Decode a picture's bytes and find its faces (see the module's note).
/// Faces come largest first. With no face found: a picture of at most
/// `SMALL_IMAGE_SIDE` on both sides is classified whole (marked
/// `whole_image`); a larger one has no faces.
pub fn analyze_image(
    bytes: &[u8],
    detector: &mut FaceDetector,
    opts: AnalyzeOptions,
) -> Result<ImageFaces> {
    let img = image_input::decode(bytes)?;
    let gray = img.to_luma8();
    let (w, h) = gray.dimensions();
    let detections = if opts.detect {
        detector.detect_with_retry(&gray)
    } else {
        vec![]
    };
    let mut faces: Vec<FoundFace> = detections
        .iter()
        .map(|d| FoundFace {
            bbox: clamp_box(d, w, h),
            score: Some(d.score),
            whole_image: false,
            pixels: crop_face(&gray, d),
        })
        .collect();
    let small = w <= SMALL_IMAGE_SIDE && h <= SMALL_IMAGE_SIDE;
    if faces.is_empty() && (!opts.detect || small) {
        let (x, y, side) = image_input::centre_square(w, h);
        faces.push(FoundFace {
            bbox: [x, y, side, side],
            score: None,
            whole_image: true,
            pixels: image_input::whole_face(&gray),
        });
    }
    Ok(ImageFaces {
        width: w,
        height: h,
        faces,
        image: opts.keep_image.then(|| img.to_rgb8()),
    })
}

/// A detection's box cut to the picture, in whole pixels.
fn clamp_box(d: &Detection, w: u32, h: u32) -> [u32; 4] {
    let x0 = d.x.round().clamp(0.0, w as f64) as u32;
    let y0 = d.y.round().clamp(0.0, h as f64) as u32;
    let x1 = (d.x + d.side).round().clamp(0.0, w as f64) as u32;
    let y1 = (d.y + d.side).round().clamp(0.0, h as f64) as u32;
    [x0, y0, x1 - x0, y1 - y0]
}

// ---------------------------------------------------------------------------
// Sample pictures, from the committed public-domain photos (assets/photos/,
// see its README.md), for `wgfer bench` and the tests.

/// The committed photos: two with a face, two without.
pub static ASTRONAUT_JPG: &[u8] = include_bytes!("../../assets/photos/astronaut.jpg");
pub static GRACE_HOPPER_JPG: &[u8] = include_bytes!("../../assets/photos/grace_hopper.jpg");
pub static CHELSEA_JPG: &[u8] = include_bytes!("../../assets/photos/chelsea.jpg");
pub static COFFEE_JPG: &[u8] = include_bytes!("../../assets/photos/coffee.jpg");

/// A 640x480 photo with one face (the astronaut, scaled to 640 wide, the
/// top 480 rows).
pub fn sample_photo_640x480() -> Result<RgbImage> {
    let astronaut = image_input::decode(ASTRONAUT_JPG)?.to_rgb8();
    let wide = image::imageops::resize(&astronaut, 640, 640, FilterType::Triangle);
    Ok(image::imageops::crop_imm(&wide, 0, 0, 640, 480).to_image())
}

/// A 1920x1280 collage of six 640x640 tiles: five faces (the astronaut and
/// Grace Hopper, each also mirrored, and the astronaut smaller in gray) and
/// the coffee cup (none).
pub fn collage() -> Result<RgbImage> {
    let astronaut = image_input::decode(ASTRONAUT_JPG)?.to_rgb8();
    let hopper = image_input::decode(GRACE_HOPPER_JPG)?.to_rgb8();
    let coffee = image_input::decode(COFFEE_JPG)?.to_rgb8();
    let small_gray = image::DynamicImage::ImageLuma8(image::imageops::grayscale(&astronaut));
    let tiles = [
        astronaut.clone(),
        hopper.clone(),
        coffee,
        image::imageops::flip_horizontal(&hopper),
        image::imageops::flip_horizontal(&astronaut),
        small_gray.resize(400, 400, FilterType::Triangle).to_rgb8(),
    ];
    let mut out = RgbImage::from_pixel(1920, 1280, image::Rgb([118, 118, 118]));
    for (i, tile) in tiles.iter().enumerate() {
        // Each picture fitted into its 640x640 cell (never enlarged beyond
        // 640), centred.
        let s = (640.0 / tile.width().max(tile.height()) as f64).min(1.25);
        let (w, h) = (scaled(tile.width(), s), scaled(tile.height(), s));
        let fitted = image::imageops::resize(tile, w, h, FilterType::Triangle);
        let x = (i as u32 % 3) * 640 + (640 - w) / 2;
        let y = (i as u32 / 3) * 640 + (640 - h) / 2;
        image::imageops::replace(&mut out, &fitted, x as i64, y as i64);
    }
    Ok(out)
}

/// `collage` as a JPEG file's bytes (quality 90), as a camera would give it.
pub fn collage_jpeg() -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&collage()?)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_model_loads_and_a_blank_picture_has_no_face() {
        let mut d = FaceDetector::new().unwrap();
        assert!(
            d.detect(&GrayImage::from_pixel(200, 150, Luma([128])))
                .is_empty()
        );
        // Smaller than the detector's window: not searched, no panic.
        assert!(
            d.detect_with_retry(&GrayImage::from_pixel(3, 2, Luma([0])))
                .is_empty()
        );
    }

    #[test]
    fn a_crop_is_the_box_times_1_1_with_edges_repeated() {
        // Columns numbered by their x: the crop's first and last columns tell
        // where it starts and ends.
        let gray = GrayImage::from_fn(200, 100, |x, _| Luma([x as u8]));
        let inside = Detection {
            x: 76.0,
            y: 20.0,
            side: 48.0 / 1.1,
            score: 5.0,
        };
        let face = crop_face(&gray, &inside);
        assert_eq!(face.len(), 48 * 48);
        // A 48-pixel square is not resampled: column j is x = 76 + 21.8 - 24 + j.
        assert_eq!(face[0], 74);
        assert_eq!(face[47], 74 + 47);
        // Overhanging the left edge: the first columns repeat x = 0.
        let edge = Detection { x: -10.0, ..inside };
        let face = crop_face(&gray, &edge);
        assert_eq!(&face[..10], &[0; 10]);
        assert!(face[47] > 20);
    }

    #[test]
    fn boxes_are_cut_to_the_picture() {
        let d = Detection {
            x: -5.0,
            y: 90.0,
            side: 20.0,
            score: 3.0,
        };
        assert_eq!(clamp_box(&d, 100, 100), [0, 90, 15, 10]);
    }
}
