//! File integrity, for both stages and every command that writes: atomic writes (a reader
//! sees the old file or the whole new one), fsync of directories, SHA-256 of files, bytes and
//! canonical JSON. Manifests, shards, run directories and object-storage uploads use them.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Write `bytes` to `path` so that a reader sees either the old file or the whole new one.
/// The temporary file is this process's own: workers of a sharded capture write the same
/// tokenizer.json into a shared directory at once, and a shared temporary name would let
/// one rename the other's file away mid-write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
    let written = crate::untrusted::create_fresh(&tmp).and_then(|mut f| {
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    });
    if let Err(e) = written {
        // A full disk or a failed rename leaves nothing behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent_dir(path))
}

/// The directory holding `path`: `.` for a bare file name (whose parent is the empty path).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The hidden temporary name a file is written under before it is renamed into place.
pub fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// fsync a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    d.sync_all().map_err(|e| Error::io(dir, e))
}

/// SHA-256 of a file, hex, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let (mut f, _) = crate::untrusted::open(path, crate::untrusted::Cap::Weights)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of a JSON value written with every object's keys sorted: the same value hashes
/// the same whatever order its keys were inserted in (fingerprints of settings).
pub fn sha256_canonical_json(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                serde_json::Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&o[k]))).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sha256_bytes(sorted(v).to_string().as_bytes())
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 12 characters of a hash, for messages (a hand-edited manifest may hold any
/// text there: never sliced inside a character).
pub fn short(hash: &str) -> &str {
    hash.char_indices().nth(12).map_or(hash, |(i, _)| &hash[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare file name lives in `.`; the empty path (its `parent()`) cannot be opened.
    #[test]
    fn a_bare_file_name_is_in_the_working_directory() {
        assert_eq!(parent_dir(Path::new("logits.jsonl")), Path::new("."));
        assert_eq!(parent_dir(Path::new("out/logits.jsonl")), Path::new("out"));
        assert_eq!(parent_dir(Path::new("/logits.jsonl")), Path::new("/"));
    }

    /// A write that fails (here the rename: the target is a directory) leaves no temporary
    /// file behind, as a full disk must not.
    #[test]
    fn a_failed_atomic_write_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("tokenizer.json");
        std::fs::create_dir(&target).unwrap();
        assert!(write_atomic(&target, b"{}").is_err());
        let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("tokenizer.json")]);
    }
}
