//! `distill merge`: combine the part manifests of a sharded capture
//! (`cache-teacher --part I/N`, one worker per part, e.g. a Slurm job array) into one
//! cache. Refuses gaps, overlaps, missing or unfinished parts, and parts made with other
//! settings or teachers. Reads and writes only through the cache module's types.

use std::path::{Path, PathBuf};

use crate::cache::Manifest;
use crate::cache::manifest::{self, MANIFEST_FILE, TOKENIZER_FILE, sha256_file};
use crate::error::{Error, Result};
use crate::store::{Location, Pull, Staging};

#[derive(Debug, Clone)]
pub struct MergeSummary {
    pub out: PathBuf,
    pub parts: usize,
    pub shards: usize,
    pub rows: u64,
    pub positions: u64,
}

/// Merge the parts found in `inputs` (directories or object-storage URLs; `out` may be one
/// of them) into `out`. Remote parts are pulled into their staging directories, merged
/// there, and the merged cache is uploaded (shards first, `manifest.json` last).
pub fn merge(out: &Path, inputs: &[PathBuf], command: Vec<String>) -> Result<MergeSummary> {
    let mut local_inputs = Vec::new();
    for p in inputs {
        local_inputs.push(match Location::parse(p)? {
            Location::Local(d) => d,
            Location::Remote(r) => {
                let d = r.staging_dir();
                r.pull_all(&d)?;
                d
            }
        });
    }
    let lock = |dir: &Path| Ok(vec![crate::lock::DirLock::acquire(dir, "", "a cache")?]);
    let mut staging = Staging::open(out, lock, Pull::All)?;
    let mut summary = merge_local(&mut staging, &local_inputs, command)?;
    summary.out = staging.finish(false)?;
    Ok(summary)
}

/// Merge into `staging`'s directory.
fn merge_local(staging: &mut Staging, inputs: &[PathBuf], command: Vec<String>) -> Result<MergeSummary> {
    let parts = find_parts(inputs)?;
    let first = check_parts(&parts)?;
    let shards = tiled_shards(&parts, &first)?;
    let out = &staging.dir.clone();
    staging.take()?;
    refuse_other_cache(out, &first)?;
    // Bring the shards (checked) into `out`, then publish the manifest last.
    copy_shards(out, &shards)?;
    copy_side_files(out, &parts)?;
    let mut merged = first.clone();
    merged.part = None;
    merged.shards = shards.into_iter().map(|(_, s)| s).collect();
    merged.totals = Default::default();
    for (_, m) in &parts {
        merged.totals.rows += m.totals.rows;
        merged.totals.positions += m.totals.positions;
        merged.totals.truncated_rows += m.totals.truncated_rows;
        merged.totals.rows_without_positions += m.totals.rows_without_positions;
    }
    merged.command = command;
    merged.publish(out, MANIFEST_FILE, None)?;
    Ok(MergeSummary {
        out: out.to_path_buf(),
        parts: parts.len(),
        shards: merged.shards.len(),
        rows: merged.totals.rows,
        positions: merged.totals.positions,
    })
}

/// The finished part manifests in the input directories (an unfinished one is refused).
fn find_parts(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, Manifest)>> {
    let mut parts: Vec<(PathBuf, Manifest)> = Vec::new();
    for dir in inputs {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("manifest.part-") && !name.ends_with(".partial.json") && name.ends_with(".json") {
                parts.push((dir.clone(), Manifest::read_file(&e.path())?));
            } else if name.starts_with("manifest.part-") && name.ends_with(".partial.json") {
                return Err(Error::cache(e.path(), "this part is not finished (rerun its cache-teacher --part command)"));
            }
        }
    }
    if parts.is_empty() {
        return Err(Error::Config(format!(
            "no part manifests (manifest.part-I-of-N.json) in {}",
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(parts)
}

/// Every part of one capture, each once, all finished, with the same fingerprint; returns
/// the first part's manifest.
fn check_parts(parts: &[(PathBuf, Manifest)]) -> Result<Manifest> {
    let first = parts[0].1.clone();
    let count = first.part.map(|p| p.count).unwrap_or(0);
    let mut seen = vec![false; count];
    for (dir, m) in parts {
        let here = dir.join(m.part.map(|p| p.file_name(false)).unwrap_or_default());
        if m.fingerprint != first.fingerprint {
            return Err(Error::cache(
                &here,
                format!(
                    "was made with other settings or another teacher/dataset than part {} (fingerprint {} vs {})",
                    first.part.map(|p| p.index.to_string()).unwrap_or_else(|| "?".into()),
                    crate::integrity::short(&m.fingerprint),
                    crate::integrity::short(&first.fingerprint)
                ),
            ));
        }
        let Some(p) = m.part.filter(|p| p.count == count) else {
            return Err(Error::cache(&here, format!("is not a part of the same {count}-way capture")));
        };
        if !m.complete {
            return Err(Error::cache(&here, "this part is not finished"));
        }
        if std::mem::replace(&mut seen[p.index], true) {
            return Err(Error::cache(&here, format!("part {}/{count} was given twice", p.index)));
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(Error::Config(format!("part {missing}/{count} is missing (each of 0..{count} is needed)")));
    }
    Ok(first)
}

/// The parts' shards in row order, which must tile the dataset exactly.
fn tiled_shards(parts: &[(PathBuf, Manifest)], first: &Manifest) -> Result<Vec<(PathBuf, manifest::ShardInfo)>> {
    let mut shards: Vec<(PathBuf, manifest::ShardInfo)> =
        parts.iter().flat_map(|(d, m)| m.shards.iter().map(move |s| (d.clone(), s.clone()))).collect();
    shards.sort_by_key(|(_, s)| s.first_row);
    let mut next = 0u64;
    for (_, s) in &shards {
        if s.first_row != next {
            return Err(Error::Config(format!(
                "the parts do not tile the dataset: {} starts at row {} but row {next} comes next ({})",
                s.file,
                s.first_row,
                if s.first_row > next { "a gap" } else { "an overlap" }
            )));
        }
        next += s.rows;
    }
    if next != first.dataset.rows {
        return Err(Error::Config(format!("the parts cover {next} rows but the dataset has {}", first.dataset.rows)));
    }
    Ok(shards)
}

/// Each shard, its checksum checked, into `out` (unless it is there already).
fn copy_shards(out: &Path, shards: &[(PathBuf, manifest::ShardInfo)]) -> Result<()> {
    for (dir, s) in shards {
        let src = dir.join(&s.file);
        let sha = sha256_file(&src)?;
        if sha != s.sha256 {
            return Err(Error::cache(&src, format!("checksum mismatch: file has sha256 {sha}, its part manifest records {}", s.sha256)));
        }
        let dst = out.join(&s.file);
        if !same_file(&src, &dst) {
            let bytes = crate::untrusted::read(&src, crate::untrusted::Cap::Weights)?;
            manifest::write_atomic(&dst, &bytes)?;
        }
    }
    Ok(())
}

/// The tokenizer and chat template beside the parts' shards.
fn copy_side_files(out: &Path, parts: &[(PathBuf, Manifest)]) -> Result<()> {
    for file in [TOKENIZER_FILE, crate::chat::CHAT_TEMPLATE_FILE] {
        if let Some((dir, _)) = parts.iter().find(|(d, _)| d.join(file).exists()) {
            let src = dir.join(file);
            if !same_file(&src, &out.join(file)) {
                let bytes = crate::untrusted::read(&src, crate::untrusted::Cap::Tokenizer)?;
                manifest::write_atomic(&out.join(file), &bytes)?;
            }
        }
    }
    Ok(())
}

/// `out` may already hold this very cache (a merge run again), never another one: merging
/// over a different complete cache would replace it.
fn refuse_other_cache(out: &Path, first: &Manifest) -> Result<()> {
    let existing = out.join(MANIFEST_FILE);
    if !existing.exists() {
        return Ok(());
    }
    let why = match Manifest::read_file(&existing) {
        Ok(m) if m.fingerprint == first.fingerprint => return Ok(()),
        Ok(m) => format!(
            "a complete cache made with other settings or another teacher/dataset (fingerprint {} vs the parts' {})",
            crate::integrity::short(&m.fingerprint),
            crate::integrity::short(&first.fingerprint)
        ),
        Err(e) => format!("a manifest.json this merge cannot read ({e})"),
    };
    Err(Error::cache(out, format!("--out already holds {why}; merge into another directory (or remove that cache first)")))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
