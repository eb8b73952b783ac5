//! Files that came from someone else, for both stages and every command: a cache, an ONNX
//! teacher and its external data, a Hugging Face checkpoint, a tokenizer, a chat template, a
//! pipeline file. Each is opened here, not with `std::fs` directly:
//!
//! - only a **regular file** is read: a FIFO, a device (`/dev/zero`), a socket or a directory
//!   is refused by name. The file is opened non-blocking and checked with `fstat` on the open
//!   descriptor, so a FIFO neither blocks the open nor is read, and a link swapped after a
//!   check cannot slip a device in;
//! - reads are **bounded**: a file is read up to the size `fstat` reported, and never more
//!   than the cap of its kind ([`Cap`]), so a file that grows or lies cannot exhaust memory;
//! - a file named by something inside a directory (a manifest's shard, an ONNX graph's
//!   external data) must **stay inside it**: [`inside`] resolves links and refuses a path
//!   that leads out;
//! - files the tool creates in a directory it was handed (probes, locks, temporaries) are
//!   created with `O_NOFOLLOW` ([`create_new`], [`open_lock`]), so a planted link cannot turn
//!   a write into a write elsewhere.
//!
//! See docs/threat-model.md for what each input can and cannot make the tool do.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The most bytes read from a file of each kind. Regular files larger than this are refused
/// before they are read; the caps sit far above what real files of the kind hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `manifest.json` (~250k shards fit; real caches list thousands).
    Manifest,
    /// Small JSON and TOML: `config.json`, `tokenizer_config.json`, `generation_config.json`,
    /// a pipeline file, a run's `student.json` or checkpoint pointer, a chat template.
    Settings,
    /// `tokenizer.json` (the largest real ones, Gemma 3's 262k vocabulary, are ~33 MB).
    Tokenizer,
    /// Text a run wrote and a command reads back whole (`metrics.csv`).
    Log,
    /// Weights and data (safetensors, ONNX graphs, Parquet): bounded by the file's size only.
    Weights,
}

impl Cap {
    /// The cap in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Cap::Manifest => 64 << 20,
            Cap::Settings => 64 << 20,
            Cap::Tokenizer => 1 << 30,
            Cap::Log => 1 << 30,
            Cap::Weights => u64::MAX,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Cap::Manifest => "a cache manifest",
            Cap::Settings => "a settings file",
            Cap::Tokenizer => "a tokenizer file",
            Cap::Log => "a log file",
            Cap::Weights => "a weights file",
        }
    }
}

/// The kind of a file that is not a regular one, in words.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn refused(path: &Path, message: String) -> Error {
    Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, message))
}

/// Open `path` for reading if it is a regular file of at most `cap` bytes; returns the file
/// and its size.
pub fn open(path: &Path, cap: Cap) -> Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(refused(path, format!("is {}; distill reads only regular files here", kind(meta.file_type()))));
    }
    if meta.len() > cap.bytes() {
        return Err(refused(path, format!("is {} bytes, over the {}-byte limit for {}", meta.len(), cap.bytes(), cap.what())));
    }
    Ok((file, meta.len()))
}

/// The whole of the regular file `path`, at most `cap` bytes.
pub fn read(path: &Path, cap: Cap) -> Result<Vec<u8>> {
    let (file, len) = open(path, cap)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(1 << 30));
    // One byte past the size stat reported tells a file that grew since from one that did not.
    file.take(len.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 != len {
        return Err(refused(path, format!("changed size while it was read ({len} bytes, then {})", bytes.len())));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, cap: Cap) -> Result<String> {
    String::from_utf8(read(path, cap)?).map_err(|e| refused(path, format!("is not UTF-8 text ({e})")))
}

/// Whether `path` names a regular file (links followed); false for a missing path, a
/// directory, a FIFO or a device. For optional files: `if is_file(p) { read(p, ..)? }`.
pub fn is_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// `dir.join(name)` if `name` is a relative path without `..` that, links resolved, stays
/// inside `dir`: ONNX Runtime's rule for external data, and the rule for every file a
/// manifest or a graph names. `what` says what named it (for the error).
pub fn inside(dir: &Path, name: &str, what: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(refused(
            &dir.join(name),
            format!("{what} names {name:?}: only a relative path inside {} is allowed (no `..`, no absolute path)", dir.display()),
        ));
    }
    let path = dir.join(rel);
    let (real_dir, real) =
        (std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?, std::fs::canonicalize(&path).map_err(|e| Error::io(&path, e))?);
    if !real.starts_with(&real_dir) {
        return Err(refused(&path, format!("{what} names {name:?}, a link that leads out of {} (to {})", dir.display(), real.display())));
    }
    Ok(path)
}

/// Create `path` for writing, failing if anything (a file or a link) is already there:
/// `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0644 before the umask.
pub fn create_new(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Create `path` afresh: a file or link left there (by a killed run, or planted) is removed
/// first (the link itself, never its target), then [`create_new`].
pub fn create_fresh(path: &Path) -> Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    create_new(path)
}

/// Open (creating if missing) a lock file without following a link there, and only if it
/// is a regular file.
pub fn open_lock(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refused(path, "is a symbolic link; a lock file must be a regular file (remove the link)".into()),
            _ => Error::io(path, e),
        })?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(refused(path, format!("is {}; a lock file must be a regular file", kind(meta.file_type()))));
    }
    Ok(file)
}

/// `path` made absolute, links resolved as far as it exists, the rest appended as written.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut at = absolute.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuse an output that is, contains or lies inside one of the command's inputs: a command
/// never writes over what it reads. `output` and each input are `(flag, path)`.
pub fn refuse_overlap(output: (&str, &Path), inputs: &[(&str, &Path)]) -> Result<()> {
    let (flag, out) = output;
    let out_real = resolved(out);
    for &(name, input) in inputs {
        let in_real = resolved(input);
        let how = if out_real == in_real {
            "is"
        } else if out_real.starts_with(&in_real) {
            "lies inside"
        } else if in_real.starts_with(&out_real) {
            "contains"
        } else {
            continue;
        };
        return Err(Error::Config(format!(
            "{flag} {} {how} {name} {}: distill never writes over its own inputs; choose another {flag}",
            out.display(),
            input.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    /// A FIFO is refused at once (no reader blocks on it), a link to a device is refused,
    /// a regular file over its cap is refused before it is read, and a regular file reads.
    #[test]
    fn only_bounded_regular_files_are_read() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("pipe");
        fifo(&p);
        let err = read(&p, Cap::Manifest).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
        let z = t.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &z).unwrap();
        let err = read(&z, Cap::Weights).unwrap_err().to_string();
        assert!(err.contains("character device"), "{err}");
        let err = read(t.path(), Cap::Settings).unwrap_err().to_string();
        assert!(err.contains("directory") || err.contains("Is a directory"), "{err}");
        let big = t.path().join("big.json");
        std::fs::File::create(&big).unwrap().set_len(Cap::Settings.bytes() + 1).unwrap();
        let err = read(&big, Cap::Settings).unwrap_err().to_string();
        assert!(err.contains("over the 67108864-byte limit for a settings file"), "{err}");
        std::fs::write(&big, b"{}").unwrap();
        assert_eq!(read(&big, Cap::Settings).unwrap(), b"{}");
    }

    /// Relative names inside the directory pass; `..`, absolute names and links out fail.
    #[test]
    fn names_stay_inside_their_directory() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("model");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/w.bin"), b"w").unwrap();
        std::fs::write(t.path().join("secret.txt"), b"s").unwrap();
        assert_eq!(inside(&dir, "sub/w.bin", "x").unwrap(), dir.join("sub/w.bin"));
        for bad in ["../secret.txt", "/etc/passwd", "sub/../../secret.txt", ""] {
            assert!(inside(&dir, bad, "tensor `w`").unwrap_err().to_string().contains("tensor `w` names"), "{bad}");
        }
        std::os::unix::fs::symlink(t.path().join("secret.txt"), dir.join("out.bin")).unwrap();
        let err = inside(&dir, "out.bin", "x").unwrap_err().to_string();
        assert!(err.contains("a link that leads out of"), "{err}");
    }

    /// The same path, a path inside, a path around and a link to an input are refused;
    /// a sibling is not.
    #[test]
    fn outputs_never_overlap_inputs() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::os::unix::fs::symlink(&cache, t.path().join("link")).unwrap();
        let check = |out: &Path| refuse_overlap(("--out", out), &[("--cache", &cache)]).map_err(|e| e.to_string());
        assert!(check(&cache).unwrap_err().contains("is --cache"));
        assert!(check(&cache.join("run")).unwrap_err().contains("lies inside --cache"));
        assert!(check(t.path()).unwrap_err().contains("contains --cache"));
        assert!(check(&t.path().join("link/run/x")).unwrap_err().contains("lies inside --cache"));
        assert!(check(&t.path().join("cache2")).is_ok());
    }

    /// A planted link where a file is to be created is never followed: `create_new` fails,
    /// `create_fresh` replaces the link and leaves its target untouched, `open_lock` refuses.
    #[test]
    fn created_files_never_follow_links() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target.txt");
        std::fs::write(&target, b"keep").unwrap();
        let probe = t.path().join(".probe");
        std::os::unix::fs::symlink(&target, &probe).unwrap();
        assert!(create_new(&probe).is_err());
        assert!(open_lock(&probe).unwrap_err().to_string().contains("symbolic link"));
        create_fresh(&probe).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&probe).unwrap().is_file());
    }
}
