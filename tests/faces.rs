//! Faces in real photos (the public-domain pictures in assets/photos/): the
//! detector finds the right faces and no others, boxes lie inside the
//! picture, crops are classified in shared GPU batches, the EXIF orientation
//! of a phone's JPEG is applied, and the bench's photo row runs.

use image::{GrayImage, Luma, RgbImage};
use wgfer::engine::Gpu;
use wgfer::fer::faces::{
    ASTRONAUT_JPG, AnalyzeOptions, CHELSEA_JPG, COFFEE_JPG, FaceDetector, GRACE_HOPPER_JPG,
    ImageFaces, analyze_image, collage, collage_jpeg,
};
use wgfer::fer::infer::Tta;
use wgfer::fer::model::Model;
use wgfer::fer::models::{FER5, ModelChoice};
use wgfer::fer::predict::{bench_photos, classify_images, predict_image_bytes};

/// The shipped 5-class model (its classes are what these tests name).
fn shipped_model() -> (Model, Vec<String>) {
    let gpu = Gpu::new(None).expect("tests need a GPU adapter (lavapipe will do)");
    let fer5 = ModelChoice::named(FER5).unwrap().resolve().unwrap();
    Model::load(&gpu, &fer5.path).expect("models/fer5.safetensors")
}

fn analyze(bytes: &[u8]) -> ImageFaces {
    let mut detector = FaceDetector::new().unwrap();
    analyze_image(bytes, &mut detector, AnalyzeOptions::default()).unwrap()
}

fn assert_boxes_inside(img: &ImageFaces) {
    for f in &img.faces {
        let [x, y, w, h] = f.bbox;
        assert!(w > 0 && h > 0, "{:?}", f.bbox);
        assert!(
            x + w <= img.width && y + h <= img.height,
            "{:?} in {}x{}",
            f.bbox,
            img.width,
            img.height
        );
    }
}

#[test]
fn one_face_in_each_portrait_none_in_the_cat_or_the_coffee() {
    for (name, bytes, faces) in [
        ("astronaut", ASTRONAUT_JPG, 1),
        ("grace hopper", GRACE_HOPPER_JPG, 1),
        ("chelsea (a cat)", CHELSEA_JPG, 0),
        ("coffee", COFFEE_JPG, 0),
    ] {
        let img = analyze(bytes);
        assert_eq!(img.faces.len(), faces, "{name}: {:?}", img.faces);
        assert_boxes_inside(&img);
        for f in &img.faces {
            assert!(!f.whole_image && f.score.unwrap() > 2.0);
            assert_eq!(f.pixels.len(), 48 * 48);
        }
    }
    // The astronaut's face: the box lies on her face (measured by hand:
    // about x 180..270, y 70..160 of the 512x512 picture).
    let astronaut = analyze(ASTRONAUT_JPG);
    let [x, y, w, h] = astronaut.faces[0].bbox;
    let (cx, cy) = (x + w / 2, y + h / 2);
    assert!(
        (200..250).contains(&cx) && (95..135).contains(&cy),
        "{x} {y} {w} {h}"
    );
    assert!((70..130).contains(&w), "{w}");
}

#[test]
fn the_collage_has_five_faces_largest_first_and_none_on_the_coffee() {
    let img = analyze(&collage_jpeg().unwrap());
    assert_eq!((img.width, img.height), (1920, 1280));
    assert_eq!(img.faces.len(), 5, "{:?}", img.faces);
    assert_boxes_inside(&img);
    // One face per picture cell but the coffee's (top right).
    let mut cells: Vec<u32> = img
        .faces
        .iter()
        .map(|f| (f.bbox[0] + f.bbox[2] / 2) / 640 + 3 * ((f.bbox[1] + f.bbox[3] / 2) / 640))
        .collect();
    cells.sort();
    assert_eq!(cells, [0, 1, 3, 4, 5]);
    let sides: Vec<u32> = img.faces.iter().map(|f| f.bbox[2]).collect();
    assert!(sides.windows(2).all(|s| s[0] >= s[1]), "{sides:?}");
}

#[test]
fn the_astronaut_smiles_and_all_faces_share_one_gpu_batch() {
    let (model, names) = shipped_model();
    let mut detector = FaceDetector::new().unwrap();
    let report = predict_image_bytes(
        "astronaut.jpg",
        ASTRONAUT_JPG,
        &mut detector,
        &model,
        &names,
        AnalyzeOptions::default(),
        Tta::None,
    )
    .unwrap();
    assert_eq!(report.faces.len(), 1);
    assert_eq!(report.faces[0].prediction, "happiness", "{report:?}");
    assert!(report.faces[0].probabilities.best().1 > 0.8, "{report:?}");

    // Seven faces of three pictures: as many dispatches as for one face.
    let pictures: Vec<ImageFaces> = [ASTRONAUT_JPG, GRACE_HOPPER_JPG]
        .iter()
        .map(|b| analyze(b))
        .chain([analyze(&collage_jpeg().unwrap())])
        .collect();
    let refs: Vec<&ImageFaces> = pictures.iter().collect();
    let one = classify_images(&model, &refs[..1], Tta::None).unwrap();
    let before = model.gpu.stats().dispatches;
    classify_images(&model, &refs[..1], Tta::None).unwrap();
    let single = model.gpu.stats().dispatches - before;
    let before = model.gpu.stats().dispatches;
    let all = classify_images(&model, &refs, Tta::None).unwrap();
    let batched = model.gpu.stats().dispatches - before;
    assert_eq!(
        batched, single,
        "7 faces took {batched} dispatches, 1 took {single}"
    );
    assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 5]);
    // Batched or alone, the astronaut gets the same answer.
    for (a, b) in all[0][0].iter().zip(&one[0][0]) {
        assert!((a - b).abs() < 1e-5, "{:?} vs {:?}", all[0][0], one[0][0]);
    }
}

/// A JPEG of `img` with an EXIF APP1 segment whose orientation tag is `o`
/// (1..8), inserted right after the start-of-image marker, as a camera writes it.
fn jpeg_with_orientation(img: &RgbImage, o: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(img)
        .unwrap();
    // TIFF header (big-endian), one IFD entry: tag 0x0112, type SHORT, count 1.
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    exif.extend_from_slice(&o.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&(exif.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn a_phone_photo_stored_sideways_is_turned_upright() {
    // A picture white in its left third, stored with orientation 6 ("turn
    // 90 degrees clockwise to show"): upright, it is taller than wide and
    // white at the top.
    let img = RgbImage::from_fn(90, 60, |x, _| {
        image::Rgb(if x < 30 { [255; 3] } else { [0; 3] })
    });
    let upright = wgfer::fer::image_input::decode(&jpeg_with_orientation(&img, 6))
        .unwrap()
        .to_luma8();
    assert_eq!(upright.dimensions(), (60, 90));
    assert!(upright.get_pixel(30, 10).0[0] > 200 && upright.get_pixel(30, 80).0[0] < 50);

    // The astronaut stored turned a quarter counter-clockwise: the detector
    // (frontal faces only) finds her only if the tag is applied.
    let astronaut = image::load_from_memory(ASTRONAUT_JPG).unwrap().to_rgb8();
    let sideways = image::imageops::rotate270(&astronaut);
    assert!(
        analyze(&jpeg_with_orientation(&sideways, 1))
            .faces
            .is_empty()
    );
    let found = analyze(&jpeg_with_orientation(&sideways, 6));
    assert_eq!((found.width, found.height), (512, 512));
    assert_eq!(found.faces.len(), 1);
    let straight = analyze(ASTRONAUT_JPG);
    for (a, b) in found.faces[0].bbox.iter().zip(straight.faces[0].bbox) {
        assert!(
            a.abs_diff(b) <= 4,
            "{:?} vs {:?}",
            found.faces[0].bbox,
            straight.faces[0].bbox
        );
    }
}

#[test]
fn a_small_picture_without_a_face_is_classified_whole_a_large_one_not() {
    let png = |w, h| {
        let mut bytes = Vec::new();
        image::DynamicImage::ImageLuma8(GrayImage::from_pixel(w, h, Luma([90])))
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    };
    let small = analyze(&png(100, 80));
    assert_eq!(small.faces.len(), 1);
    assert!(small.faces[0].whole_image && small.faces[0].score.is_none());
    assert_eq!(small.faces[0].bbox, [10, 0, 80, 80]);
    assert!(analyze(&png(300, 200)).faces.is_empty());
    // --no-detect: the whole picture, face or not.
    let mut detector = FaceDetector::new().unwrap();
    let opts = AnalyzeOptions {
        detect: false,
        keep_image: true,
    };
    let whole = analyze_image(ASTRONAUT_JPG, &mut detector, opts).unwrap();
    assert_eq!(whole.faces.len(), 1);
    assert_eq!(whole.faces[0].bbox, [0, 0, 512, 512]);
    assert!(whole.image.is_some_and(|i| i.dimensions() == (512, 512)));
}

#[test]
fn a_cropped_fer_face_is_found_again_on_the_retry() {
    // FER-2013 faces fill their 48x48 frame: the detector misses most of
    // them as they are, and finds most once padded and enlarged.
    let csv = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/emotion-sample.csv"),
    )
    .expect("../shared/data/emotion-sample.csv (the test data) is missing");
    let mut detector = FaceDetector::new().unwrap();
    let (mut first, mut retried) = (0, 0);
    for line in csv.lines().skip(1).take(50) {
        let px: Vec<u8> = line
            .split(',')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        let face = GrayImage::from_raw(48, 48, px).unwrap();
        first += !detector.detect(&face).is_empty() as usize;
        retried += !detector.detect_with_retry(&face).is_empty() as usize;
    }
    assert!(first < 10, "{first} of 50 found without the retry");
    assert!(retried >= 35, "{retried} of 50 found with the retry");
}

#[test]
fn the_bench_photo_row_runs() {
    let (model, _) = shipped_model();
    let b = bench_photos(&model, 1).unwrap();
    assert_eq!(b.faces_found, 5);
    assert!(b.detect_640x480_ms > 0.0 && b.end_to_end_1920x1280_ms > b.detect_640x480_ms);
    assert!(b.decode_ms > 0.0 && b.detect_ms > 0.0 && b.crop_ms > 0.0 && b.classify_ms > 0.0);
    assert_eq!(collage().unwrap().dimensions(), (1920, 1280));
}
