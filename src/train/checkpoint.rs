//! Stage two's checkpoints: `checkpoint-STEP/` (model + optimizer) and the pointer
//! `checkpoint.json` that a resumed run starts from; and the atomic export of the student.

use std::path::Path;

use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::integrity::{sync_dir, temporary_name, write_atomic};
use crate::loss::HiddenMaps;
use crate::student::{self, Student};

/// The checkpoint pointer, `checkpoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CheckpointState {
    pub step: usize,
    /// Steps into the epoch `epoch` that were done (batches are skipped on resume).
    pub epoch: usize,
    pub step_in_epoch: usize,
    pub dir: String,
    pub config_sha256: String,
}

/// Where a run stands: its step, epoch and step within the epoch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct At {
    pub step: usize,
    pub epoch: usize,
    pub step_in_epoch: usize,
}

/// The checkpoint a run resumes from: `None` for a new run. A run directory that already
/// holds a run is refused without `--resume`, and with it when the settings differ.
pub(super) fn resume_state(out: &Path, resume: bool, config_sha: &str, config_json: &[u8]) -> Result<Option<CheckpointState>> {
    let pointer = out.join("checkpoint.json");
    if resume && pointer.exists() {
        let s: CheckpointState = serde_json::from_slice(&crate::untrusted::read(&pointer, crate::untrusted::Cap::Settings)?)
            .map_err(|e| Error::Config(format!("{}: not a checkpoint pointer: {e}", pointer.display())))?;
        if s.config_sha256 != config_sha {
            let what = difference_from_run(out, config_json).unwrap_or_else(|| "config.json differs".into());
            return Err(Error::OtherRun(format!(
                "{}: the checkpoint was made with other settings ({what}); resume with the same settings \
                 (a default that changed between versions counts: give the old value explicitly)",
                out.display()
            )));
        }
        return Ok(Some(s));
    }
    if resume
        && out.join("config.json").exists()
        && let Some(what) = difference_from_run(out, config_json)
    {
        // Killed before its first checkpoint: nothing to resume, but --resume still means
        // "the run that is there", so other settings are refused as they would be later.
        return Err(Error::OtherRun(format!(
            "{}: the run there stopped before its first checkpoint and was started with other settings ({what}); \
             rerun with its settings, or choose another --out",
            out.display()
        )));
    }
    if !resume && out.join("config.json").exists() {
        return Err(Error::Config(format!(
            "{} already holds a training run; pass --resume to continue it or choose another --out",
            out.display()
        )));
    }
    Ok(None)
}

/// How the run config `config_json` differs from the `config.json` in `out`; `None` when
/// they agree (the command line aside). A config.json that cannot be read counts as differing.
fn difference_from_run(out: &Path, config_json: &[u8]) -> Option<String> {
    let old: Option<serde_json::Value> = crate::untrusted::read(&out.join("config.json"), crate::untrusted::Cap::Settings)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let new: Option<serde_json::Value> = serde_json::from_slice(config_json).ok();
    match (old, new) {
        (Some(old), Some(new)) => {
            let what = settings_difference(&old, &new);
            (!what.is_empty()).then(|| what.join(", "))
        }
        _ => Some("config.json cannot be read".into()),
    }
}

/// The settings that differ between two run configs (`config.json`), as `path: old -> new`
/// (the command line is left out: it carries --resume), at most six.
fn settings_difference(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys.into_iter().filter(|k| !(path.is_empty() && *k == "command")) {
                    let null = serde_json::Value::Null;
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(&p, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} -> {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out.truncate(6);
    out
}

/// Load a checkpoint's model and optimizer state.
pub(super) fn load(out: &Path, s: &CheckpointState, model: &mut Student, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
    let dir = out.join(&s.dir);
    student::load_burnpack(model, &dir.join("model.bpk"))?;
    load_optim(optim, &dir.join("optim.bpk"))
}

/// Load a checkpoint's hidden-state maps and their optimizer state (`--hidden-layers`).
pub(super) fn load_hidden(out: &Path, s: &CheckpointState, maps: &mut HiddenMaps, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
    let dir = out.join(&s.dir);
    student::load_burnpack(maps, &dir.join(HIDDEN_MAPS))?;
    load_optim(optim, &dir.join(HIDDEN_OPTIM))
}

fn load_optim(optim: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer> {
    optim.load(path).map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

/// The files of a checkpoint's hidden-state maps and their optimizer state.
const HIDDEN_MAPS: &str = "hidden_maps.bpk";
const HIDDEN_OPTIM: &str = "hidden_optim.bpk";

/// Save model + optimizer under `checkpoint-STEP/`, then point `checkpoint.json` at it
/// (atomically), then remove older checkpoints.
pub(super) fn save(
    out: &Path,
    model: &Student,
    optim: &ModuleOptimizer,
    hidden: Option<(&HiddenMaps, &ModuleOptimizer)>,
    at: At,
    config_sha: &str,
) -> Result<()> {
    let name = format!("checkpoint-{:08}", at.step);
    let dir = out.join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let save_optim =
        |o: &ModuleOptimizer, f: &str| o.save(dir.join(f)).map_err(|e| Error::io(dir.join(f), std::io::Error::other(e.to_string())));
    student::save_burnpack(model, &dir.join("model.bpk"))?;
    save_optim(optim, "optim.bpk")?;
    let mut files = vec!["model.bpk", "optim.bpk"];
    if let Some((maps, maps_optim)) = hidden {
        student::save_burnpack(maps, &dir.join(HIDDEN_MAPS))?;
        save_optim(maps_optim, HIDDEN_OPTIM)?;
        files.extend([HIDDEN_MAPS, HIDDEN_OPTIM]);
    }
    for f in files {
        let p = dir.join(f);
        std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| Error::io(&p, e))?;
    }
    sync_dir(&dir)?;
    let state = CheckpointState {
        step: at.step,
        epoch: at.epoch,
        step_in_epoch: at.step_in_epoch,
        dir: name.clone(),
        config_sha256: config_sha.to_string(),
    };
    write_atomic(&out.join("checkpoint.json"), &serde_json::to_vec_pretty(&state).expect("serialises"))?;
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with("checkpoint-") && n != name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// Write `path` through `write` at its temporary name, then rename it into place: a kill
/// leaves the old file or the new one.
pub(super) fn export_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary_name(path);
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
