//! Model weights in the safetensors format, written with
//! [`crate::fer::files::write_atomic`].
//!
//! Only `f32` tensors are written and accepted. Loading checks the file against
//! the list of tensors the model expects (names, shapes, dtype) and refuses
//! non-finite values, so a model never starts from a file that does not fit it.
//! Every check happens before anything is returned: a bad file gives an error
//! that names the file (and the tensor, where there is one), never a panic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use safetensors::tensor::{Metadata, TensorView};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::fer::files::write_atomic;

/// Bytes before the JSON header: its length as a little-endian u64.
const LEN_BYTES: usize = 8;
/// How many mismatches one error message lists before it summarises the rest.
const MAX_LISTED_PROBLEMS: usize = 12;

/// One `f32` tensor: a name, a shape (row-major) and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What [`load`] returns: the tensors, in the order the caller expected them,
/// and the string metadata stored in the file's `__metadata__`.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub tensors: Vec<NamedTensor>,
    pub metadata: BTreeMap<String, String>,
}

/// Serialize f32 tensors + string metadata (`__metadata__`) in safetensors
/// format and write atomically.
///
/// Refuses (with an error naming the tensor) duplicate or empty names, a data
/// length that does not match the shape, and non-finite values — [`load`]
/// would refuse such a file, so it is never written.
pub fn save(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let origin = path.display().to_string();
    let bytes = to_bytes(tensors, metadata)
        .with_context(|| format!("cannot save weights to `{origin}`"))?;
    write_atomic(path, &bytes)
}

/// The safetensors bytes for `tensors` and `metadata` (what [`save`] writes).
pub fn to_bytes(tensors: &[NamedTensor], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut seen = HashSet::with_capacity(tensors.len());
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.name.is_empty() {
            bail!("a tensor has an empty name");
        }
        if t.name == "__metadata__" {
            bail!("a tensor may not be named `__metadata__` (reserved by safetensors)");
        }
        if !seen.insert(t.name.as_str()) {
            bail!("tensor `{}` appears twice", t.name);
        }
        let elements = element_count(&t.shape);
        if elements != Some(t.data.len()) {
            bail!(
                "tensor `{}` has shape {:?} ({}) but {} values",
                t.name,
                t.shape,
                match elements {
                    Some(n) => format!("{n} elements"),
                    None => "too many elements to count".to_string(),
                },
                t.data.len()
            );
        }
        if let Some((i, v)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            bail!(
                "tensor `{}` holds a non-finite value ({v}) at element {i}; refusing to save \
                 weights that could not be loaded back (did training diverge?)",
                t.name
            );
        }
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        raw.push((t.name.clone(), t.shape.clone(), bytes));
    }

    let mut views = Vec::with_capacity(raw.len());
    for (name, shape, bytes) in &raw {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
            .map_err(|e| anyhow!("tensor `{name}`: {e}"))?;
        views.push((name.as_str(), view));
    }
    let info: Option<HashMap<String, String>> = if metadata.is_empty() {
        None
    } else {
        Some(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    let mut bytes = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), info)
        .map_err(|e| anyhow!("cannot serialize the tensors: {e}"))?;
    sort_metadata(&mut bytes, metadata)?;
    Ok(bytes)
}

/// Put the header's `__metadata__` entries in key order, so that the same weights and
/// metadata always give the same bytes. (The safetensors crate takes the metadata as a
/// `HashMap` and writes it in that map's random order.) The crate writes the header as
/// `{"__metadata__":{...},tensors...}`: the map is swapped in place for its sorted form,
/// which has the same length, so no offset moves.
fn sort_metadata(bytes: &mut [u8], metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.is_empty() {
        return Ok(());
    }
    const PREFIX: &[u8] = br#"{"__metadata__":"#;
    let sorted = serde_json::to_vec(metadata)?;
    let start = 8 + PREFIX.len();
    let region = bytes.get(start..start + sorted.len());
    // Check that the region really is the metadata map before overwriting it.
    let is_map = bytes.get(8..start) == Some(PREFIX)
        && region.and_then(|r| serde_json::from_slice::<BTreeMap<String, String>>(r).ok())
            == Some(metadata.clone());
    if !is_map {
        bail!("unexpected safetensors header layout: cannot sort its metadata");
    }
    bytes[start..start + sorted.len()].copy_from_slice(&sorted);
    Ok(())
}

/// Read and validate against the expected (name, shape) list BEFORE returning
/// anything: every expected name present, no extra names, dtype F32, shape
/// equal. Returned tensors are in the order of `expected`.
pub fn load(path: &Path, expected: &[(String, Vec<usize>)]) -> Result<Weights> {
    let origin = path.display().to_string();
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => anyhow!("{origin}: no such file"),
        _ => anyhow!("{origin}: cannot read the file: {e}"),
    })?;
    load_bytes(&bytes, &origin, expected)
}

/// Same as [`load`] but from bytes (used by fuzzing); `origin` is the name used
/// in messages.
pub fn load_bytes(
    bytes: &[u8],
    origin: &str,
    expected: &[(String, Vec<usize>)],
) -> Result<Weights> {
    let (header_len, meta) = parse_header(bytes, origin)?;
    let data = bytes.get(LEN_BYTES + header_len..).unwrap_or(&[]);

    // Compare what the file holds with what the model expects.
    let mut expected_names = HashSet::with_capacity(expected.len());
    for (name, _) in expected {
        if !expected_names.insert(name.as_str()) {
            bail!(
                "{origin}: the model lists tensor `{name}` twice (a bug in the model, not the file)"
            );
        }
    }
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match meta.info(name) {
            None => problems.push(format!(
                "tensor `{name}` (shape {shape:?}) is missing from the file"
            )),
            Some(info) => {
                if info.dtype != Dtype::F32 {
                    problems.push(format!(
                        "tensor `{name}` has dtype {}, the model expects F32",
                        info.dtype
                    ));
                }
                if info.shape != *shape {
                    problems.push(format!(
                        "tensor `{name}` has shape {:?}, the model expects {shape:?}",
                        info.shape
                    ));
                }
            }
        }
    }
    let mut extra: Vec<String> = meta
        .offset_keys()
        .into_iter()
        .filter(|n| !expected_names.contains(n.as_str()))
        .collect();
    extra.sort();
    for name in extra {
        problems.push(format!(
            "tensor `{name}` is in the file but not in the model"
        ));
    }
    if !problems.is_empty() {
        bail!("{}", describe_problems(origin, &problems));
    }

    // Everything fits: copy the values out, refusing non-finite ones.
    let mut tensors = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        let info = meta
            .info(name)
            .ok_or_else(|| anyhow!("{origin}: tensor `{name}` is missing from the file"))?;
        let (start, end) = info.data_offsets;
        let raw = data.get(start..end).ok_or_else(|| {
            anyhow!(
                "{origin}: tensor `{name}`: data offsets [{start}, {end}] lie outside the \
                 {}-byte data section (the file is truncated or corrupt)",
                data.len()
            )
        })?;
        let count = element_count(shape);
        if count.and_then(|c| c.checked_mul(4)) != Some(raw.len()) {
            bail!(
                "{origin}: tensor `{name}`: {} data bytes do not hold shape {shape:?} of F32",
                raw.len()
            );
        }
        let mut values = Vec::with_capacity(raw.len() / 4);
        for (i, chunk) in raw.chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if !v.is_finite() {
                bail!(
                    "{origin}: tensor `{name}` holds a non-finite value ({v}) at element {i} \
                     (index {:?}); the weights are unusable (did training diverge?)",
                    unravel(i, shape)
                );
            }
            values.push(v);
        }
        tensors.push(NamedTensor {
            name: name.clone(),
            shape: shape.clone(),
            data: values,
        });
    }

    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(Weights { tensors, metadata })
}

/// The (name, shape) of every tensor a file declares.
pub type Shapes = Vec<(String, Vec<usize>)>;

/// The string metadata and the (name, shape) list a weights file declares,
/// with the same framing checks as [`load_bytes`] (the values are not read).
pub fn peek(bytes: &[u8], origin: &str) -> Result<(BTreeMap<String, String>, Shapes)> {
    let (_, meta) = parse_header(bytes, origin)?;
    let mut names = meta.offset_keys();
    names.sort();
    let shapes = names
        .into_iter()
        .filter_map(|n| meta.info(&n).map(|i| (n.clone(), i.shape.clone())))
        .collect();
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok((metadata, shapes))
}

/// Checks the framing ourselves (so that no arithmetic inside the safetensors
/// crate can overflow on a lying header), then lets the crate parse and
/// validate the header. Returns the header length and the parsed metadata.
fn parse_header(bytes: &[u8], origin: &str) -> Result<(usize, Metadata)> {
    let Some(len_bytes) = bytes.first_chunk::<LEN_BYTES>() else {
        bail!(
            "{origin}: the file is {} bytes long, too short to be a safetensors file \
             (it is empty or truncated)",
            bytes.len()
        );
    };
    let rest = bytes.len() - LEN_BYTES;
    let claimed = u64::from_le_bytes(*len_bytes);
    let header_len = match usize::try_from(claimed) {
        Ok(n) if n <= rest => n,
        _ => bail!(
            "{origin}: the header claims {claimed} bytes but only {rest} bytes follow the \
             length field: the file is truncated or not a safetensors file"
        ),
    };
    let header = &bytes[LEN_BYTES..LEN_BYTES + header_len];
    let data_len = rest - header_len;

    let text = std::str::from_utf8(header).map_err(|e| {
        anyhow!("{origin}: the header is not valid UTF-8 ({e}): not a safetensors file, or corrupt")
    })?;
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        anyhow!("{origin}: the header is not valid JSON ({e}): not a safetensors file, or corrupt")
    })?;
    let serde_json::Value::Object(entries) = &json else {
        bail!("{origin}: the header is not a JSON object: not a safetensors file");
    };
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let offsets = entry.get("data_offsets").and_then(|o| o.as_array());
        if let Some(offsets) = offsets {
            for offset in offsets {
                if let Some(o) = offset.as_u64()
                    && o > data_len as u64
                {
                    bail!(
                        "{origin}: tensor `{name}`: data offset {o} lies past the end of the \
                         {data_len}-byte data section: the file is truncated or corrupt"
                    );
                }
            }
        }
    }

    SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("{origin}: {}", explain(&e)))
}

fn explain(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor `{name}`: its data offsets overlap another tensor or leave a gap: \
             the file is corrupt"
        ),
        SafeTensorError::TensorInvalidInfo => "a tensor's data offsets do not match its dtype \
             and shape: the file is corrupt"
            .to_string(),
        SafeTensorError::MetadataIncompleteBuffer => "the file length does not match its \
             header (truncated, or extra bytes at the end)"
            .to_string(),
        SafeTensorError::ValidationOverflow => {
            "a tensor shape in the header is impossibly large: the file is corrupt".to_string()
        }
        SafeTensorError::InvalidHeaderDeserialization(err) => {
            format!("the header is not a valid safetensors header ({err})")
        }
        other => format!("not a valid safetensors file ({other})"),
    }
}

fn describe_problems(origin: &str, problems: &[String]) -> String {
    if let [only] = problems {
        return format!("{origin}: {only}");
    }
    let mut msg = format!(
        "{origin}: {} mismatches between the file and the model:",
        problems.len()
    );
    for p in problems.iter().take(MAX_LISTED_PROBLEMS) {
        msg.push_str("\n  - ");
        msg.push_str(p);
    }
    if problems.len() > MAX_LISTED_PROBLEMS {
        msg.push_str(&format!(
            "\n  ... and {} more",
            problems.len() - MAX_LISTED_PROBLEMS
        ));
    }
    msg
}

fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Flat row-major element index -> multi-index for `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *slot = flat % dim;
            flat /= dim;
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wgfer-checkpoint-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample() -> Vec<NamedTensor> {
        vec![
            NamedTensor {
                name: "conv_1.kernel".into(),
                shape: vec![3, 3, 1, 4],
                data: (0..36).map(|i| i as f32 * 0.25 - 3.0).collect(),
            },
            NamedTensor {
                name: "conv_1.bias".into(),
                shape: vec![4],
                data: vec![0.5, -0.5, 1e-30, 3.0e30],
            },
            NamedTensor {
                name: "scalar".into(),
                shape: vec![],
                data: vec![42.0],
            },
        ]
    }

    fn expected_of(tensors: &[NamedTensor]) -> Vec<(String, Vec<usize>)> {
        tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    }

    fn sample_bytes() -> Vec<u8> {
        to_bytes(&sample(), &BTreeMap::new()).unwrap()
    }

    fn err_of(r: Result<Weights>) -> String {
        format!("{:#}", r.expect_err("expected an error"))
    }

    /// Safetensors bytes with arbitrary dtypes, written by the crate itself.
    fn raw_file(entries: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = entries
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), None).unwrap()
    }

    /// A file from a hand-written header and data section.
    fn handmade(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = temp_dir("round");
        let path = dir.join("weights.safetensors");
        let mut meta = BTreeMap::new();
        meta.insert("epoch".to_string(), "12".to_string());
        meta.insert(
            "classes".to_string(),
            "anger,disgust,sad,happiness,surprise".to_string(),
        );
        save(&path, &sample(), &meta).unwrap();

        // Ask for the tensors in another order than they were saved.
        let mut expected = expected_of(&sample());
        expected.reverse();
        let w = load(&path, &expected).unwrap();
        let mut want = sample();
        want.reverse();
        assert_eq!(w.tensors, want);
        assert_eq!(w.metadata, meta);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_same_weights_and_metadata_give_the_same_bytes() {
        let meta: BTreeMap<String, String> = (0..12)
            .map(|i| (format!("key{i:02}"), format!("value \"{i}\"")))
            .collect();
        let dir = temp_dir("same-bytes");
        let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        save(&a, &sample(), &meta).unwrap();
        save(&b, &sample(), &meta).unwrap();
        let (a_bytes, b_bytes) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert!(a_bytes == b_bytes, "two saves of the same weights differ");
        // The keys are in order in the header, and the file still reads back.
        let header = String::from_utf8_lossy(&a_bytes[..400]).into_owned();
        let at: Vec<usize> = meta
            .keys()
            .map(|k| header.find(k.as_str()).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{header}");
        assert_eq!(load(&a, &expected_of(&sample())).unwrap().metadata, meta);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_metadata_round_trips() {
        let w = load_bytes(&sample_bytes(), "w", &expected_of(&sample())).unwrap();
        assert!(w.metadata.is_empty());
        assert_eq!(w.tensors, sample());
    }

    #[test]
    fn missing_tensor_is_named() {
        let mut expected = expected_of(&sample());
        expected.push(("res_2_conv_a.kernel".into(), vec![1, 1, 64, 64]));
        let msg = err_of(load_bytes(
            &sample_bytes(),
            "weights.safetensors",
            &expected,
        ));
        assert!(msg.starts_with("weights.safetensors: "), "{msg}");
        assert!(msg.contains("`res_2_conv_a.kernel`"), "{msg}");
        assert!(msg.contains("missing"), "{msg}");
    }

    #[test]
    fn extra_tensor_is_named() {
        let mut expected = expected_of(&sample());
        expected.retain(|(n, _)| n != "conv_1.bias");
        let msg = err_of(load_bytes(
            &sample_bytes(),
            "weights.safetensors",
            &expected,
        ));
        assert!(msg.contains("`conv_1.bias`"), "{msg}");
        assert!(msg.contains("not in the model"), "{msg}");
    }

    #[test]
    fn wrong_shape_is_named_with_both_shapes() {
        let tensors = vec![NamedTensor {
            name: "res_2_conv_a.kernel".into(),
            shape: vec![1, 1, 64, 32],
            data: vec![0.0; 64 * 32],
        }];
        let bytes = to_bytes(&tensors, &BTreeMap::new()).unwrap();
        let expected = vec![("res_2_conv_a.kernel".to_string(), vec![1, 1, 64, 64])];
        let msg = err_of(load_bytes(&bytes, "weights.safetensors", &expected));
        assert_eq!(
            msg,
            "weights.safetensors: tensor `res_2_conv_a.kernel` has shape [1, 1, 64, 32], \
             the model expects [1, 1, 64, 64]"
        );
    }

    #[test]
    fn several_problems_are_listed_together() {
        let expected = vec![
            ("conv_1.kernel".to_string(), vec![3, 3, 1, 8]),
            ("conv_1.bias".to_string(), vec![4]),
            ("dense.kernel".to_string(), vec![10, 5]),
        ];
        let msg = err_of(load_bytes(&sample_bytes(), "w.safetensors", &expected));
        assert!(msg.contains("3 mismatches"), "{msg}");
        assert!(
            msg.contains("`conv_1.kernel` has shape [3, 3, 1, 4]"),
            "{msg}"
        );
        assert!(msg.contains("`dense.kernel`"), "{msg}");
        assert!(
            msg.contains("`scalar` is in the file but not in the model"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_dtype_is_named() {
        for (dtype, bytes_per) in [(Dtype::F64, 8), (Dtype::I32, 4), (Dtype::F16, 2)] {
            let bytes = raw_file(&[
                ("a", Dtype::F32, vec![2], vec![0; 8]),
                ("b", dtype, vec![2, 2], vec![0; 4 * bytes_per]),
            ]);
            let expected = vec![("a".to_string(), vec![2]), ("b".to_string(), vec![2, 2])];
            let msg = err_of(load_bytes(&bytes, "w.safetensors", &expected));
            assert_eq!(
                msg,
                format!("w.safetensors: tensor `b` has dtype {dtype}, the model expects F32")
            );
        }
    }

    #[test]
    fn non_finite_values_are_refused_on_load() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut data = [1.0f32; 6];
            data[4] = bad;
            let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            let bytes = raw_file(&[("w", Dtype::F32, vec![2, 3], raw)]);
            let msg = err_of(load_bytes(
                &bytes,
                "w.safetensors",
                &[("w".into(), vec![2, 3])],
            ));
            assert!(msg.starts_with("w.safetensors: tensor `w`"), "{msg}");
            assert!(msg.contains("non-finite"), "{msg}");
            assert!(msg.contains("element 4 (index [1, 1])"), "{msg}");
        }
    }

    #[test]
    fn non_finite_values_are_refused_on_save() {
        let mut tensors = sample();
        tensors[1].data[2] = f32::NAN;
        let dir = temp_dir("nansave");
        let path = dir.join("w.safetensors");
        let msg = format!("{:#}", save(&path, &tensors, &BTreeMap::new()).unwrap_err());
        assert!(
            msg.contains("`conv_1.bias`") && msg.contains("non-finite"),
            "{msg}"
        );
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_tensors_are_refused_on_save() {
        let mut dup = sample();
        dup.push(dup[0].clone());
        assert!(to_bytes(&dup, &BTreeMap::new()).is_err());
        let mut short = sample();
        short[0].data.pop();
        let msg = format!("{:#}", to_bytes(&short, &BTreeMap::new()).unwrap_err());
        assert!(
            msg.contains("`conv_1.kernel`") && msg.contains("35 values"),
            "{msg}"
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample_bytes();
        let expected = expected_of(&sample());
        for len in 0..bytes.len() {
            let msg = err_of(load_bytes(&bytes[..len], "cut.safetensors", &expected));
            assert!(msg.starts_with("cut.safetensors: "), "len {len}: {msg}");
        }
        // Trailing garbage is refused too.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(load_bytes(&longer, "long", &expected).is_err());
    }

    #[test]
    fn every_single_byte_corruption_is_handled_without_panic() {
        let bytes = sample_bytes();
        let expected = expected_of(&sample());
        for i in 0..bytes.len() {
            for v in [0u8, 0x7f, 0xff, b'9', b'"'] {
                let mut b = bytes.clone();
                b[i] = v;
                // Data bytes may still make a valid file; the point is no panic.
                let _ = load_bytes(&b, "x", &expected);
            }
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        // A small deterministic fuzzer: flip, insert, delete and cut bytes of a
        // valid file (header and data alike) and check only that loading
        // returns (Ok or Err) without panicking.
        let bytes = sample_bytes();
        let expected = expected_of(&sample());
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..=(next() % 4) {
                let at = (next() as usize) % b.len().max(1);
                match next() % 5 {
                    0 if !b.is_empty() => b[at] ^= 1 << (next() % 8),
                    1 if !b.is_empty() => b[at] = (next() % 256) as u8,
                    2 => b.insert(at.min(b.len()), (next() % 256) as u8),
                    3 if !b.is_empty() => {
                        b.remove(at);
                    }
                    _ => b.truncate(at),
                }
            }
            if let Err(e) = load_bytes(&b, "fuzz", &expected) {
                assert!(format!("{e:#}").starts_with("fuzz: "));
            }
        }
    }

    #[test]
    fn header_longer_than_the_file_is_refused() {
        let mut bytes = sample_bytes();
        let claimed = (bytes.len() as u64) * 10;
        bytes[..8].copy_from_slice(&claimed.to_le_bytes());
        let msg = err_of(load_bytes(
            &bytes,
            "big.safetensors",
            &expected_of(&sample()),
        ));
        assert!(msg.contains("header claims"), "{msg}");
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(load_bytes(&bytes, "max", &expected_of(&sample())).is_err());
    }

    #[test]
    fn lying_offsets_are_refused() {
        let data = [0u8; 16];
        let cases = [
            // Past the end of the data.
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,1000]}}"#,
            // Overlapping.
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            // Size does not match the shape.
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            // Gap (data not fully covered).
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            // Huge offsets that would overflow additions.
            r#"{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}}"#,
            // Huge shape.
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
            // Reversed offsets.
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#,
            // Unknown dtype, wrong types.
            r#"{"a":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}}"#,
            r#"{"a":{"dtype":"F32","shape":"4","data_offsets":[0,16]}}"#,
            r#"{"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}"#,
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0]}}"#,
            r#"{"__metadata__":{"epoch":3},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            // Not an object / not JSON.
            r#"[1,2,3]"#,
            r#"{"a":"#,
            "",
        ];
        let expected = vec![("a".to_string(), vec![4])];
        for header in cases {
            let msg = err_of(load_bytes(
                &handmade(header, &data),
                "lie.safetensors",
                &expected,
            ));
            assert!(msg.starts_with("lie.safetensors: "), "{header}: {msg}");
        }
        // The control case is accepted.
        let ok = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        assert!(load_bytes(&handmade(ok, &data), "ok", &expected).is_ok());
    }

    #[test]
    fn offsets_summing_past_usize_do_not_panic() {
        // Eight contiguous tensors of 2^61 - 1 bytes each: every offset fits in
        // a u64, but the sum plus the header length would overflow.
        let size: u64 = (1 << 61) - 1;
        let mut header = String::from("{");
        for i in 0..8u64 {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&format!(
                r#""t{i}":{{"dtype":"U8","shape":[{size}],"data_offsets":[{},{}]}}"#,
                i * size,
                (i + 1) * size
            ));
        }
        header.push('}');
        let msg = err_of(load_bytes(&handmade(&header, &[]), "huge", &[]));
        assert!(msg.contains("past the end"), "{msg}");
    }

    #[test]
    fn invalid_utf8_header_is_refused() {
        let mut bytes = handmade("{\"a\":1}", &[]);
        bytes[9] = 0xff;
        let msg = err_of(load_bytes(&bytes, "bin.safetensors", &[]));
        assert!(msg.contains("UTF-8"), "{msg}");
    }

    #[test]
    fn duplicate_expected_names_are_an_error_not_a_panic() {
        let mut expected = expected_of(&sample());
        expected.push(expected[0].clone());
        assert!(load_bytes(&sample_bytes(), "w", &expected).is_err());
    }

    #[test]
    fn missing_file_is_named() {
        let msg = err_of(load(Path::new("/nonexistent/w.safetensors"), &[]));
        assert_eq!(msg, "/nonexistent/w.safetensors: no such file");
    }

    #[test]
    fn write_into_missing_directory_fails_clearly() {
        let dir = temp_dir("missingdir");
        let path = dir.join("no/such/dir/w.safetensors");
        let msg = format!("{:#}", write_atomic(&path, b"x").unwrap_err());
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(msg.contains("no/such/dir"), "{msg}");
        let msg = format!(
            "{:#}",
            save(&path, &sample(), &BTreeMap::new()).unwrap_err()
        );
        assert!(msg.contains("does not exist"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
