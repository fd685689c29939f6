//! Images given to `wgfer predict`: any PNG or JPEG becomes a 48x48 grayscale
//! face, the form of the FER-2013 pictures the model was trained on.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader};

/// Side of the square faces the model sees.
pub const FACE_SIDE: u32 = 48;
/// Pixels in one face (48 x 48).
pub const FACE_PIXELS: usize = (FACE_SIDE * FACE_SIDE) as usize;
/// Largest decoded image accepted (the `image` crate's default allocation limit).
const MAX_DECODED_BYTES: u64 = 512 << 20;

/// Read a PNG or JPEG of any size and colour type, convert to grayscale
/// (luma), resize to 48x48, return 2304 u8 pixels row-major.
///
/// The format is recognised from the file's content (the extension is only a
/// fallback). A JPEG's EXIF orientation is applied, so phone photos come out
/// upright. A non-square picture is first cropped to its centred square, so
/// the face keeps its proportions (FER-2013 faces are square crops); then the
/// square is resized with a triangle filter, which averages over the whole
/// source area when shrinking. An alpha channel is ignored.
pub fn load_face(path: &Path) -> Result<Vec<u8>> {
    let name = path.display();
    let reader = ImageReader::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{name}: no such file"),
        _ => anyhow!("{name}: cannot open the image: {e}"),
    })?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| anyhow!("{name}: cannot read the image: {e}"))?;
    if reader.format().is_none() {
        bail!("{name}: not a PNG or JPEG image (its content and extension say neither)");
    }
    let not_image = |e: image::ImageError| {
        anyhow!("{name}: cannot decode the image (PNG and JPEG are supported): {e}")
    };
    let mut decoder = reader.into_decoder().map_err(not_image)?;
    // `into_decoder` does not apply the allocation limit that `decode` does:
    // check the decoded size before allocating it.
    let (w, h) = decoder.dimensions();
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        bail!(
            "{name}: the image is too large ({w}x{h} pixels); scale it down below \
             {} MiB of decoded pixels",
            MAX_DECODED_BYTES >> 20
        );
    }
    // A bad orientation tag is not worth refusing a picture for.
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(not_image)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    let face = face_from_image(&img);
    if face.len() != FACE_PIXELS {
        bail!("{name}: the image has no pixels");
    }
    Ok(face)
}

/// Grayscale, centre-crop to a square, resize to 48x48 (empty for an image
/// without pixels). Also used by `wgfer serve` on images it decoded itself.
pub fn face_from_image(img: &DynamicImage) -> Vec<u8> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Vec::new();
    }
    let side = w.min(h);
    // Grayscale first (the smallest copy), then a view of the centred square.
    let gray = img.to_luma8();
    let square = image::imageops::crop_imm(&gray, (w - side) / 2, (h - side) / 2, side, side);
    let small = if side == FACE_SIDE {
        square.to_image()
    } else {
        image::imageops::resize(&*square, FACE_SIDE, FACE_SIDE, FilterType::Triangle)
    };
    small.into_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgb, Rgba};
    use std::fs;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wgfer-image-input-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rgb_png_and_jpeg_of_odd_size_load_to_2304_values() {
        let dir = temp_dir("odd");
        let img = ImageBuffer::from_fn(97, 61, |x, y| {
            Rgb([(x * 2) as u8, (y * 4) as u8, ((x + y) % 256) as u8])
        });
        let png = dir.join("face.png");
        let jpg = dir.join("face.jpg");
        img.save(&png).unwrap();
        img.save(&jpg).unwrap();
        let a = load_face(&png).unwrap();
        let b = load_face(&jpg).unwrap();
        assert_eq!(a.len(), 2304);
        assert_eq!(b.len(), 2304);
        // Same picture, lossy or not: close values.
        let diff: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .sum::<f64>()
            / 2304.0;
        assert!(diff < 6.0, "mean difference {diff}");
        // The content is a gradient, not a constant.
        assert!(a.iter().max() > a.iter().min());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn constant_colour_gives_constant_result() {
        let dir = temp_dir("constant");
        let rgba = ImageBuffer::from_pixel(130, 200, Rgba([200u8, 100, 50, 255]));
        let path = dir.join("c.png");
        rgba.save(&path).unwrap();
        let face = load_face(&path).unwrap();
        assert_eq!(face.len(), 2304);
        assert!(face.iter().all(|&v| v == face[0]), "{:?}", &face[..8]);
        assert!((100..=130).contains(&face[0]), "luma {}", face[0]);

        let gray = ImageBuffer::from_pixel(31, 17, Luma([77u8]));
        let path = dir.join("c.jpeg");
        gray.save(&path).unwrap();
        let face = load_face(&path).unwrap();
        assert!(
            face.iter().all(|&v| v.abs_diff(77) <= 1),
            "{:?}",
            &face[..8]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sixteen_bit_and_tiny_images_load() {
        let dir = temp_dir("sixteen");
        let img: ImageBuffer<Luma<u16>, Vec<u16>> =
            ImageBuffer::from_fn(3, 5, |x, _| Luma([if x == 1 { 65535 } else { 0 }]));
        let path = dir.join("s.png");
        img.save(&path).unwrap();
        let face = load_face(&path).unwrap();
        assert_eq!(face.len(), 2304);
        // A 1x1 picture is upscaled to a constant face.
        let one = ImageBuffer::from_pixel(1, 1, Luma([9u8]));
        let path = dir.join("one.png");
        one.save(&path).unwrap();
        assert_eq!(load_face(&path).unwrap(), vec![9u8; 2304]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exact_48x48_grayscale_is_unchanged() {
        let dir = temp_dir("exact");
        let pixels: Vec<u8> = (0..2304).map(|i| (i * 7 % 251) as u8).collect();
        let img = ImageBuffer::<Luma<u8>, _>::from_raw(48, 48, pixels.clone()).unwrap();
        let path = dir.join("exact.png");
        img.save(&path).unwrap();
        assert_eq!(load_face(&path).unwrap(), pixels);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_images_are_refused_with_the_file_name() {
        let dir = temp_dir("text");
        let path = dir.join("notes.png");
        fs::write(&path, "this is not a picture\n").unwrap();
        let msg = format!("{:#}", load_face(&path).unwrap_err());
        assert!(msg.contains("notes.png"), "{msg}");

        let path = dir.join("notes.txt");
        fs::write(&path, "hello").unwrap();
        let msg = format!("{:#}", load_face(&path).unwrap_err());
        assert!(
            msg.contains("notes.txt") && msg.contains("not a PNG or JPEG"),
            "{msg}"
        );

        // A real PNG cut short (before its pixel data ends; losing only the
        // final IEND chunk still leaves a complete picture).
        let img = ImageBuffer::from_pixel(40, 40, Rgb([1u8, 2, 3]));
        let good = dir.join("good.png");
        img.save(&good).unwrap();
        let bytes = fs::read(&good).unwrap();
        let cut = dir.join("cut.png");
        for len in [0, 8, 20, 40, bytes.len() / 2] {
            fs::write(&cut, &bytes[..len]).unwrap();
            let msg = format!("{:#}", load_face(&cut).unwrap_err());
            assert!(msg.contains("cut.png"), "len {len}: {msg}");
        }
        // Unsupported format (a BMP header).
        let bmp = dir.join("x.bmp");
        fs::write(&bmp, b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0").unwrap();
        let msg = format!("{:#}", load_face(&bmp).unwrap_err());
        assert!(msg.contains("x.bmp"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn huge_claimed_dimensions_are_refused_not_allocated() {
        let dir = temp_dir("huge");
        let path = dir.join("huge.png");
        ImageBuffer::from_pixel(4, 4, Rgb([9u8, 9, 9]))
            .save(&path)
            .unwrap();
        let mut bytes = fs::read(&path).unwrap();
        // IHDR data starts at byte 16: width, height (big-endian u32).
        bytes[16..20].copy_from_slice(&200_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&200_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        fs::write(&path, &bytes).unwrap();
        let msg = format!("{:#}", load_face(&path).unwrap_err());
        assert!(
            msg.contains("huge.png") && msg.contains("too large"),
            "{msg}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_and_directory_are_refused() {
        let msg = format!(
            "{:#}",
            load_face(Path::new("/no/such/face.png")).unwrap_err()
        );
        assert_eq!(msg, "/no/such/face.png: no such file");
        let dir = temp_dir("isdir");
        let msg = format!("{:#}", load_face(&dir).unwrap_err());
        assert!(msg.contains("wgfer-image-input-isdir"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
