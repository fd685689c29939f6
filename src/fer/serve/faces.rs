//! The CPU step of a request: the uploaded bytes become the faces to
//! classify. It runs on the blocking pool, beside the GPU worker.

use std::cell::RefCell;
use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::error::HttpError;
use crate::fer::faces::{AnalyzeOptions, FaceDetector, ImageFaces, analyze_decoded};

thread_local! {
    /// The detector keeps scratch buffers and is not `Send`: one per thread
    /// of the blocking pool, made on its first request.
    static DETECTOR: RefCell<Option<FaceDetector>> = const { RefCell::new(None) };
}

/// Decode `bytes` (PNG, JPEG or WebP, recognised by content) and find its
/// faces as `wgfer predict` does; with `detect` false the whole image is one
/// face. An image of more than `max_pixels` pixels is refused from its
/// header, before decoding.
pub fn image_to_faces(
    bytes: &[u8],
    detect: bool,
    max_pixels: u64,
) -> Result<ImageFaces, HttpError> {
    let image = decode(bytes, max_pixels)?;
    let opts = AnalyzeOptions {
        detect,
        keep_image: false,
    };
    DETECTOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            let detector =
                FaceDetector::new().map_err(|e| HttpError::internal(format!("{e:#}")))?;
            *slot = Some(detector);
        }
        let detector = slot.as_mut().expect("made above");
        Ok(analyze_decoded(image, detector, opts))
    })
}

/// Bytes to pixels, upright (a JPEG's EXIF orientation applied), refusing
/// what is not an image (400) and what is too large to decode (413) from the
/// dimensions in its header.
fn decode(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, HttpError> {
    if bytes.is_empty() {
        return Err(HttpError::bad_request(
            "the body is empty: send the image's bytes (PNG, JPEG or WebP), \
             or a multipart form with an `image` field",
        ));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| HttpError::bad_request(format!("cannot read the image: {e}")))?;
    if reader.format().is_none() {
        return Err(HttpError::bad_request(
            "the body is not an image (PNG, JPEG and WebP are supported)",
        ));
    }
    let corrupt = |e: image::ImageError| {
        HttpError::bad_request(format!(
            "cannot decode the image (truncated or corrupt?): {e}"
        ))
    };
    // Reading the header only: nothing of the pixels is allocated yet.
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(HttpError::too_large(format!(
            "the image is {w}x{h} = {pixels} pixels, more than this server accepts \
             ({max_pixels}, its --max-pixels); scale it down"
        )));
    }
    // A bad orientation tag is not worth refusing a picture for.
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    if let Some(o) = orientation {
        image.apply_orientation(o);
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fer::image_input::FACE_PIXELS;
    use axum::http::StatusCode;
    use image::{ImageBuffer, ImageFormat, Luma, Rgb};

    fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(vec![]);
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_48x48_gray_png_is_its_own_face() {
        let pixels: Vec<u8> = (0..FACE_PIXELS).map(|i| (i * 7 % 251) as u8).collect();
        let img = ImageBuffer::<Luma<u8>, _>::from_raw(48, 48, pixels.clone()).unwrap();
        let found = image_to_faces(&encode(img.into(), ImageFormat::Png), false, 10_000).unwrap();
        assert_eq!((found.width, found.height), (48, 48));
        assert_eq!(found.faces.len(), 1);
        assert_eq!(found.faces[0].bbox, [0, 0, 48, 48]);
        assert_eq!(found.faces[0].score, None);
        assert_eq!(found.faces[0].pixels, pixels);
    }

    /// A wide picture's face is its centred square, and JPEG and WebP decode.
    #[test]
    fn wide_jpeg_and_webp_give_the_centred_square() {
        let img: DynamicImage = ImageBuffer::from_pixel(100, 60, Rgb([90u8, 120, 30])).into();
        for format in [ImageFormat::Jpeg, ImageFormat::WebP] {
            let found = image_to_faces(&encode(img.clone(), format), false, 10_000).unwrap();
            assert_eq!((found.width, found.height), (100, 60), "{format:?}");
            assert_eq!(found.faces[0].bbox, [20, 0, 60, 60], "{format:?}");
            assert_eq!(found.faces[0].pixels.len(), FACE_PIXELS);
        }
    }

    #[test]
    fn bad_bodies_are_400_and_big_images_413() {
        let png = encode(
            ImageBuffer::from_pixel(40, 30, Luma([5u8])).into(),
            ImageFormat::Png,
        );
        let status =
            |bytes: &[u8], max: u64| image_to_faces(bytes, false, max).err().map(|e| e.status);
        assert_eq!(status(b"", 10_000), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            status(b"hello, world", 10_000),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(&png[..png.len() / 2], 10_000),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(status(&png[..12], 10_000), Some(StatusCode::BAD_REQUEST));
        // 1,200 pixels: one over the limit is refused, at the limit accepted.
        assert_eq!(status(&png, 1_199), Some(StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(status(&png, 1_200), None);
    }
}
