//! The models wgfer ships, by name, and what `--model NAME|FILE` picks.
//!
//! `fer5` knows the tutorial's five classes (its data has no neutral or
//! fearful faces); `fer7` knows FER-2013's seven and is the one for photos,
//! where most faces are neutral. A command not told which model to use takes
//! the one that fits its input (photos: fer7; the tutorial's CSV: fer5),
//! unless the `WGFER_MODEL` environment variable names another.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::fer::data;

/// A model shipped in `models/`.
#[derive(Debug, PartialEq, Eq)]
pub struct Shipped {
    /// What `--model` calls it, and what outputs name it.
    pub name: &'static str,
    /// Its file in `models/`.
    pub file: &'static str,
    pub classes: usize,
    /// One line for error messages.
    pub about: &'static str,
}

/// The tutorial's five classes.
pub const FER5: &str = "fer5";
/// FER-2013's seven classes: the model for photos.
pub const FER7: &str = "fer7";

/// Every shipped model.
pub const SHIPPED: &[Shipped] = &[
    Shipped {
        name: FER5,
        file: "fer5.safetensors",
        classes: 5,
        about: "the tutorial's 5 classes: anger, disgust, sad, happiness, surprise",
    },
    Shipped {
        name: FER7,
        file: "fer7.safetensors",
        classes: 7,
        about: "FER-2013's 7 classes, for photos: angry, disgust, fear, happy, sad, surprise, neutral",
    },
];

/// The environment variable that replaces a command's default model.
pub const ENV: &str = "WGFER_MODEL";

/// What `--model` (or `WGFER_MODEL`) says: a shipped model or a weights file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelChoice {
    Shipped(&'static Shipped),
    File(PathBuf),
}

/// A choice made concrete: the weights file and the name outputs give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedModel {
    /// `fer5` / `fer7` for a shipped model, else the file's name.
    pub name: String,
    pub path: PathBuf,
}

impl ModelChoice {
    /// A shipped model's name (any case), else the path of an existing file
    /// (a file that is called like a model is given as `./fer5`). A name that
    /// is neither is refused with the list of shipped names.
    pub fn parse(s: &str) -> Result<ModelChoice> {
        if let Some(m) = SHIPPED
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(s.trim()))
        {
            return Ok(ModelChoice::Shipped(m));
        }
        let path = PathBuf::from(s);
        if path.is_file() {
            return Ok(ModelChoice::File(path));
        }
        if path.is_dir() {
            bail!(
                "{s} is a directory; give a weights file in it, or {}",
                names()
            );
        }
        bail!(
            "'{s}' is neither a shipped model nor an existing file; the shipped models are {}",
            SHIPPED
                .iter()
                .map(|m| format!("{} ({})", m.name, m.about))
                .collect::<Vec<_>>()
                .join(" and ")
        )
    }

    /// The shipped model called `name` (one of [`SHIPPED`]'s names).
    pub fn named(name: &str) -> Result<ModelChoice> {
        match SHIPPED.iter().find(|m| m.name == name) {
            Some(m) => Ok(ModelChoice::Shipped(m)),
            None => bail!("no shipped model is called {name}; there are {}", names()),
        }
    }

    /// The shipped model with `classes` classes (`eval`'s default, by its data).
    pub fn with_classes(classes: usize) -> Result<ModelChoice> {
        match SHIPPED.iter().find(|m| m.classes == classes) {
            Some(m) => Ok(ModelChoice::Shipped(m)),
            None => bail!(
                "the data has {classes} classes and no shipped model does ({}); give weights \
                 trained on it with --model FILE",
                SHIPPED
                    .iter()
                    .map(|m| format!("{}: {}", m.name, m.classes))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Where the weights are: a shipped model is looked for beside the
    /// sources the binary was built from, then beside the binary
    /// (`target/release/wgfer` → `models/`), then in `./models/`.
    pub fn resolve(&self) -> Result<ResolvedModel> {
        match self {
            ModelChoice::File(path) => Ok(ResolvedModel {
                name: path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                path: path.clone(),
            }),
            ModelChoice::Shipped(m) => Ok(ResolvedModel {
                name: m.name.to_string(),
                path: find_shipped(m)?,
            }),
        }
    }
}

/// The shipped names, for messages: "fer5 or fer7".
fn names() -> String {
    SHIPPED
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// `--model` if given, else `WGFER_MODEL` if set, else the command's default;
/// resolved to a file.
pub fn choose(
    given: Option<&ModelChoice>,
    default: impl FnOnce() -> Result<ModelChoice>,
) -> Result<ResolvedModel> {
    let env = std::env::var(ENV).ok().filter(|v| !v.trim().is_empty());
    choose_with(given, env.as_deref(), default)
}

/// [`choose`] with the environment variable's value passed in (for tests).
fn choose_with(
    given: Option<&ModelChoice>,
    env: Option<&str>,
    default: impl FnOnce() -> Result<ModelChoice>,
) -> Result<ResolvedModel> {
    let choice = match (given, env) {
        (Some(c), _) => c.clone(),
        (None, Some(v)) => ModelChoice::parse(v).with_context(|| format!("{ENV}={v}"))?,
        (None, None) => default()?,
    };
    choice.resolve()
}

fn find_shipped(m: &Shipped) -> Result<PathBuf> {
    let rel = Path::new("models").join(m.file);
    let mut candidates = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel)];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|d| d.join(&rel)));
    }
    candidates.push(rel.clone());
    match candidates.into_iter().find(|p| p.is_file()) {
        Some(p) => Ok(p),
        None => bail!(
            "the shipped model {} ({}) was not found beside the sources or the binary; \
             give a weights file with --model FILE or set {ENV}",
            m.name,
            rel.display()
        ),
    }
}

/// `predict`'s default for its inputs: fer5 when every input is a CSV in the
/// tutorial's layout (its rows carry the tutorial's five classes), else fer7.
/// A CSV whose header cannot be read counts as not the tutorial's (reading it
/// reports the error).
pub fn default_for_inputs(inputs: &[PathBuf]) -> ModelChoice {
    let tutorial = |p: &PathBuf| {
        let csv = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        csv && data::file_layout_classes(p).is_ok_and(|n| n == 5)
    };
    let name = if !inputs.is_empty() && inputs.iter().all(tutorial) {
        FER5
    } else {
        FER7
    };
    ModelChoice::named(name).expect("FER5 and FER7 are shipped names")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wgfer-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn names_choose_shipped_models_and_anything_else_is_a_file() {
        assert_eq!(
            ModelChoice::parse("fer5").unwrap(),
            ModelChoice::Shipped(&SHIPPED[0])
        );
        assert_eq!(
            ModelChoice::parse("FER7").unwrap(),
            ModelChoice::Shipped(&SHIPPED[1])
        );
        let file = temp("mine.safetensors", "weights");
        let choice = ModelChoice::parse(file.to_str().unwrap()).unwrap();
        assert_eq!(choice, ModelChoice::File(file.clone()));
        let resolved = choice.resolve().unwrap();
        assert_eq!(resolved.name, "mine.safetensors");
        assert_eq!(resolved.path, file);
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_shipped_names() {
        let e = ModelChoice::parse("fer6").unwrap_err().to_string();
        assert!(
            e.contains("'fer6' is neither a shipped model nor an existing file"),
            "{e}"
        );
        assert!(e.contains("fer5 (the tutorial's 5 classes: anger,"), "{e}");
        assert!(
            e.contains("and fer7 (FER-2013's 7 classes, for photos: angry,"),
            "{e}"
        );
        let dir = std::env::temp_dir();
        let e = ModelChoice::parse(dir.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_the_default() {
        let file = temp("flag.safetensors", "weights");
        let flag = ModelChoice::File(file.clone());
        let never = || -> Result<ModelChoice> { panic!("the default is not needed") };
        let got = choose_with(Some(&flag), Some("no such model"), never).unwrap();
        assert_eq!(got.path, file);
        let env = temp("env.safetensors", "weights");
        let got = choose_with(None, env.to_str(), never).unwrap();
        assert_eq!(got.name, "env.safetensors");
        let e = choose_with(None, Some("nonsense"), never).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("WGFER_MODEL=nonsense: "),
            "{e:#}"
        );
        let got = choose_with(None, None, || Ok(ModelChoice::File(file.clone()))).unwrap();
        assert_eq!(got.path, file);
    }

    #[test]
    fn shipped_models_are_found_beside_the_sources() {
        // fer5 is committed; fer7 may be missing from a checkout, but when it
        // is there it is found the same way.
        let fer5 = ModelChoice::named(FER5).unwrap().resolve().unwrap();
        assert_eq!(fer5.name, "fer5");
        assert!(
            fer5.path.ends_with("models/fer5.safetensors"),
            "{:?}",
            fer5.path
        );
        assert!(ModelChoice::named("fer6").is_err());
    }

    #[test]
    fn the_data_class_count_picks_the_shipped_model() {
        assert_eq!(
            ModelChoice::with_classes(5).unwrap(),
            ModelChoice::named(FER5).unwrap()
        );
        assert_eq!(
            ModelChoice::with_classes(7).unwrap(),
            ModelChoice::named(FER7).unwrap()
        );
        let e = ModelChoice::with_classes(3).unwrap_err().to_string();
        assert!(
            e.contains("no shipped model does (fer5: 5, fer7: 7)"),
            "{e}"
        );
    }

    #[test]
    fn predict_takes_fer5_only_for_the_tutorials_csv_files() {
        let tutorial = temp("tutorial.csv", "emotion, pixels\n0,1 2 3\n");
        let kaggle = temp("kaggle.csv", "emotion,pixels,Usage\n0,1 2 3,Training\n");
        let photo = PathBuf::from("photo.jpg");
        let fer5 = ModelChoice::named(FER5).unwrap();
        let fer7 = ModelChoice::named(FER7).unwrap();
        assert_eq!(default_for_inputs(std::slice::from_ref(&tutorial)), fer5);
        assert_eq!(
            default_for_inputs(&[tutorial.clone(), tutorial.clone()]),
            fer5
        );
        assert_eq!(default_for_inputs(&[kaggle]), fer7);
        assert_eq!(default_for_inputs(&[tutorial.clone(), photo.clone()]), fer7);
        assert_eq!(default_for_inputs(&[photo]), fer7);
        assert_eq!(default_for_inputs(&[PathBuf::from("missing.csv")]), fer7);
        assert_eq!(default_for_inputs(&[]), fer7);
    }
}
