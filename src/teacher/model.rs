//! The frozen teacher: an ONNX model run through ONNX Runtime (stage one only).
//!
//! On load the model's inputs are inspected and each is given a feed: a dataset column
//! (numeric models), or, for token models, `input_ids`, `attention_mask`, `position_ids`,
//! `token_type_ids` and empty `past_key_values.*` (Optimum "with past" exports), which the
//! user should not have to provide, and `use_cache_branch = false` (the legacy merged
//! decoder). An input that cannot be fed is an error listing the model's inputs. The
//! logits output (f32, f16 or bf16) decides the task: `[batch, classes]` is
//! classification, `[batch, seq, vocab]` a causal LM. The fingerprint is the SHA-256 of
//! the graph file and of every external-data file it names.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorElementType;

use crate::cache::manifest::{ExternalDataInfo, IoInfo, Task, sha256_file};
use crate::error::{Error, Result};

use super::inputs::{Feed, InputMapping, InputPlan, plan_inputs};
use super::run::present_outputs;
use super::session::{TeacherDevice, hash_external_data, hidden_outputs, io_info, logits_output, start_session};

/// An output returned beside the logits: `[batch, dim]` or `[batch, seq, dim]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenOutput {
    pub name: String,
    pub dim: usize,
    /// `[batch, seq, dim]`: one vector per position.
    pub per_position: bool,
}

/// A loaded teacher.
pub struct Teacher {
    pub(super) path: PathBuf,
    pub(super) session: Session,
    pub(super) inputs: Vec<InputPlan>,
    pub(super) output: String,
    /// Outputs returned beside the logits, in the order asked for.
    pub hidden: Vec<HiddenOutput>,
    pub task: Task,
    /// Classes or vocabulary: the last dimension of the logits.
    pub vocab_size: usize,
    /// SHA-256 of the graph file.
    pub sha256: String,
    pub bytes: u64,
    /// The external-data files the graph names (weights of models over 2 GB), hashed.
    pub external_data: Vec<ExternalDataInfo>,
    pub(super) io_inputs: Vec<IoInfo>,
    pub(super) io_outputs: Vec<IoInfo>,
    /// Why a requested CUDA device is not used (the teacher then runs on the CPU).
    pub device_note: Option<String>,
    /// The `present.*` output continuing each past input, in input order; empty when the
    /// model has no past inputs or lacks one of their outputs (no KV-cache decoding).
    pub(super) presents: Vec<String>,
    /// How the session was built (threads, spin, library), to build it again with the
    /// soft-label nodes.
    pub(super) build: (usize, bool, Option<PathBuf>, TeacherDevice),
    /// The soft-label nodes the session computes, if any.
    pub(super) soft_nodes: Option<super::ingraph::SoftLabelNodes>,
}

impl Teacher {
    /// Load `path` with `threads` intra-op threads (spin-waiting between operators if `spin`)
    /// on `device` and plan its inputs. A CUDA
    /// device that this ONNX Runtime cannot use falls back to the CPU; the reason is in
    /// [`Teacher::device_note`].
    pub fn load(
        path: &Path,
        mapping: &InputMapping,
        threads: usize,
        spin: bool,
        ort_lib: Option<&Path>,
        device: TeacherDevice,
    ) -> Result<Teacher> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let (mut session_builder, device_note) = start_session(path, threads, spin, ort_lib, device)?;
        // The graph and its external data are checked and hashed before ONNX Runtime reads them.
        let sha256 = sha256_file(path)?;
        let external_data = hash_external_data(path)?;
        let session =
            session_builder.commit_from_file(path).map_err(|e| Error::teacher(path, format!("not a loadable ONNX model: {e}")))?;
        let mut io_inputs: Vec<IoInfo> = session.inputs().iter().map(|o| io_info(o.name(), o.dtype())).collect();
        let io_outputs: Vec<IoInfo> = session.outputs().iter().map(|o| io_info(o.name(), o.dtype())).collect();
        let (output, task, vocab) = logits_output(path, mapping, &io_outputs)?;
        let hidden = hidden_outputs(path, &mapping.hidden, &io_outputs, &output, task)?;
        let types: Vec<Option<TensorElementType>> = session.inputs().iter().map(|o| o.dtype().tensor_type()).collect();
        let inputs = plan_inputs(path, mapping, &types, &mut io_inputs)?;
        let presents = present_outputs(&inputs, &io_outputs);
        Ok(Teacher {
            path: path.to_path_buf(),
            session,
            inputs,
            output,
            hidden,
            task,
            vocab_size: vocab,
            sha256,
            bytes: meta.len(),
            external_data,
            io_inputs,
            io_outputs,
            device_note,
            presents,
            build: (threads, spin, ort_lib.map(Path::to_path_buf), device),
            soft_nodes: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The teacher as a manifest records it, under the file name `file`.
    pub fn manifest_info(&self, file: String) -> crate::cache::manifest::TeacherInfo {
        crate::cache::manifest::TeacherInfo {
            file,
            sha256: self.sha256.clone(),
            bytes: self.bytes,
            external_data: self.external_data.clone(),
            inputs: self.io_inputs.clone(),
            outputs: self.io_outputs.clone(),
            logits_output: self.output.clone(),
        }
    }

    pub fn output_name(&self) -> &str {
        &self.output
    }

    pub fn inputs_info(&self) -> &[IoInfo] {
        &self.io_inputs
    }

    pub fn outputs_info(&self) -> &[IoInfo] {
        &self.io_outputs
    }

    /// Dataset columns the model is fed from, with the width each input expects
    /// (`None` when that dimension is dynamic).
    pub fn feature_columns(&self) -> Vec<(String, Option<usize>)> {
        self.inputs
            .iter()
            .filter_map(|i| match &i.feed {
                Feed::Column(c) => Some((c.clone(), i.shape.get(1).filter(|&&d| d > 0).map(|&d| d as usize))),
                _ => None,
            })
            .collect()
    }
}
