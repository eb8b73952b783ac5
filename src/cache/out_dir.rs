//! The output-directory policy of stage one: what a run does with the `--out` it is given
//! (start fresh, resume the finished shards of an interrupted run with the same settings,
//! recompute a complete cache's missing or damaged shards, report a complete cache, or
//! refuse another cache or foreign files), and how two caches' identities differ.

use std::path::Path;

use crate::cache::manifest::{self, MANIFEST_FILE, Manifest, PARTIAL_MANIFEST_FILE, PartInfo, ShardInfo, Totals};
use crate::error::{Error, Result};
use crate::integrity::short;

/// The manifest file names of a run: the whole cache, or one part of a sharded capture.
pub struct ManifestNames {
    pub complete: String,
    pub partial: String,
}

impl ManifestNames {
    pub fn of(part: Option<PartInfo>) -> ManifestNames {
        match part {
            Some(p) => ManifestNames { complete: p.file_name(false), partial: p.file_name(true) },
            None => ManifestNames { complete: MANIFEST_FILE.into(), partial: PARTIAL_MANIFEST_FILE.into() },
        }
    }
}

/// What an output directory holds for this run.
pub enum OutState {
    Fresh,
    /// Resume from these finished shards; the note says why a complete cache is resumed.
    Partial(Manifest, Option<String>),
    Complete(Manifest),
}

/// Decide what to do with `out`: start fresh, resume a partial cache made with the same
/// settings, report a complete one, or refuse.
pub fn prepare_out_dir(out: &Path, man: &Manifest, overwrite: bool, names: &ManifestNames, part: PartInfo) -> Result<OutState> {
    if out.exists() && !out.is_dir() {
        return Err(Error::cache(out, "--out exists and is not a directory"));
    }
    match existing_manifest(out, man, overwrite, names)? {
        Some((old, _)) if old.fingerprint != man.fingerprint && !overwrite => Err(Error::cache(
            out,
            format!(
                "holds a cache made with other settings ({}); use another --out or --overwrite to replace it",
                describe_difference(&old, man)
            ),
        )),
        Some((old, complete)) if !overwrite => resume(out, old, complete, names, part),
        Some(_) => replace(out, names, part),
        None => start_fresh(out, part),
    }
}

/// The manifest already in `out` (the complete one, else the partial one) and whether it is
/// complete. One that cannot be read is refused, or with `overwrite` stands in as this run's
/// own (`man`), so that it is replaced like any other.
fn existing_manifest(out: &Path, man: &Manifest, overwrite: bool, names: &ManifestNames) -> Result<Option<(Manifest, bool)>> {
    let (complete, partial) = (out.join(&names.complete), out.join(&names.partial));
    let (path, is_complete) = match (complete.exists(), partial.exists()) {
        (true, _) => (complete, true),
        (false, true) => (partial, false),
        (false, false) => return Ok(None),
    };
    match Manifest::read_file(&path) {
        Ok(m) => Ok(Some((m, is_complete))),
        // An unreadable manifest (another schema, hand-edited) may be replaced on request.
        Err(_) if overwrite => Ok(Some((man.clone(), is_complete))),
        Err(e) => {
            Err(Error::cache(out, format!("holds a cache this run cannot resume ({e}); use another --out or --overwrite to replace it")))
        }
    }
}

/// A cache made with the same settings: keep the finished shards whose files are intact and
/// recompute from the first that is not. A complete cache with every shard intact is
/// reported as it is; one with a damaged shard becomes partial again, with a note.
fn resume(out: &Path, old: Manifest, complete: bool, names: &ManifestNames, part: PartInfo) -> Result<OutState> {
    let mut kept = old.clone();
    kept.shards.clear();
    kept.totals = Totals::default();
    let mut damaged = None;
    for s in &old.shards {
        let p = out.join(&s.file);
        let intact = std::fs::metadata(&p).map(|m| m.len() == s.bytes).unwrap_or(false)
            && manifest::sha256_file(&p).map(|h| h == s.sha256).unwrap_or(false);
        if !intact {
            damaged = Some(s.file.clone());
            break;
        }
        kept.totals.rows += s.rows;
        kept.totals.positions += s.positions;
        kept.shards.push(s.clone());
    }
    let mut note = None;
    match (complete, damaged) {
        (true, None) => return Ok(OutState::Complete(old)),
        (true, Some(file)) => {
            // No longer complete: the partial manifest takes over until the rerun ends.
            kept.complete = false;
            kept.write_atomic(out, &names.partial)?;
            let complete_path = out.join(&names.complete);
            std::fs::remove_file(&complete_path).map_err(|e| Error::io(&complete_path, e))?;
            note = Some(format!(
                "{}: the complete cache's {file} is missing or damaged; recomputing from it ({} intact shards kept)",
                out.display(),
                kept.shards.len()
            ));
        }
        (false, _) => {}
    }
    remove_unlisted(out, &kept.shards, part)?;
    Ok(OutState::Partial(kept, note))
}

/// `--overwrite`: remove what the old cache wrote, and every manifest that would list the
/// shards removed (a whole run's, or the part manifests of a capture).
fn replace(out: &Path, names: &ManifestNames, part: PartInfo) -> Result<OutState> {
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let whole = name == MANIFEST_FILE || name == PARTIAL_MANIFEST_FILE;
        let stale = name == names.complete
            || name == names.partial
            || (part.count == 1 && name.starts_with("manifest.part-"))
            || (part.count > 1 && whole);
        if stale {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    remove_unlisted(out, &[], part)?;
    Ok(OutState::Fresh)
}

/// No cache in `out`: it must be new, or hold nothing but what a killed run of distill
/// leaves; then it is probed for writing before any work is done.
fn start_fresh(out: &Path, part: PartInfo) -> Result<OutState> {
    if out.exists() {
        let stray: Vec<String> = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                !(manifest::is_shard_file_name(n)
                    || n.ends_with(".partial")
                    || n == manifest::TOKENIZER_FILE
                    || n == crate::chat::CHAT_TEMPLATE_FILE
                    || crate::lock::is_lock_file(n)
                    || n.starts_with(WRITE_PROBE)
                    || (part.count > 1 && n.starts_with("manifest.part-")))
            })
            .collect();
        if !stray.is_empty() {
            return Err(Error::cache(
                out,
                format!("--out is not empty and is not a distill cache (found {}); choose an empty or new directory", stray.join(", ")),
            ));
        }
        remove_unlisted(out, &[], part)?;
    } else {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    // Under this process's own name: the workers of a sharded capture probe one directory
    // at once.
    let probe = out.join(format!("{WRITE_PROBE}.{}", std::process::id()));
    drop(crate::untrusted::create_fresh(&probe)?);
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))?;
    Ok(OutState::Fresh)
}

/// The file a run writes and removes to check that `--out` is writable; a run killed in
/// between leaves it, and the rerun accepts it.
const WRITE_PROBE: &str = ".distill-write-probe";

/// Delete this part's shard files and temporaries that the manifest does not list (shards
/// of other parts in a shared directory are left alone).
pub fn remove_unlisted(out: &Path, keep: &[ShardInfo], part: PartInfo) -> Result<()> {
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let base = name.strip_prefix('.').and_then(|n| n.strip_suffix(".partial")).unwrap_or(&name);
        let mine = manifest::shard_index(base).is_some_and(|j| j % part.count == part.index);
        let ours = mine && (manifest::is_shard_file_name(&name) || name.starts_with('.'));
        if ours && !keep.iter().any(|s| s.file == name) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

pub fn describe_difference(old: &Manifest, new: &Manifest) -> String {
    let a = &old.settings["identity"];
    let b = &new.settings["identity"];
    let mut diffs = Vec::new();
    if old.teacher.sha256 != new.teacher.sha256 {
        diffs.push(format!(
            "the teacher graph {} differs (sha256 {} -> {})",
            new.teacher.file,
            short(&old.teacher.sha256),
            short(&new.teacher.sha256)
        ));
    }
    diffs.extend(external_data_difference(&old.teacher.external_data, &new.teacher.external_data));
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, v) in b {
            if a.get(k) != Some(v) && !["teacher_sha256", "teacher_external_data"].contains(&k.as_str()) {
                diffs.push(format!("{k}: {} -> {}", a.get(k).map(|x| x.to_string()).unwrap_or("none".into()), v));
            }
        }
    }
    if diffs.is_empty() { "fingerprint differs".to_string() } else { diffs.join("; ") }
}

/// The teacher's weight files that differ between two caches, each named.
fn external_data_difference(old: &[manifest::ExternalDataInfo], new: &[manifest::ExternalDataInfo]) -> Vec<String> {
    let mut out = Vec::new();
    for n in new {
        match old.iter().find(|o| o.file == n.file) {
            Some(o) if o.sha256 != n.sha256 => out.push(format!(
                "the teacher's external-data file {} differs ({} bytes, sha256 {} -> {} bytes, sha256 {})",
                n.file,
                o.bytes,
                short(&o.sha256),
                n.bytes,
                short(&n.sha256)
            )),
            Some(_) => {}
            None => out.push(format!("the teacher now keeps weights in {}, which the cache's teacher did not", n.file)),
        }
    }
    for o in old.iter().filter(|o| !new.iter().any(|n| n.file == o.file)) {
        out.push(format!("the cache's teacher kept weights in {}, which this teacher does not", o.file));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::LogprobEncoding;

    /// A manifest with fingerprint `fp` over `n` shards of 10 rows, whose files are written
    /// into `dir` (each its index repeated, so sizes and hashes are real).
    fn cache(dir: &Path, fp: &str, n: usize, complete: bool) -> Manifest {
        std::fs::create_dir_all(dir).unwrap();
        let mut shards = Vec::new();
        for j in 0..n {
            let bytes = vec![j as u8; 100 + j];
            std::fs::write(dir.join(manifest::shard_file_name(j)), &bytes).unwrap();
            shards.push(ShardInfo {
                file: manifest::shard_file_name(j),
                first_row: 10 * j as u64,
                rows: 10,
                positions: 10,
                bytes: bytes.len() as u64,
                sha256: manifest::sha256_bytes(&bytes),
            });
        }
        let mut m = Manifest::synthetic_for_bench(1, 10, LogprobEncoding::F32, 0.0, shards[0].clone());
        m.fingerprint = fp.into();
        m.rows_per_shard = 10;
        m.complete = complete;
        m.dataset.rows = 10 * n as u64;
        m.totals = Totals { rows: 10 * n as u64, positions: 10 * n as u64, ..Totals::default() };
        m.shards = shards;
        m.write_atomic(dir, if complete { MANIFEST_FILE } else { PARTIAL_MANIFEST_FILE }).unwrap();
        m
    }

    const WHOLE: PartInfo = PartInfo { index: 0, count: 1 };

    fn names() -> ManifestNames {
        ManifestNames::of(None)
    }

    #[test]
    fn a_new_directory_is_fresh_and_a_foreign_one_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let m = Manifest::synthetic_for_bench(
            1,
            10,
            LogprobEncoding::F32,
            0.0,
            ShardInfo { file: "shard-00000.parquet".into(), first_row: 0, rows: 1, positions: 1, bytes: 1, sha256: String::new() },
        );
        let out = t.path().join("new");
        assert!(matches!(prepare_out_dir(&out, &m, false, &names(), WHOLE).unwrap(), OutState::Fresh));
        assert!(out.is_dir());
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let err = prepare_out_dir(&out, &m, false, &names(), WHOLE).err().unwrap().to_string();
        assert!(err.contains("is not a distill cache (found notes.txt)"), "{err}");
        assert!(out.join("notes.txt").exists(), "a foreign file is never removed");
    }

    /// Resume keeps the intact shards up to the first damaged one and deletes the rest.
    #[test]
    fn a_partial_cache_resumes_from_its_first_damaged_shard() {
        let t = tempfile::tempdir().unwrap();
        let old = cache(t.path(), "f", 4, false);
        match prepare_out_dir(t.path(), &old, false, &names(), WHOLE).unwrap() {
            OutState::Partial(kept, None) => assert_eq!(kept.shards.len(), 4),
            _ => panic!("an intact partial cache resumes whole"),
        }
        std::fs::write(t.path().join("shard-00002.parquet"), b"damaged").unwrap();
        match prepare_out_dir(t.path(), &old, false, &names(), WHOLE).unwrap() {
            OutState::Partial(kept, None) => {
                assert_eq!(kept.shards.iter().map(|s| s.file.as_str()).collect::<Vec<_>>(), ["shard-00000.parquet", "shard-00001.parquet"]);
                assert_eq!((kept.totals.rows, kept.totals.positions), (20, 20));
            }
            _ => panic!("resumes from the damaged shard"),
        }
        assert!(!t.path().join("shard-00002.parquet").exists() && !t.path().join("shard-00003.parquet").exists());
    }

    /// A complete cache is reported as it is when intact; with a shard missing it becomes a
    /// partial cache again (manifest.json removed, the partial manifest written) with a note.
    #[test]
    fn a_complete_cache_is_kept_or_reopened_at_its_missing_shard() {
        let t = tempfile::tempdir().unwrap();
        let old = cache(t.path(), "f", 3, true);
        assert!(matches!(prepare_out_dir(t.path(), &old, false, &names(), WHOLE).unwrap(), OutState::Complete(_)));
        std::fs::remove_file(t.path().join("shard-00001.parquet")).unwrap();
        match prepare_out_dir(t.path(), &old, false, &names(), WHOLE).unwrap() {
            OutState::Partial(kept, Some(note)) => {
                assert_eq!(kept.shards.len(), 1);
                assert!(note.contains("shard-00001.parquet is missing or damaged"), "{note}");
            }
            _ => panic!("a damaged complete cache resumes"),
        }
        assert!(!t.path().join(MANIFEST_FILE).exists());
        assert_eq!(Manifest::read_file(&t.path().join(PARTIAL_MANIFEST_FILE)).unwrap().shards.len(), 1);
    }

    /// Another cache is refused, or with `overwrite` cleared (its shards and manifests).
    #[test]
    fn another_cache_is_refused_unless_overwritten() {
        let t = tempfile::tempdir().unwrap();
        cache(t.path(), "old", 2, true);
        let mut new = Manifest::read(t.path()).unwrap();
        new.fingerprint = "new".into();
        let err = prepare_out_dir(t.path(), &new, false, &names(), WHOLE).err().unwrap().to_string();
        assert!(err.contains("holds a cache made with other settings"), "{err}");
        assert!(matches!(prepare_out_dir(t.path(), &new, true, &names(), WHOLE).unwrap(), OutState::Fresh));
        let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
