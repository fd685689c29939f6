//! Files written so that a crash never leaves half of one: checkpoints,
//! reports and pictures all go through [`write_atomic`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};

/// Write bytes to `path` atomically: a temp file in the same directory, write,
/// fsync (file), rename over the target, fsync the directory. A crash at any
/// instant leaves either the old file or the new complete one.
///
/// On failure the temp file is removed; the target is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let file_name = path.file_name().ok_or_else(|| {
        anyhow!(
            "cannot write `{}`: the path does not end in a file name",
            path.display()
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!(
            "cannot write `{}`: `{}` is not a directory",
            path.display(),
            dir.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "cannot write `{}`: the directory `{}` does not exist (create it first)",
            path.display(),
            dir.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot write `{}`: cannot access the directory `{}`",
                    path.display(),
                    dir.display()
                )
            });
        }
    }

    // A short, unique, hidden name beside the target (same file system, so the
    // rename is atomic). The target's name is shortened so the temp name stays
    // within the usual 255-byte limit.
    let stem: String = file_name.to_string_lossy().chars().take(96).collect();
    let (tmp_path, mut file) = {
        let mut attempt = 0;
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let candidate = dir.join(format!(".{stem}.tmp-{}-{n}", std::process::id()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&candidate)
            {
                Ok(file) => break (candidate, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot write `{}`: cannot create a temporary file in `{}`",
                            path.display(),
                            dir.display()
                        )
                    });
                }
            }
        }
    };

    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| {
            format!(
                "cannot write `{}`: writing the temporary file `{}` failed",
                path.display(),
                tmp_path.display()
            )
        })
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp_path, path).with_context(|| {
                format!(
                    "cannot write `{}`: renaming the temporary file `{}` over it failed",
                    path.display(),
                    tmp_path.display()
                )
            })
        });
    if let Err(e) = written {
        // Best effort: the error that matters is the one above.
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }

    sync_dir(dir).with_context(|| {
        format!(
            "wrote `{}` but could not flush its directory `{}` to disk",
            path.display(),
            dir.display()
        )
    })
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing on this platform; the rename
    // itself is still atomic.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wgfer-files-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_files() {
        let dir = temp_dir("atomic");
        let path = dir.join("out.bin");
        write_atomic(&path, b"first version, rather long").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first version, rather long");
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        write_atomic(&path, b"").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_atomic_failure_leaves_target_and_no_temp_files() {
        let dir = temp_dir("atomicfail");
        // The target is a non-empty directory: the rename must fail.
        let target = dir.join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"x").unwrap();
        let msg = format!("{:#}", write_atomic(&target, b"data").unwrap_err());
        assert!(msg.contains("taken"), "{msg}");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(target.join("keep").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_atomic_needs_a_file_name() {
        assert!(write_atomic(Path::new("/"), b"x").is_err());
        assert!(write_atomic(Path::new(".."), b"x").is_err());
    }
}
