//! Keras weights files, read directly (no Python, no C library).
//!
//! The tutorial's users hold a Keras file, in one of the layouts Keras has
//! written over the years:
//!
//! - Keras 3 `.weights.h5` (`model.save_weights`): a group `layers/<slot>/vars`
//!   per layer holding datasets `0`, `1`, …; the slot is named after the
//!   layer's class and its rank among that class (`conv2d_3`), not after the
//!   layer. Recent Keras writes the layer's name as an attribute `name` of
//!   `vars`; older Keras 3 does not.
//! - Keras 3 `.keras` (`model.save`): a zip archive holding `model.weights.h5`
//!   (the layout above) and `config.json` (the layers, in order, by name).
//! - The legacy HDF5 model (`model.save('x.h5')`, Keras 2 and 3) and the
//!   Keras 2 weights file (`model.save_weights('x.h5')`): an attribute
//!   `layer_names` (on `model_weights`, or on the root) and per layer an
//!   attribute `weight_names` (`conv1/kernel:0`, …) naming its datasets.
//!
//! Files are recognised by their first bytes, never by their name. Layers are
//! matched by name where the file names them, else by the tutorial model's
//! layer order as Keras lists it (see [`keras_order`]); every weight's shape
//! is checked before anything is returned, and a mismatch names the layer.
//! [`convert`] turns a file into wgfer's safetensors bytes, so loading a
//! Keras file runs the same checks as loading wgfer's own.

use std::collections::HashMap;
use std::fmt;
use std::io::{Cursor, Read};

use anyhow::{Result, anyhow, bail, ensure};
use hdf5_reader::group::Group;
use hdf5_reader::{Attribute, Hdf5File, OpenOptions};

use crate::fer::checkpoint::{self, NamedTensor};
use crate::fer::model::{ArchKind, Architecture, ParamInfo, metadata};

/// The first bytes of every HDF5 file (at offset 0, where Keras writes it).
const HDF5_MAGIC: &[u8] = b"\x89HDF\r\n\x1a\n";
/// The first bytes of a zip archive (a `.keras` file).
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// The weights inside a `.keras` archive, and its layer list.
const ARCHIVE_WEIGHTS: &str = "model.weights.h5";
const ARCHIVE_CONFIG: &str = "config.json";
/// The model's weights take 4.7 MB; a file claiming more than this is refused
/// rather than allocated (a corrupt or hostile file can claim any size).
const MAX_BYTES: u64 = 256 << 20;
/// How many problems one error lists before it summarises the rest.
const MAX_LISTED: usize = 12;
/// The tutorial's last layer: its bias gives the number of classes.
const DENSE_FINAL: &str = "Dense_final";

/// True when `bytes` look like a Keras file (HDF5 or zip), whatever its name.
/// A safetensors file cannot start so: its first 8 bytes are its header's
/// length, and these would claim a header of tens of megabytes at least.
pub fn is_keras(bytes: &[u8]) -> bool {
    bytes.starts_with(HDF5_MAGIC) || bytes.starts_with(ZIP_MAGIC)
}

/// Which of Keras' layouts a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `model.save('x.keras')` (Keras 3).
    Archive,
    /// `model.save_weights('x.weights.h5')` (Keras 3).
    Weights3,
    /// `model.save('x.h5')` (Keras 2 and 3).
    LegacyModel,
    /// `model.save_weights('x.h5')` (Keras 2).
    LegacyWeights,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Archive => "Keras 3 model archive (.keras)",
            Format::Weights3 => "Keras 3 weights file (.weights.h5)",
            Format::LegacyModel => "Keras HDF5 model (.h5)",
            Format::LegacyWeights => "Keras 2 HDF5 weights file (.h5)",
        })
    }
}

/// One layer's weights as the file holds them.
#[derive(Clone, Debug)]
pub struct KerasLayer {
    /// Where the layer lives in the file, e.g. `layers/conv2d_3` or `model_weights/conv1`.
    pub path: String,
    /// The layer's name (`conv1`), where the file gives it.
    pub name: Option<String>,
    /// Its weights in Keras' order (kernel, bias; or gamma, beta,
    /// moving_mean, moving_variance), each named by its path in the file.
    pub weights: Vec<NamedTensor>,
}

/// What a Keras file holds: its layout and the layers that have weights.
#[derive(Clone, Debug)]
pub struct KerasFile {
    pub format: Format,
    pub layers: Vec<KerasLayer>,
}

/// Reads a Keras file (HDF5 or `.keras` archive) from its bytes. Layers of the
/// Keras 3 layout get their names from the file where it has them, else from
/// the archive's `config.json`, else stay unnamed (see [`model_tensors`]).
pub fn read(bytes: &[u8], origin: &str) -> Result<KerasFile> {
    if bytes.starts_with(ZIP_MAGIC) {
        return read_archive(bytes, origin);
    }
    ensure!(
        bytes.starts_with(HDF5_MAGIC),
        "{origin}: not a Keras file (neither HDF5 nor a .keras zip archive)"
    );
    let file = open_hdf5(bytes, origin)?;
    let root = file
        .root_group()
        .map_err(|e| anyhow!("{origin}: unreadable HDF5 root group: {e}"))?;
    if let Ok(weights) = root.group("model_weights") {
        return Ok(KerasFile {
            format: Format::LegacyModel,
            layers: read_legacy(&weights, origin)?,
        });
    }
    if has_attribute(&root, "layer_names") || has_attribute(&root, "layer_names0") {
        return Ok(KerasFile {
            format: Format::LegacyWeights,
            layers: read_legacy(&root, origin)?,
        });
    }
    if let Ok(layers) = root.group("layers") {
        return Ok(KerasFile {
            format: Format::Weights3,
            layers: read_keras3(&layers, origin)?,
        });
    }
    bail!(
        "{origin}: an HDF5 file, but not one Keras wrote: it has no `layers` group (Keras 3), \
         no `model_weights` group and no `layer_names` attribute (Keras 2 / legacy .h5)"
    )
}

/// The model's tensors, named as wgfer names them (`conv1.kernel`), from a
/// Keras file: its architecture (the class count comes from `Dense_final`)
/// and the tensors in the architecture's parameter order. Refused, naming the
/// layers, when the file's layers or shapes do not fit the tutorial's model.
pub fn model_tensors(file: &KerasFile, origin: &str) -> Result<(Architecture, Vec<NamedTensor>)> {
    let layers = name_layers(file, origin)?;
    let classes = class_count(&layers, origin)?;
    let arch = Architecture::resnet(classes);
    let mut by_name: HashMap<&str, &KerasLayer> = HashMap::new();
    for (name, layer) in &layers {
        if by_name.insert(name.as_str(), layer).is_some() {
            bail!("{origin}: two layers of the file are named `{name}`");
        }
    }
    // Mismatches first: they say what is wrong with the layers the file has.
    let (mut problems, mut missing) = (vec![], vec![]);
    let mut tensors = vec![];
    for layer in arch.layers.iter().filter(|l| !l.params.is_empty()) {
        let params: Vec<&ParamInfo> = layer.params.iter().map(|&i| &arch.params[i]).collect();
        match by_name.remove(layer.name.as_str()) {
            None => missing.push(format!("layer `{}` is missing from the file", layer.name)),
            Some(found) => match take_layer(&layer.name, &params, found) {
                Ok(mut taken) => tensors.append(&mut taken),
                Err(mut wrong) => problems.append(&mut wrong),
            },
        }
    }
    problems.append(&mut missing);
    let mut extra: Vec<&str> = by_name.into_keys().collect();
    extra.sort();
    for name in extra {
        problems.push(format!(
            "layer `{name}` has weights in the file but is not in the model"
        ));
    }
    if !problems.is_empty() {
        bail!("{}", describe(origin, file.format, &problems));
    }
    Ok((arch, tensors))
}

/// One layer's weights under wgfer's names, or what does not fit in them.
fn take_layer(
    name: &str,
    params: &[&ParamInfo],
    found: &KerasLayer,
) -> std::result::Result<Vec<NamedTensor>, Vec<String>> {
    if found.weights.len() != params.len() {
        let expected: Vec<&str> = params.iter().map(|p| suffix(&p.name)).collect();
        return Err(vec![format!(
            "layer `{name}` ({}) holds {} weights, the model expects {} ({})",
            found.path,
            found.weights.len(),
            params.len(),
            expected.join(", ")
        )]);
    }
    let wrong: Vec<String> = params
        .iter()
        .zip(&found.weights)
        .filter(|(p, w)| w.shape != p.shape)
        .map(|(p, w)| {
            format!(
                "layer `{name}`: {} ({}) has shape {:?}, the model expects {:?}",
                suffix(&p.name),
                w.name,
                w.shape,
                p.shape
            )
        })
        .collect();
    if !wrong.is_empty() {
        return Err(wrong);
    }
    Ok(params
        .iter()
        .zip(&found.weights)
        .map(|(p, w)| NamedTensor {
            name: p.name.clone(),
            ..w.clone()
        })
        .collect())
}

/// A Keras file converted to wgfer's format.
pub struct Converted {
    /// The safetensors file's bytes.
    pub bytes: Vec<u8>,
    pub format: Format,
    /// How many layers with weights were taken over.
    pub layers: usize,
    /// The class names written into the metadata.
    pub classes: Vec<String>,
}

/// A Keras file as wgfer's safetensors bytes. Keras files carry no class
/// names: `classes` (comma-separated) sets them, else the default names for
/// the file's class count are written.
pub fn convert(bytes: &[u8], origin: &str, classes: Option<&str>) -> Result<Converted> {
    let file = read(bytes, origin)?;
    let (arch, tensors) = model_tensors(&file, origin)?;
    let classes = match classes {
        Some(names) => crate::fer::data::parse_class_names(names, arch.num_classes)
            .map_err(|e| anyhow!("{origin}: the model has {} classes: {e}", arch.num_classes))?,
        None => crate::fer::data::default_class_names(arch.num_classes),
    };
    let mut meta = metadata(ArchKind::Tutorial, &classes)?;
    meta.insert("converted_from".into(), file.format.to_string());
    Ok(Converted {
        bytes: checkpoint::to_bytes(&tensors, &meta).map_err(|e| anyhow!("{origin}: {e:#}"))?,
        format: file.format,
        layers: file.layers.len(),
        classes,
    })
}

/// The order in which Keras lists the layers of a functional model
/// (`model.layers`, and so the `conv2d_3` slots of its weights files): by
/// depth (the longest path to the output), deepest first; within a depth, in
/// the order a depth-first walk from the output, inputs in order, first
/// reaches them. This is not the order the layers were written in: the
/// tutorial's `res_2_conv_copy` comes before `res_2_conv_c`.
pub fn keras_order(arch: &Architecture) -> Vec<usize> {
    let n = arch.layers.len();
    if n == 0 {
        return vec![];
    }
    let mut depth = vec![0usize; n];
    // Layers are stored inputs-first, so walking backwards settles each
    // layer's depth before its inputs are reached.
    for i in (0..n).rev() {
        for &j in &arch.layers[i].inputs {
            depth[j] = depth[j].max(depth[i] + 1);
        }
    }
    let mut first_seen = vec![usize::MAX; n];
    let mut stack = vec![n - 1];
    let mut count = 0;
    while let Some(i) = stack.pop() {
        if first_seen[i] != usize::MAX {
            continue;
        }
        first_seen[i] = count;
        count += 1;
        // Reversed so that the first input is walked first.
        stack.extend(arch.layers[i].inputs.iter().rev());
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(depth[i]), first_seen[i]));
    order
}

/// The slot Keras 3 files give each named layer (`conv2d_3` → `res_2_conv_c`),
/// from the layers' (class, name) list in `model.layers` order.
pub fn slot_names<'a>(
    layers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> HashMap<String, String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut slots = HashMap::new();
    for (class, name) in layers {
        let Some(stem) = slot_stem(class) else {
            continue;
        };
        let rank = seen.entry(stem).or_default();
        let slot = match *rank {
            0 => stem.to_string(),
            k => format!("{stem}_{k}"),
        };
        *rank += 1;
        slots.insert(slot, name.to_string());
    }
    slots
}

/// Keras' snake-case name of the layer classes that have weights here.
fn slot_stem(class: &str) -> Option<&'static str> {
    match class {
        "Conv2D" => Some("conv2d"),
        "BatchNormalization" => Some("batch_normalization"),
        "Dense" => Some("dense"),
        _ => None,
    }
}

/// Each layer of the file with its name: the file's own, else the one its
/// slot has in the tutorial's model.
fn name_layers<'a>(file: &'a KerasFile, origin: &str) -> Result<Vec<(String, &'a KerasLayer)>> {
    // Names and order do not depend on the class count.
    let arch = Architecture::resnet(5);
    let slots = slot_names(keras_order(&arch).into_iter().map(|i| {
        let l = &arch.layers[i];
        (l.op.keras_type(), l.name.as_str())
    }));
    file.layers
        .iter()
        .map(|layer| {
            let slot = layer.path.rsplit('/').next().unwrap_or_default();
            match layer.name.clone().or_else(|| slots.get(slot).cloned()) {
                Some(name) => Ok((name, layer)),
                None => bail!(
                    "{origin}: `{}` has weights but no layer name, and the tutorial's model has \
                     no layer in that slot: the file holds a different model",
                    layer.path
                ),
            }
        })
        .collect()
}

/// The class count: the length of `Dense_final`'s bias.
fn class_count(layers: &[(String, &KerasLayer)], origin: &str) -> Result<usize> {
    let dense = layers
        .iter()
        .find(|(name, _)| name == DENSE_FINAL)
        .ok_or_else(|| {
            anyhow!(
                "{origin}: the file has no `{DENSE_FINAL}` layer (the tutorial's last layer), \
                 so it does not hold the tutorial's model"
            )
        })?
        .1;
    let classes = match &dense.weights[..] {
        [_, bias] if bias.shape.len() == 1 => bias.shape[0],
        _ => bail!(
            "{origin}: layer `{DENSE_FINAL}` ({}) does not hold a kernel and a bias",
            dense.path
        ),
    };
    ensure!(
        (2..=256).contains(&classes),
        "{origin}: layer `{DENSE_FINAL}` has {classes} outputs, not a classifier wgfer can build"
    );
    Ok(classes)
}

fn read_archive(bytes: &[u8], origin: &str) -> Result<KerasFile> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| anyhow!("{origin}: a zip file, but unreadable: {e}"))?;
    let weights = archive_member(&mut zip, ARCHIVE_WEIGHTS, origin)?.ok_or_else(|| {
        anyhow!("{origin}: a zip file without `{ARCHIVE_WEIGHTS}`: not a .keras model archive")
    })?;
    let config = archive_member(&mut zip, ARCHIVE_CONFIG, origin)?;
    let inner = format!("{origin}/{ARCHIVE_WEIGHTS}");
    let file = open_hdf5(&weights, &inner)?;
    let layers = file
        .root_group()
        .and_then(|root| root.group("layers"))
        .map_err(|e| anyhow!("{inner}: no `layers` group: {e}"))?;
    let mut layers = read_keras3(&layers, &inner)?;
    // Needed only where the weights do not name their layers (Keras 3.3).
    if let Some(config) = config.filter(|_| layers.iter().any(|l| l.name.is_none())) {
        let slots = config_slots(&config, origin)?;
        for layer in layers.iter_mut().filter(|l| l.name.is_none()) {
            let slot = layer.path.rsplit('/').next().unwrap_or_default();
            layer.name = slots.get(slot).cloned();
        }
    }
    Ok(KerasFile {
        format: Format::Archive,
        layers,
    })
}

/// One member of the archive, or None when it has no such member.
fn archive_member(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    origin: &str,
) -> Result<Option<Vec<u8>>> {
    let member = match zip.by_name(name) {
        Ok(member) => member,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => bail!("{origin}: cannot open `{name}` in the archive: {e}"),
    };
    let mut out = vec![];
    member
        .take(MAX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| anyhow!("{origin}: cannot read `{name}` from the archive: {e}"))?;
    ensure!(
        out.len() as u64 <= MAX_BYTES,
        "{origin}: `{name}` is larger than {MAX_BYTES} bytes: not this model's weights"
    );
    Ok(Some(out))
}

/// The slot → layer-name map from a `.keras` archive's `config.json`.
fn config_slots(config: &[u8], origin: &str) -> Result<HashMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Config {
        config: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        layers: Vec<LayerConfig>,
    }
    #[derive(serde::Deserialize)]
    struct LayerConfig {
        class_name: String,
        config: Named,
    }
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    let config: Config = serde_json::from_slice(config).map_err(|e| {
        anyhow!("{origin}: `{ARCHIVE_CONFIG}` does not list a functional model's layers: {e}")
    })?;
    Ok(slot_names(
        config
            .config
            .layers
            .iter()
            .map(|l| (l.class_name.as_str(), l.config.name.as_str())),
    ))
}

fn open_hdf5(bytes: &[u8], origin: &str) -> Result<Hdf5File> {
    let options = OpenOptions::default().with_max_read_bytes(MAX_BYTES as usize);
    Hdf5File::from_bytes_with_options(bytes, options)
        .map_err(|e| anyhow!("{origin}: unreadable HDF5 file: {e}"))
}

/// Keras 3: `layers/<slot>/vars/0`, `1`, … (slots without weights skipped).
fn read_keras3(layers: &Group, origin: &str) -> Result<Vec<KerasLayer>> {
    let (slots, _) = layers
        .member_names()
        .map_err(|e| anyhow!("{origin}: cannot list `layers`: {e}"))?;
    let mut out = vec![];
    for slot in slots {
        let path = format!("layers/{slot}");
        let vars = layers
            .group(&slot)
            .and_then(|g| g.group("vars"))
            .map_err(|e| anyhow!("{origin}: `{path}` has no `vars` group: {e}"))?;
        let (_, names) = vars
            .member_names()
            .map_err(|e| anyhow!("{origin}: cannot list `{path}/vars`: {e}"))?;
        if names.is_empty() {
            continue;
        }
        // `0`, `1`, …, `10` must come in numeric order, not the file's
        // alphabetical one.
        let mut indices = vec![];
        for name in &names {
            let i: usize = name.parse().map_err(|_| {
                anyhow!("{origin}: `{path}/vars/{name}` is not a numbered Keras 3 weight")
            })?;
            indices.push(i);
        }
        indices.sort_unstable();
        let mut weights = vec![];
        for i in indices {
            let dataset = vars
                .dataset(&i.to_string())
                .map_err(|e| anyhow!("{origin}: `{path}/vars/{i}`: {e}"))?;
            weights.push(read_f32(&dataset, &format!("{path}/vars/{i}"), origin)?);
        }
        let name = match vars.attribute("name") {
            Ok(attr) => Some(single_string(&attr, origin, &path)?),
            Err(_) => None,
        };
        out.push(KerasLayer {
            path,
            name,
            weights,
        });
    }
    Ok(out)
}

/// Legacy HDF5: `layer_names` on `group`, `weight_names` on each layer's group.
fn read_legacy(group: &Group, origin: &str) -> Result<Vec<KerasLayer>> {
    let base = match group.name() {
        "/" | "" => String::new(),
        name => format!("{}/", name.trim_start_matches('/')),
    };
    let mut out = vec![];
    for name in string_list(group, "layer_names", origin, &base)? {
        let path = format!("{base}{name}");
        let layer = group.group(&name).map_err(|e| {
            anyhow!("{origin}: layer `{name}` is listed but `{path}` is missing: {e}")
        })?;
        let mut weights = vec![];
        for weight in string_list(&layer, "weight_names", origin, &path)? {
            let dataset = dataset_at(&layer, &weight)
                .map_err(|e| anyhow!("{origin}: `{path}/{weight}`: {e}"))?;
            weights.push(read_f32(&dataset, &format!("{path}/{weight}"), origin)?);
        }
        if !weights.is_empty() {
            out.push(KerasLayer {
                path,
                name: Some(name),
                weights,
            });
        }
    }
    Ok(out)
}

/// A dataset under `group` by a relative path such as `conv1/kernel:0`.
fn dataset_at(group: &Group, path: &str) -> hdf5_reader::error::Result<hdf5_reader::Dataset> {
    match path.rsplit_once('/') {
        None => group.dataset(path),
        Some((dirs, leaf)) => {
            let mut g = group.clone();
            for dir in dirs.split('/').filter(|d| !d.is_empty()) {
                g = g.group(dir)?;
            }
            g.dataset(leaf)
        }
    }
}

fn read_f32(dataset: &hdf5_reader::Dataset, path: &str, origin: &str) -> Result<NamedTensor> {
    let shape: Vec<usize> = dataset.shape().iter().map(|&d| d as usize).collect();
    let data: Vec<f32> = dataset
        .read_array::<f32>()
        .map_err(|e| anyhow!("{origin}: `{path}` is not readable as float32: {e}"))?
        .iter()
        .copied()
        .collect();
    Ok(NamedTensor {
        name: path.to_string(),
        shape,
        data,
    })
}

fn has_attribute(group: &Group, name: &str) -> bool {
    group.attribute(name).is_ok()
}

/// A list-of-strings attribute. Keras splits one that outgrows HDF5's header
/// limit into `name0`, `name1`, …; those are joined.
fn string_list(group: &Group, name: &str, origin: &str, path: &str) -> Result<Vec<String>> {
    if let Ok(attr) = group.attribute(name) {
        return strings(&attr, origin, path);
    }
    let mut out = vec![];
    let mut part = 0;
    while let Ok(attr) = group.attribute(&format!("{name}{part}")) {
        out.extend(strings(&attr, origin, path)?);
        part += 1;
    }
    ensure!(
        part > 0,
        "{origin}: `{path}` has no `{name}` attribute: not a Keras HDF5 file"
    );
    Ok(out)
}

/// The strings of an attribute: variable-length (h5py's `str`, Keras 3) or
/// fixed-length (numpy bytes, Keras 2), one or many.
fn strings(attr: &Attribute, origin: &str, path: &str) -> Result<Vec<String>> {
    // h5py writes an empty list as an empty float array.
    if attr.shape.iter().product::<u64>() == 0 && !attr.shape.is_empty() {
        return Ok(vec![]);
    }
    if let Some(decoded) = &attr.decoded_strings {
        return Ok(decoded.clone());
    }
    attr.read_strings()
        .or_else(|_| attr.read_string().map(|s| vec![s]))
        .map_err(|e| anyhow!("{origin}: `{path}` attribute `{}`: {e}", attr.name))
}

fn single_string(attr: &Attribute, origin: &str, path: &str) -> Result<String> {
    match &strings(attr, origin, path)?[..] {
        [s] => Ok(s.clone()),
        other => bail!(
            "{origin}: `{path}` attribute `{}` holds {} strings, not one name",
            attr.name,
            other.len()
        ),
    }
}

/// `conv1.kernel` → `kernel`.
fn suffix(param: &str) -> &str {
    param.rsplit('.').next().unwrap_or(param)
}

fn describe(origin: &str, format: Format, problems: &[String]) -> String {
    let mut s = format!(
        "{origin}: this {format} does not hold the tutorial's model ({} problem{}):",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems.iter().take(MAX_LISTED) {
        s += &format!("\n  - {p}");
    }
    if problems.len() > MAX_LISTED {
        s += &format!("\n  - … and {} more", problems.len() - MAX_LISTED);
    }
    s
}
