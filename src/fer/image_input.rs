//! Pictures given to `wgfer predict`: bytes of a PNG, JPEG, WebP or BMP file
//! become an upright image (the EXIF orientation of a phone's JPEG applied),
//! after a check of the pixel count read from the file's header, so that a
//! decompression bomb is refused before anything is allocated for it.

use std::io::Cursor;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader};

/// Side of the square faces the model sees.
pub const FACE_SIDE: u32 = crate::fer::data::SIDE as u32;
/// Pixels in one face (48 x 48).
pub const FACE_PIXELS: usize = (FACE_SIDE * FACE_SIDE) as usize;
/// Largest picture accepted, in pixels (width x height): 100 megapixels, more
/// than any phone camera gives. The header's dimensions are checked against
/// it before decoding, so a small file that claims 30,000 x 30,000 pixels is
/// refused without allocating its 2.7 GB.
pub const MAX_PIXELS: u64 = 100_000_000;
/// Largest file read, in bytes (1 GiB): more than any picture within
/// `MAX_PIXELS` needs; checked before reading, so a huge file is not loaded.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// The formats `decode` reads, for messages.
pub const FORMATS: &str = "PNG, JPEG, WebP or BMP";

/// Decode an image file's bytes (the format is recognised from its content),
/// refusing more than `MAX_PIXELS` before decoding and applying the EXIF
/// orientation. Errors say what is wrong without naming the file: callers add it.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow!("cannot read the image: {e}"))?;
    match reader.format() {
        None => bail!("not an image this tool reads ({FORMATS})"),
        Some(f) if !f.reading_enabled() => {
            bail!("{f:?} images are not supported (only {FORMATS})")
        }
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            // The JPEG decoder fills a cut file's missing rows with gray.
            bail!("the JPEG is truncated (no end-of-image marker after its last scan)")
        }
        Some(_) => {}
    }
    let not_image = |e: image::ImageError| anyhow!("cannot decode the image: {e}");
    // `into_decoder` reads the header only.
    let mut decoder = reader.into_decoder().map_err(not_image)?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > MAX_PIXELS {
        bail!(
            "the image is too large: {w}x{h} pixels is over the limit of {} megapixels",
            MAX_PIXELS / 1_000_000
        );
    }
    if w == 0 || h == 0 {
        bail!("the image has no pixels ({w}x{h})");
    }
    // A bad orientation tag is not worth refusing a picture for.
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(not_image)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img)
}

/// Whether a JPEG's end-of-image marker (FF D9) follows its last
/// start-of-scan (FF DA). Compressed data never holds an FF followed by
/// these bytes, and an EXIF thumbnail's own markers come before the picture's
/// scans, so a file cut short has no FF D9 after its last FF DA.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// The whole picture as one face: grayscale, its centred square, resized to
/// 48x48 (2304 u8 pixels, row-major). This is `--no-detect` and the fallback
/// for small pictures in which no face is found.
pub fn whole_face(gray: &GrayImage) -> Vec<u8> {
    let (x, y, side) = centre_square(gray.width(), gray.height());
    let square = image::imageops::crop_imm(gray, x, y, side, side);
    if side == FACE_SIDE {
        return square.to_image().into_raw();
    }
    image::imageops::resize(&*square, FACE_SIDE, FACE_SIDE, FilterType::Triangle).into_raw()
}

/// The centred square of a `w` x `h` picture: (x, y, side).
pub fn centre_square(w: u32, h: u32) -> (u32, u32, u32) {
    let side = w.min(h);
    ((w - side) / 2, (h - side) / 2, side)
}

/// Read a picture file and make its whole area one 48x48 face (see
/// `whole_face`); errors name the file.
pub fn load_face(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_file(path)?;
    let img = decode(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    Ok(whole_face(&img.to_luma8()))
}

/// A file's bytes, with a message naming it when it cannot be read.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let name = path.display();
    if path.is_dir() {
        bail!("{name}: is a directory");
    }
    if let Ok(meta) = std::fs::metadata(path)
        && meta.len() > MAX_FILE_BYTES
    {
        bail!(
            "{name}: the file is too large ({} MiB; pictures over {} MiB are not read)",
            meta.len() >> 20,
            MAX_FILE_BYTES >> 20
        );
    }
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{name}: no such file"),
        _ => anyhow!("{name}: cannot read the file: {e}"),
    })
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
    fn webp_and_bmp_decode() {
        let img = ImageBuffer::from_fn(31, 17, |x, y| Rgb([(x * 8) as u8, (y * 15) as u8, 7]));
        for format in [image::ImageFormat::WebP, image::ImageFormat::Bmp] {
            let mut bytes = Vec::new();
            DynamicImage::ImageRgb8(img.clone())
                .write_to(&mut Cursor::new(&mut bytes), format)
                .unwrap();
            let back = decode(&bytes).unwrap().to_rgb8();
            assert_eq!(back, img, "{format:?} round trip");
        }
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
        assert!(
            msg.contains("notes.png") && msg.contains("not an image"),
            "{msg}"
        );

        let path = dir.join("empty.jpg");
        fs::write(&path, "").unwrap();
        let msg = format!("{:#}", load_face(&path).unwrap_err());
        assert!(msg.contains("empty.jpg: the file is empty"), "{msg}");

        // A real PNG cut short (before its pixel data ends; losing only the
        // final IEND chunk still leaves a complete picture).
        let img = ImageBuffer::from_pixel(40, 40, Rgb([1u8, 2, 3]));
        let good = dir.join("good.png");
        img.save(&good).unwrap();
        let bytes = fs::read(&good).unwrap();
        let cut = dir.join("cut.png");
        for len in [8, 20, 40, bytes.len() / 2] {
            fs::write(&cut, &bytes[..len]).unwrap();
            let msg = format!("{:#}", load_face(&cut).unwrap_err());
            assert!(msg.contains("cut.png"), "len {len}: {msg}");
        }
        // A JPEG cut short anywhere after its header.
        let jpg = dir.join("good.jpg");
        img.save(&jpg).unwrap();
        let bytes = fs::read(&jpg).unwrap();
        assert!(load_face(&jpg).is_ok());
        for len in [bytes.len() - 2, bytes.len() * 3 / 4, 200] {
            fs::write(&cut, &bytes[..len]).unwrap();
            let msg = format!("{:#}", load_face(&cut).unwrap_err());
            assert!(msg.contains("cut.png"), "len {len}: {msg}");
        }
        // A format the tool does not read (a TIFF header).
        let tif = dir.join("x.tif");
        fs::write(&tif, b"II*\0\x08\0\0\0\0\0").unwrap();
        let msg = format!("{:#}", load_face(&tif).unwrap_err());
        assert!(msg.contains("x.tif"), "{msg}");
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
        bytes[16..20].copy_from_slice(&30_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&30_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        fs::write(&path, &bytes).unwrap();
        let msg = format!("{:#}", load_face(&path).unwrap_err());
        assert!(
            msg.contains("huge.png") && msg.contains("too large") && msg.contains("30000x30000"),
            "{msg}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_over_the_size_limit_is_not_read() {
        let dir = temp_dir("big-file");
        let path = dir.join("big.jpg");
        // Sparse: takes no disk space.
        fs::File::create(&path)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let msg = format!("{:#}", read_file(&path).unwrap_err());
        assert!(
            msg.contains("big.jpg") && msg.contains("too large"),
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
