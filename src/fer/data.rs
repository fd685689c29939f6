//! FER-2013 CSV loading, train/validation/test splits and epoch orders.
//!
//! Two layouts are accepted:
//! - the tutorial's `emotion, pixels` (5 classes: anger, disgust, sad, happiness, surprise);
//! - Kaggle's `fer2013.csv`, `emotion,pixels,Usage` (7 classes, Usage is one of
//!   Training / PublicTest / PrivateTest).
//!
//! Header names are trimmed (the tutorial's header has a space after the comma) and matched
//! case-insensitively; the columns may come in any order and extra columns are ignored.
//!
//! The file may be the CSV itself, the CSV gzipped (`emotion.csv.gz`), or a tar archive
//! holding it, gzipped or not (Kaggle's `fer2013.tar.gz`). The container is told from the
//! content, not the name, and read as a stream: nothing is unpacked to disk.

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};
use flate2::read::MultiGzDecoder;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Image side in pixels.
pub const SIDE: usize = 48;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;

/// Kaggle's `Usage` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Training,
    PublicTest,
    PrivateTest,
}

impl Usage {
    fn parse(s: &[u8]) -> Option<Usage> {
        let s = s.trim_ascii();
        if s.eq_ignore_ascii_case(b"Training") {
            Some(Usage::Training)
        } else if s.eq_ignore_ascii_case(b"PublicTest") {
            Some(Usage::PublicTest)
        } else if s.eq_ignore_ascii_case(b"PrivateTest") {
            Some(Usage::PrivateTest)
        } else {
            None
        }
    }
}

/// Images and labels held in memory.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `len() * PIXELS` gray values, images row-major one after another.
    pub pixels: Vec<u8>,
    /// One label per image, each `< num_classes`.
    pub labels: Vec<u8>,
    /// `Some` when the file had a Usage column.
    pub usage: Option<Vec<Usage>>,
    /// `LoadOptions::classes` if given, else max label + 1 but at least the layout's
    /// count ([`layout_classes`]: 5, or Kaggle's 7 with a Usage column).
    pub num_classes: usize,
    /// Rows skipped because of `LoadOptions::skip_bad_rows`.
    pub skipped_rows: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i` (`PIXELS` values). Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * PIXELS..(i + 1) * PIXELS]
    }

    /// Number of images per class (`num_classes` entries).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// A new dataset holding the images `idx` (in that order). Keeps `num_classes`;
    /// `skipped_rows` is 0. Panics if an index is out of range (indices from [`split`]
    /// and [`epoch_order`] never are).
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let mut pixels = Vec::with_capacity(idx.len() * PIXELS);
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
        }
        Dataset {
            pixels,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            usage: self
                .usage
                .as_ref()
                .map(|u| idx.iter().map(|&i| u[i]).collect()),
            num_classes: self.num_classes,
            skipped_rows: 0,
        }
    }
}

/// How [`load_csv`] treats the file.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Skip and count bad rows instead of stopping at the first one.
    pub skip_bad_rows: bool,
    /// Number of classes; labels must be below it. `None`: max label + 1, at least the
    /// layout's count (5, or 7 with a Usage column).
    pub classes: Option<usize>,
    /// Read at most this many good rows.
    pub limit: Option<usize>,
}

struct Columns {
    emotion: usize,
    pixels: usize,
    usage: Option<usize>,
}

/// Load a FER CSV (see the module docs for the layouts and containers).
///
/// A bad row (wrong pixel count, a non-number, a value over 255, a bad or out-of-range
/// label, a missing field, an unknown Usage) stops loading with `FILE:LINE: problem`
/// (1-based line numbers, the header is line 1; a CSV inside a tar archive is named
/// `ARCHIVE!MEMBER`), unless `opts.skip_bad_rows` is set, in which case it is skipped
/// and counted in `skipped_rows`.
pub fn load_csv(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    Ok(load_csv_fingerprinted(path, opts)?.0)
}

/// What a data file holds, to recognise it later: the SHA-256 and length of the CSV's
/// bytes once decompressed, so `x.csv` and `x.csv.gz` of the same data agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// Lowercase hex SHA-256 of the whole CSV.
    pub sha256: String,
    /// The CSV's length in bytes.
    pub bytes: u64,
}

/// [`load_csv`], and the fingerprint of the whole CSV (all of it is read, even past
/// `opts.limit`, so that the fingerprint names the file, not the part loaded).
pub fn load_csv_fingerprinted(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(Dataset, DataFingerprint)> {
    with_csv_stream(path, |reader, name| {
        let mut hashing = Hashing {
            inner: reader,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let ds = read_csv(&mut hashing, name, opts)?;
        io::copy(&mut hashing, &mut io::sink())
            .with_context(|| format!("{name}: cannot read the data"))?;
        let sha256 = hashing
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((
            ds,
            DataFingerprint {
                sha256,
                bytes: hashing.bytes,
            },
        ))
    })
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A tar header block is 512 bytes; reading that much tells every container apart.
const BLOCK: usize = 512;

/// Open `path` and hand `f` a stream of the CSV inside it (plain, gzipped, or the first
/// `.csv` member of a tar archive, itself gzipped or not) and the name to use in messages.
fn with_csv_stream<T>(path: &Path, f: impl FnOnce(&mut dyn Read, &str) -> Result<T>) -> Result<T> {
    let name = path.display().to_string();
    let file = File::open(path).with_context(|| format!("cannot open data file {name}"))?;
    let (head, file) = peek(io::BufReader::with_capacity(1 << 16, file), &name)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        // gzip: look again at what it decompresses to.
        let gz = MultiGzDecoder::new(Cursor::new(head).chain(file));
        let (head, gz) = peek(gz, &name)?;
        let mut stream = Cursor::new(head.clone()).chain(gz);
        if is_tar(&head) {
            return from_tar(stream, &name, f);
        }
        return f(&mut stream, &name);
    }
    let mut stream = Cursor::new(head.clone()).chain(file);
    if is_tar(&head) {
        return from_tar(stream, &name, f);
    }
    f(&mut stream, &name)
}

/// Read up to [`BLOCK`] bytes (fewer only at the end of the stream); return them and the
/// rest of the stream.
fn peek<R: Read>(mut r: R, name: &str) -> Result<(Vec<u8>, R)> {
    let mut head = Vec::with_capacity(BLOCK);
    (&mut r)
        .take(BLOCK as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("{name}: cannot read the data"))?;
    Ok((head, r))
}

/// A tar header: the `ustar` magic of POSIX and GNU tar, or (old V7 archives) a
/// checksum that matches: the sum of the block's bytes with the checksum field as spaces.
fn is_tar(block: &[u8]) -> bool {
    if block.len() < BLOCK {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = std::str::from_utf8(&block[148..156]).unwrap_or("");
    let Ok(stored) = u32::from_str_radix(field.trim_matches(|c| c == ' ' || c == '\0'), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                b' ' as u32
            } else {
                b as u32
            }
        })
        .sum();
    stored == sum
}

/// Hand `f` the first `.csv` member of a tar stream, named `ARCHIVE!MEMBER`.
fn from_tar<T>(
    stream: impl Read,
    name: &str,
    f: impl FnOnce(&mut dyn Read, &str) -> Result<T>,
) -> Result<T> {
    let mut archive = tar::Archive::new(stream);
    let broken = || format!("{name}: cannot read the tar archive");
    let mut seen = vec![];
    for entry in archive.entries().with_context(broken)? {
        let mut entry = entry.with_context(broken)?;
        let member = entry.path().with_context(broken)?.into_owned();
        let file_name = member.file_name().map(|n| n.to_string_lossy().into_owned());
        // `._x.csv` is macOS's resource-fork companion of x.csv, not data.
        let is_csv = entry.header().entry_type().is_file()
            && file_name
                .is_some_and(|n| !n.starts_with("._") && n.to_lowercase().ends_with(".csv"));
        if is_csv {
            return f(&mut entry, &format!("{name}!{}", member.display()));
        }
        seen.push(member.display().to_string());
    }
    bail!(
        "{name} is a tar archive with no .csv file in it (it holds: {})",
        if seen.is_empty() {
            "nothing".to_string()
        } else {
            seen.join(", ")
        }
    )
}

/// Like [`load_csv`], from any reader; `name` is used in messages (the fuzz
/// target feeds bytes through here).
pub fn read_csv<R: std::io::Read>(reader: R, name: &str, opts: &LoadOptions) -> Result<Dataset> {
    if opts.classes == Some(0) {
        bail!("the number of classes must be at least 1");
    }
    if opts.classes.is_some_and(|c| c > 256) {
        bail!("at most 256 classes are supported (labels are stored as bytes)");
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(reader);

    let headers = rdr
        .byte_headers()
        .with_context(|| format!("{name}: cannot read the CSV header"))?
        .clone();
    if headers.iter().all(|h| h.trim_ascii().is_empty()) {
        bail!("{name} is empty: expected a header line `emotion,pixels` and data rows");
    }
    let find = |want: &str| {
        headers
            .iter()
            .position(|h| h.trim_ascii().eq_ignore_ascii_case(want.as_bytes()))
    };
    let found = || {
        headers
            .iter()
            .map(|h| format!("'{}'", String::from_utf8_lossy(h.trim_ascii())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cols = Columns {
        emotion: find("emotion").with_context(|| {
            format!(
                "{name}:1: no `emotion` column in the header (found {}); expected `emotion,pixels` or `emotion,pixels,Usage`",
                found()
            )
        })?,
        pixels: find("pixels").with_context(|| {
            format!(
                "{name}:1: no `pixels` column in the header (found {}); expected `emotion,pixels` or `emotion,pixels,Usage`",
                found()
            )
        })?,
        usage: find("usage"),
    };
    let min_fields = 1 + cols.emotion.max(cols.pixels).max(cols.usage.unwrap_or(0));

    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut pixels: Vec<u8> = Vec::new();
    let mut labels: Vec<u8> = Vec::new();
    let mut usage: Option<Vec<Usage>> = cols.usage.map(|_| Vec::new());
    let mut skipped = 0usize;
    let mut rows = 0usize;
    let mut rec = csv::ByteRecord::new();
    while labels.len() < limit {
        let more = rdr
            .read_byte_record(&mut rec)
            .with_context(|| format!("{name}: cannot read the CSV data"))?;
        if !more {
            break;
        }
        rows += 1;
        let line = rec.position().map_or(0, |p| p.line());
        let before = pixels.len();
        match parse_row(&rec, &cols, min_fields, opts.classes, &mut pixels) {
            Ok((label, u)) => {
                labels.push(label);
                if let (Some(us), Some(u)) = (usage.as_mut(), u) {
                    us.push(u);
                }
            }
            Err(msg) => {
                pixels.truncate(before);
                if opts.skip_bad_rows {
                    skipped += 1;
                } else {
                    bail!("{name}:{line}: {msg}");
                }
            }
        }
    }
    if rows == 0 && opts.limit != Some(0) {
        bail!("{name} has a header but no data rows");
    }
    if labels.is_empty() && opts.limit != Some(0) {
        bail!("{name}: all {skipped} data rows are bad (skipped); nothing to load");
    }
    let max_label = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let layout = if usage.is_some() { 7 } else { 5 };
    Ok(Dataset {
        pixels,
        labels,
        usage,
        num_classes: opts.classes.unwrap_or(max_label.max(layout)),
        skipped_rows: skipped,
    })
}

fn parse_row(
    rec: &csv::ByteRecord,
    cols: &Columns,
    min_fields: usize,
    classes: Option<usize>,
    pixels: &mut Vec<u8>,
) -> std::result::Result<(u8, Option<Usage>), String> {
    if rec.len() < min_fields {
        return Err(format!(
            "short line: {} field(s), expected at least {min_fields} (emotion, pixels{})",
            rec.len(),
            if cols.usage.is_some() { ", Usage" } else { "" }
        ));
    }
    let label = parse_label(&rec[cols.emotion], classes)?;
    let usage = match cols.usage {
        Some(c) => Some(Usage::parse(&rec[c]).ok_or_else(|| {
            format!(
                "unknown Usage '{}' (expected Training, PublicTest or PrivateTest)",
                shown(&rec[c])
            )
        })?),
        None => None,
    };
    parse_pixels(&rec[cols.pixels], pixels)?;
    Ok((label, usage))
}

/// A field for an error message: trimmed, lossy UTF-8, cut to 20 characters.
fn shown(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b.trim_ascii());
    if s.chars().count() > 20 {
        format!("{}...", s.chars().take(20).collect::<String>())
    } else {
        s.into_owned()
    }
}

fn parse_label(field: &[u8], classes: Option<usize>) -> std::result::Result<u8, String> {
    let f = field.trim_ascii();
    if f.is_empty() {
        return Err("empty emotion label".into());
    }
    if f[0] == b'-' && f.len() > 1 && f[1..].iter().all(u8::is_ascii_digit) {
        return Err(format!("label {} is negative", shown(f)));
    }
    if !f.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "label '{}' is not a non-negative integer",
            shown(f)
        ));
    }
    let v = f.iter().try_fold(0usize, |acc, &d| {
        acc.checked_mul(10)?.checked_add((d - b'0') as usize)
    });
    let max = classes.unwrap_or(256);
    match v {
        Some(v) if v < max => Ok(v as u8),
        _ => Err(match classes {
            Some(c) => format!(
                "label {} is out of range for {c} classes (0..={})",
                shown(f),
                c - 1
            ),
            None => format!("label {} is out of range (at most 255)", shown(f)),
        }),
    }
}

#[inline]
fn is_sep(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\r' || b == b'\n'
}

/// Parse exactly `PIXELS` whitespace-separated values 0..=255, appending them to `out`.
/// On error `out` may hold a partial image (the caller truncates).
fn parse_pixels(field: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), String> {
    let n = field.len();
    let mut i = 0;
    let mut count = 0usize;
    while i < n {
        if is_sep(field[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let mut v: u32 = 0;
        while i < n && !is_sep(field[i]) {
            let d = field[i].wrapping_sub(b'0');
            if d > 9 {
                while i < n && !is_sep(field[i]) {
                    i += 1;
                }
                return Err(format!(
                    "pixel value {} is '{}', not a number 0..255",
                    count + 1,
                    shown(&field[start..i])
                ));
            }
            v = (v * 10 + d as u32).min(1000);
            i += 1;
        }
        if v > 255 {
            return Err(format!(
                "pixel value {} is {}, over 255",
                count + 1,
                shown(&field[start..i])
            ));
        }
        if count < PIXELS {
            out.push(v as u8);
        }
        count += 1;
    }
    if count != PIXELS {
        return Err(format!("expected {PIXELS} pixel values, found {count}"));
    }
    Ok(())
}

/// Index lists into a [`Dataset`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Splits {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
}

/// With a Usage column: Training -> train, PublicTest -> validation, PrivateTest -> test
/// (each in file order). A file without PrivateTest rows (Kaggle's training copy) has its
/// PublicTest rows halved with `seed`: the first half validation, the rest test.
///
/// Without: the tutorial's seeded random split. The indices are shuffled with `seed`;
/// `n_held = ceil(0.1 * n)` (computed in f64 exactly as sklearn's
/// `train_test_split(test_size=0.1)` does) are held out, the rest is train (in shuffled
/// order). The held-out part is split again like `train_test_split(test_size=0.5)`: test gets
/// `ceil(n_held / 2)`, validation the rest (`floor`). For n = 22133: 19919 / 1107 / 1107.
///
/// A split left empty is an error naming it. Same seed, same split.
pub fn split(ds: &Dataset, seed: u64) -> Result<Splits> {
    let n = ds.len();
    if let Some(usage) = &ds.usage {
        let pick = |u: Usage| -> Vec<usize> { (0..n).filter(|&i| usage[i] == u).collect() };
        let (mut validation, mut test) = (pick(Usage::PublicTest), pick(Usage::PrivateTest));
        if test.is_empty() && validation.len() >= 2 {
            // Kaggle's file without its PrivateTest rows (the copy people pass
            // around for training): PublicTest is halved, seeded, into
            // validation and test.
            let mut rng = StdRng::seed_from_u64(stream_seed(seed, STREAM_SPLIT, 0));
            validation.shuffle(&mut rng);
            test = validation.split_off(validation.len() / 2);
            validation.sort_unstable();
            test.sort_unstable();
        }
        let s = Splits {
            train: pick(Usage::Training),
            validation,
            test,
        };
        for (split, list, u) in [
            ("train", &s.train, "Training"),
            ("validation", &s.validation, "PublicTest"),
            ("test", &s.test, "PrivateTest"),
        ] {
            if list.is_empty() {
                bail!(
                    "the {split} split is empty: the data has no rows with Usage {u} ({n} rows loaded)"
                );
            }
        }
        return Ok(s);
    }

    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(stream_seed(seed, STREAM_SPLIT, 0));
    perm.shuffle(&mut rng);
    let n_held = ((0.1 * n as f64).ceil() as usize).min(n);
    let n_test = (0.5 * n_held as f64).ceil() as usize;
    let n_val = n_held - n_test;
    let held = &perm[..n_held];
    let s = Splits {
        train: perm[n_held..].to_vec(),
        validation: held[n_test..].to_vec(),
        test: held[..n_test].to_vec(),
    };
    debug_assert_eq!(s.validation.len(), n_val);
    for (split, list) in [
        ("train", &s.train),
        ("validation", &s.validation),
        ("test", &s.test),
    ] {
        if list.is_empty() {
            bail!(
                "the {split} split is empty: {n} rows are too few for the 90% / 5% / 5% random split (at least 11 rows are needed)"
            );
        }
    }
    Ok(s)
}

/// A part of a data set, as `eval --split` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitName {
    All,
    Train,
    Validation,
    Test,
}

/// The rows of `ds` in the named part of its split (made with `seed`).
pub fn select(ds: Dataset, which: SplitName, seed: u64) -> Result<Dataset> {
    if which == SplitName::All {
        return Ok(ds);
    }
    let sp = split(&ds, seed)?;
    let idx = match which {
        SplitName::Train => &sp.train,
        SplitName::Validation => &sp.validation,
        _ => &sp.test,
    };
    Ok(ds.subset(idx))
}

/// Class names for `num_classes`: the tutorial's 5, FER-2013's 7, else `class0..`.
pub fn default_class_names(num_classes: usize) -> Vec<String> {
    let names: &[&str] = match num_classes {
        5 => &["anger", "disgust", "sad", "happiness", "surprise"],
        7 => &[
            "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
        ],
        _ => return (0..num_classes).map(|i| format!("class{i}")).collect(),
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// The class count a file's layout implies: Kaggle's 7 with a Usage column, else the
/// tutorial's 5.
pub fn layout_classes(ds: &Dataset) -> usize {
    if ds.usage.is_some() { 7 } else { 5 }
}

/// The class count a file's layout implies ([`layout_classes`]), from its header alone:
/// 7 when it has a Usage column, else 5. Cheap: no row is read.
pub fn file_layout_classes(path: &Path) -> Result<usize> {
    with_csv_stream(path, |reader, name| {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(reader);
        let headers = rdr
            .byte_headers()
            .with_context(|| format!("{name}: cannot read the CSV header"))?;
        let usage = headers
            .iter()
            .any(|h| h.trim_ascii().eq_ignore_ascii_case(b"usage"));
        Ok(if usage { 7 } else { 5 })
    })
}

/// Refuse weights whose classes are not the data's: the labels would be read as other
/// expressions and the scores would be silently wrong (a 7-class model on the tutorial's
/// 5-class file calls its "sad" rows "fear").
///
/// A CSV names no classes, so the data's classes are what its labels and layout show:
/// every label must be below the weights' count, and that count must be one more than the
/// largest label, or the layout's (5, or 7 with a Usage column; a small file may lack the
/// last classes).
/// The error names both lists. Callers that let the user declare the data's class count
/// (`eval --classes N`) load with that count and skip this check when it equals the weights'.
pub fn check_classes(weights: &[String], ds: &Dataset) -> Result<()> {
    let m = weights.len();
    let seen = ds
        .labels
        .iter()
        .copied()
        .max()
        .map_or(0, |l| l as usize + 1);
    let layout = layout_classes(ds);
    if seen <= m && (seen == m || layout == m) {
        return Ok(());
    }
    let data = seen.max(layout);
    let why = if seen > m {
        format!("it has labels up to {}", seen - 1)
    } else if ds.usage.is_some() {
        "Kaggle's layout, with a Usage column".to_string()
    } else {
        "the tutorial's layout, without a Usage column".to_string()
    };
    bail!(
        "the weights have {m} classes ({}) but the data has {data} ({}; {why}): its labels would \
         be read as other expressions. Use weights trained on this data's classes; if its labels \
         really are the weights' class numbers, say so with --classes {m}",
        weights.join(", "),
        default_class_names(data).join(", "),
    )
}

/// Comma-separated class names (trimmed); there must be exactly `num_classes` distinct,
/// non-empty names.
pub fn parse_class_names(s: &str, num_classes: usize) -> Result<Vec<String>> {
    let names: Vec<String> = s.split(',').map(|p| p.trim().to_string()).collect();
    if names.len() != num_classes {
        bail!(
            "expected {num_classes} comma-separated class names, got {} in '{s}'",
            names.len()
        );
    }
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() {
            bail!("class name {} is empty in '{s}'", i + 1);
        }
        if names[..i].contains(n) {
            bail!("class name '{n}' appears twice in '{s}'");
        }
    }
    Ok(names)
}

/// Stream tags for [`stream_seed`].
pub const STREAM_SPLIT: u64 = 1;
pub const STREAM_EPOCH_ORDER: u64 = 2;
pub const STREAM_AUGMENT: u64 = 3;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A well-mixed RNG seed for one (seed, stream, epoch) so that independent random streams
/// (split, epoch order, augmentation) can be recreated without saved RNG state.
pub fn stream_seed(seed: u64, stream: u64, epoch: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ epoch)
}

/// One deterministic epoch order: a permutation of `0..n` seeded by (seed, epoch), so a
/// resumed run can recreate it without saved RNG state.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(stream_seed(seed, STREAM_EPOCH_ORDER, epoch as u64));
    perm.shuffle(&mut rng);
    perm
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// Write `content` to a unique file in the temp dir.
    fn tmp_csv(content: &str) -> PathBuf {
        let k = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("wgfer-data-test-{}-{k}.csv", std::process::id()));
        std::fs::write(&p, content).unwrap();
        p
    }

    fn pix(seed: usize) -> String {
        (0..PIXELS)
            .map(|i| ((i * 7 + seed * 13) % 256).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn load(content: &str, opts: &LoadOptions) -> Result<Dataset> {
        let p = tmp_csv(content);
        let r = load_csv(&p, opts);
        std::fs::remove_file(&p).ok();
        r
    }

    fn err(content: &str, opts: &LoadOptions) -> String {
        format!("{:#}", load(content, opts).unwrap_err())
    }

    #[test]
    fn header_with_and_without_space() {
        for header in [
            "emotion, pixels",
            "emotion,pixels",
            " Emotion , Pixels ",
            "\u{feff}emotion,pixels",
        ] {
            let csv = format!("{header}\n2,{}\n4,\"{}\"\n", pix(0), pix(1));
            let ds = load(&csv, &LoadOptions::default()).unwrap();
            assert_eq!(ds.len(), 2);
            assert_eq!(ds.labels, vec![2, 4]);
            assert_eq!(ds.num_classes, 5);
            assert!(ds.usage.is_none());
            assert_eq!(ds.image(1)[3], 34);
            assert_eq!(ds.class_counts(), vec![0, 0, 1, 0, 1]);
        }
        // CRLF line endings and extra spaces around pixels.
        let csv = format!("emotion, pixels\r\n1, {} \r\n", pix(2));
        let ds = load(&csv, &LoadOptions::default()).unwrap();
        assert_eq!(ds.labels, vec![1]);
        assert_eq!(ds.image(0)[0], 26);
    }

    #[test]
    fn bad_rows_name_file_line_and_problem() {
        let good = pix(0);
        let short_px = good.rsplit_once(' ').unwrap().0.to_string();
        let cases: Vec<(String, &str)> = vec![
            (
                format!("1,{short_px}"),
                "expected 2304 pixel values, found 2303",
            ),
            (
                format!("1,{good} 5"),
                "expected 2304 pixel values, found 2305",
            ),
            (format!("1,{}", good.replacen("7", "x7", 1)), "not a number"),
            (
                format!("1,{}", good.replacen(" 7 ", " 256 ", 1)),
                "256, over 255",
            ),
            (
                format!("1,{}", good.replacen(" 7 ", " -7 ", 1)),
                "not a number",
            ),
            (format!("9,{good}"), "label 9 is out of range for 5 classes"),
            (format!("-1,{good}"), "label -1 is negative"),
            (
                format!("1.5,{good}"),
                "label '1.5' is not a non-negative integer",
            ),
            (format!(",{good}"), "empty emotion label"),
            ("3".to_string(), "short line"),
        ];
        let opts = LoadOptions {
            classes: Some(5),
            ..Default::default()
        };
        for (bad, want) in cases {
            // Header line 1, good rows on lines 2..=3, the bad one on line 4.
            let csv = format!("emotion, pixels\n0,{good}\n1,{good}\n{bad}\n2,{good}\n");
            let p = tmp_csv(&csv);
            let e = format!("{:#}", load_csv(&p, &opts).unwrap_err());
            let prefix = format!("{}:4: ", p.display());
            assert!(e.starts_with(&prefix), "{e:?} should start with {prefix:?}");
            assert!(e.contains(want), "{e:?} should contain {want:?}");
            std::fs::remove_file(&p).ok();
        }
        // Labels over 255 without a class count.
        let e = err(
            &format!("emotion,pixels\n300,{good}\n"),
            &LoadOptions::default(),
        );
        assert!(e.contains(":2: label 300 is out of range"), "{e}");
        // Unknown Usage value.
        let e = err(
            &format!("emotion,pixels,Usage\n0,{good},Training\n1,{good},Test\n"),
            &LoadOptions::default(),
        );
        assert!(e.contains(":3: unknown Usage 'Test'"), "{e}");
        // Short line in the Usage layout.
        let e = err(
            &format!("emotion,pixels,Usage\n0,{good}\n"),
            &LoadOptions::default(),
        );
        assert!(e.contains(":2: short line"), "{e}");
    }

    #[test]
    fn skip_bad_rows_counts_and_limit() {
        let good = pix(0);
        let csv =
            format!("emotion, pixels\n0,{good}\n7,{good}\n1,1 2 3\n2,{good}\nx,{good}\n3,{good}\n");
        let opts = LoadOptions {
            skip_bad_rows: true,
            classes: Some(5),
            limit: None,
        };
        let ds = load(&csv, &opts).unwrap();
        assert_eq!(ds.labels, vec![0, 2, 3]);
        assert_eq!(ds.skipped_rows, 3);
        assert_eq!(ds.pixels.len(), 3 * PIXELS);
        let ds = load(
            &csv,
            &LoadOptions {
                limit: Some(2),
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!(ds.labels, vec![0, 2]);
        assert_eq!(ds.skipped_rows, 2);
        // All rows bad.
        let e = err("emotion,pixels\n1,1 2\n", &opts);
        assert!(e.contains("all 1 data rows are bad"), "{e}");
    }

    #[test]
    fn empty_and_missing() {
        let e = err("", &LoadOptions::default());
        assert!(e.contains("is empty"), "{e}");
        let e = err("emotion, pixels\n", &LoadOptions::default());
        assert!(e.contains("no data rows"), "{e}");
        let e = err(
            &format!("emotion,pix\n1,{}\n", pix(0)),
            &LoadOptions::default(),
        );
        assert!(e.contains(":1: no `pixels` column"), "{e}");
        let e = err(
            &format!("label,pixels\n1,{}\n", pix(0)),
            &LoadOptions::default(),
        );
        assert!(e.contains(":1: no `emotion` column"), "{e}");
        let missing = std::env::temp_dir().join("wgfer-definitely-missing.csv");
        let e = format!(
            "{:#}",
            load_csv(&missing, &LoadOptions::default()).unwrap_err()
        );
        assert!(e.contains("wgfer-definitely-missing.csv"), "{e}");
        let e = err(
            &format!("emotion,pixels\n1,{}\n", pix(0)),
            &LoadOptions {
                classes: Some(0),
                ..Default::default()
            },
        );
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn usage_split_and_classes() {
        let g = pix(0);
        let csv = format!(
            "emotion,pixels,Usage\n0,{g},Training\n6,{g},PublicTest\n3,{g},Training\n2,{g},PrivateTest\n1,{g}, PublicTest \n"
        );
        let ds = load(&csv, &LoadOptions::default()).unwrap();
        assert_eq!(ds.num_classes, 7);
        assert_eq!(
            ds.usage.as_deref(),
            Some(
                &[
                    Usage::Training,
                    Usage::PublicTest,
                    Usage::Training,
                    Usage::PrivateTest,
                    Usage::PublicTest
                ][..]
            )
        );
        let s = split(&ds, 123).unwrap();
        assert_eq!(s.train, vec![0, 2]);
        assert_eq!(s.validation, vec![1, 4]);
        assert_eq!(s.test, vec![3]);
        let sub = ds.subset(&s.validation);
        assert_eq!(sub.labels, vec![6, 1]);
        assert_eq!(sub.num_classes, 7);
        assert_eq!(sub.usage.as_ref().unwrap().len(), 2);
        // No PrivateTest rows (Kaggle's training copy): PublicTest is halved,
        // seeded, into validation and test.
        let mut csv = format!("emotion,pixels,Usage\n0,{g},Training\n");
        for i in 0..9 {
            csv += &format!("{},{g},PublicTest\n", i % 7);
        }
        let ds = load(&csv, &LoadOptions::default()).unwrap();
        let s = split(&ds, 0).unwrap();
        assert_eq!(s.train, vec![0]);
        assert_eq!((s.validation.len(), s.test.len()), (4, 5));
        let mut all: Vec<usize> = s.validation.iter().chain(&s.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (1..10).collect::<Vec<_>>());
        assert_eq!(split(&ds, 0).unwrap(), s, "same seed, same split");
        assert_ne!(
            split(&ds, 1).unwrap().test,
            s.test,
            "another seed, another halving"
        );
        // One PublicTest row cannot be halved: the test split is empty.
        let csv = format!("emotion,pixels,Usage\n0,{g},Training\n1,{g},PublicTest\n");
        let ds = load(&csv, &LoadOptions::default()).unwrap();
        let e = format!("{:#}", split(&ds, 0).unwrap_err());
        assert!(
            e.contains("test split is empty") && e.contains("PrivateTest"),
            "{e}"
        );
    }

    fn fake(n: usize) -> Dataset {
        Dataset {
            pixels: vec![0; n * PIXELS],
            labels: (0..n).map(|i| (i % 5) as u8).collect(),
            usage: None,
            num_classes: 5,
            skipped_rows: 0,
        }
    }

    #[test]
    fn seeded_split_sizes_and_determinism() {
        let ds = fake(22133);
        let a = split(&ds, 42).unwrap();
        assert_eq!(
            (a.train.len(), a.validation.len(), a.test.len()),
            (19919, 1107, 1107)
        );
        let mut all: Vec<usize> = [&a.train[..], &a.validation[..], &a.test[..]].concat();
        all.sort_unstable();
        assert_eq!(all, (0..22133).collect::<Vec<_>>());
        assert_eq!(a, split(&ds, 42).unwrap());
        assert_ne!(a, split(&ds, 43).unwrap());
        // Odd held-out count: 2213 -> validation 1106, test 1107.
        let b = split(&fake(22125), 1).unwrap();
        assert_eq!(
            (b.train.len(), b.validation.len(), b.test.len()),
            (19912, 1106, 1107)
        );
        // sklearn's float rounding: ceil(0.1 * 30) = 3.
        let c = split(&fake(30), 1).unwrap();
        assert_eq!(
            (c.train.len(), c.validation.len(), c.test.len()),
            (27, 1, 2)
        );
        // Too small.
        let e = format!("{:#}", split(&fake(3), 0).unwrap_err());
        assert!(e.contains("validation split is empty"), "{e}");
        assert!(split(&fake(11), 0).is_ok());
    }

    #[test]
    fn epoch_orders() {
        let a = epoch_order(1000, 7, 3);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(1000, 7, 3));
        assert_ne!(a, epoch_order(1000, 7, 4));
        assert_ne!(a, epoch_order(1000, 8, 3));
        assert!(epoch_order(0, 1, 1).is_empty());
    }

    #[test]
    fn weights_and_data_with_other_classes_are_refused() {
        let names = |n| default_class_names(n);
        let tutorial = fake(100); // labels 0..=4, no Usage column
        check_classes(&names(5), &tutorial).unwrap();
        // The case: 7-class weights on the tutorial's file.
        let e = format!("{:#}", check_classes(&names(7), &tutorial).unwrap_err());
        assert!(
            e.contains("the weights have 7 classes (angry, disgust, fear")
                && e.contains("the data has 5 (anger, disgust, sad, happiness, surprise")
                && e.contains("--classes 7"),
            "{e}"
        );
        // Labels beyond the weights' classes.
        let mut kaggle = fake(100);
        kaggle.labels = (0..100).map(|i| (i % 7) as u8).collect();
        kaggle.usage = Some(vec![Usage::Training; 100]);
        check_classes(&names(7), &kaggle).unwrap();
        let e = format!("{:#}", check_classes(&names(5), &kaggle).unwrap_err());
        assert!(e.contains("labels up to 6"), "{e}");
        // A small file may lack the last classes; a custom 3-class set fits 3-class weights.
        let mut few = fake(10);
        few.labels = vec![0, 1, 2, 1, 0, 2, 1, 0, 2, 1];
        check_classes(&names(5), &few).unwrap();
        check_classes(&names(3), &few).unwrap();
        assert!(check_classes(&names(7), &few).is_err());
        kaggle.labels.iter_mut().for_each(|l| *l %= 5);
        check_classes(&names(7), &kaggle).unwrap();
    }

    #[test]
    fn class_names() {
        assert_eq!(default_class_names(5)[3], "happiness");
        assert_eq!(default_class_names(7)[6], "neutral");
        assert_eq!(default_class_names(3), vec!["class0", "class1", "class2"]);
        assert_eq!(
            parse_class_names(" a, b ,c", 3).unwrap(),
            vec!["a", "b", "c"]
        );
        assert!(parse_class_names("a,b", 3).is_err());
        assert!(parse_class_names("a,,c", 3).is_err());
        assert!(parse_class_names("a,b,a", 3).is_err());
    }

    #[test]
    fn loads_the_sample_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/emotion-sample.csv");
        assert!(
            path.exists(),
            "\n\n*** FER sample data not found at {} ***\n*** (expected /work/shared/data/emotion-sample.csv reachable as ../shared/data from the crate root) ***\n\n",
            path.display()
        );
        let ds = load_csv(&path, &LoadOptions::default()).unwrap();
        assert_eq!(ds.len(), 1000);
        assert_eq!(ds.num_classes, 5);
        assert_eq!(ds.pixels.len(), 1000 * PIXELS);
        assert_eq!(ds.skipped_rows, 0);
        assert_eq!(ds.class_counts().iter().sum::<usize>(), 1000);
        assert!(ds.class_counts().iter().all(|&c| c > 0));
        let s = split(&ds, 0).unwrap();
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (900, 50, 50)
        );
    }

    /// Load-time check on the full file: `cargo test --release -- --ignored --nocapture bench_`.
    #[test]
    #[ignore]
    fn bench_load_full() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/emotion.csv.gz");
        assert!(path.exists(), "full data not found at {}", path.display());
        let t0 = std::time::Instant::now();
        let ds = load_csv(&path, &LoadOptions::default()).unwrap();
        let dt = t0.elapsed();
        println!(
            "loaded {} rows in {:.3} s, class counts {:?}",
            ds.len(),
            dt.as_secs_f64(),
            ds.class_counts()
        );
        assert_eq!(ds.len(), 22133);
        assert_eq!(ds.class_counts(), vec![4462, 492, 5483, 8110, 3586]);
        let s = split(&ds, 0).unwrap();
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (19919, 1107, 1107)
        );
    }

    /// The first `rows` rows (and the header) of the 1,000-face sample file.
    fn sample_rows(rows: usize) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/emotion-sample.csv");
        let text = std::fs::read_to_string(path).unwrap();
        let mut out: String = text.lines().take(rows + 1).collect::<Vec<_>>().join("\n");
        out.push('\n');
        out.into_bytes()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    /// A tar archive of (member name, content), as `tar cf` would write it.
    fn tarball(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, content) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *content).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn tmp_file(bytes: &[u8], name: &str) -> PathBuf {
        let k = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("wgfer-data-{}-{k}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn gzip_and_tar_archives_read_like_the_csv() {
        let csv = sample_rows(30);
        let readme = b"FER-2013, see the paper".as_slice();
        let containers = [
            ("plain", csv.clone()),
            ("gzip", gzip(&csv)),
            (
                "tar.gz",
                gzip(&tarball(&[
                    ("fer2013/README", readme),
                    ("fer2013/._fer2013.csv", b"\0\x05\x16\x07".as_slice()),
                    ("fer2013/fer2013.csv", &csv),
                ])),
            ),
            ("tar", tarball(&[("fer2013.csv", &csv)])),
        ];
        let mut seen = vec![];
        for (kind, bytes) in containers {
            // Names that lie about the content: detection must not look at them.
            let p = tmp_file(&bytes, "data.txt");
            let (ds, fp) = load_csv_fingerprinted(&p, &LoadOptions::default())
                .unwrap_or_else(|e| panic!("{kind}: {e:#}"));
            std::fs::remove_file(&p).ok();
            assert_eq!(ds.len(), 30, "{kind}");
            assert_eq!(fp.bytes, csv.len() as u64, "{kind}");
            seen.push((ds.labels, ds.pixels, fp));
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]));
        // The fingerprint is that of the CSV, and changes with it.
        let fp = &seen[0].2;
        assert_eq!(fp.sha256.len(), 64);
        let other = tmp_file(&sample_rows(29), "other.csv");
        let (_, fp2) = load_csv_fingerprinted(&other, &LoadOptions::default()).unwrap();
        std::fs::remove_file(&other).ok();
        assert_ne!(fp.sha256, fp2.sha256);
        // A limit loads fewer rows but still fingerprints the whole file.
        let p = tmp_file(&gzip(&csv), "limited.csv.gz");
        let (ds, fp3) = load_csv_fingerprinted(
            &p,
            &LoadOptions {
                limit: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        std::fs::remove_file(&p).ok();
        assert_eq!((ds.len(), &fp3), (3, fp));
    }

    #[test]
    fn errors_inside_archives_name_the_line() {
        let mut csv = String::from_utf8(sample_rows(5)).unwrap();
        csv.push_str("9,1 2 3\n");
        let p = tmp_file(&gzip(csv.as_bytes()), "bad.csv.gz");
        let e = format!("{:#}", load_csv(&p, &LoadOptions::default()).unwrap_err());
        assert!(
            e.starts_with(&format!("{}:7: expected 2304 pixel values", p.display())),
            "{e}"
        );
        std::fs::remove_file(&p).ok();
        let p = tmp_file(
            &gzip(&tarball(&[("fer2013/fer2013.csv", csv.as_bytes())])),
            "bad.tar.gz",
        );
        let e = format!("{:#}", load_csv(&p, &LoadOptions::default()).unwrap_err());
        assert!(
            e.starts_with(&format!("{}!fer2013/fer2013.csv:7: ", p.display())),
            "{e}"
        );
        std::fs::remove_file(&p).ok();
        // An archive without a CSV names what it holds.
        let p = tmp_file(&gzip(&tarball(&[("notes.txt", b"hi")])), "nocsv.tar.gz");
        let e = format!("{:#}", load_csv(&p, &LoadOptions::default()).unwrap_err());
        assert!(
            e.contains("no .csv file in it (it holds: notes.txt)"),
            "{e}"
        );
        std::fs::remove_file(&p).ok();
        // A damaged gzip stream is an error, not a panic or a short read.
        let mut broken = gzip(&sample_rows(20));
        broken.truncate(broken.len() / 2);
        let p = tmp_file(&broken, "cut.csv.gz");
        let e = format!("{:#}", load_csv(&p, &LoadOptions::default()).unwrap_err());
        assert!(e.contains(&p.display().to_string()), "{e}");
        std::fs::remove_file(&p).ok();
    }
}
