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

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};

use half::{bf16, f16};

use crate::cache::manifest::{ExternalDataInfo, IoInfo, Task, sha256_file};
use crate::error::{Error, Result};

/// How one ONNX input is filled.
#[derive(Debug, Clone, PartialEq)]
pub enum Feed {
    /// From a numeric dataset column of this name.
    Column(String),
    InputIds,
    AttentionMask,
    /// `cumsum(attention_mask) - 1`, clamped at 0 (what Hugging Face computes).
    PositionIds,
    /// All zeros (single-segment input).
    TokenTypeIds,
    /// A zero-length past: `[batch, heads, 0, head_dim]`, zeros.
    EmptyPast,
    /// The merged decoder's `use_cache_branch`: `[false]` (no past yet).
    NoCacheBranch,
    /// The hard labels of the in-graph soft-label nodes.
    HardLabels,
}

impl Feed {
    fn describe(&self) -> String {
        match self {
            Feed::Column(c) => format!("column:{c}"),
            Feed::InputIds => "input_ids".into(),
            Feed::AttentionMask => "attention_mask".into(),
            Feed::PositionIds => "position_ids".into(),
            Feed::TokenTypeIds => "token_type_ids (zeros)".into(),
            Feed::EmptyPast => "empty past (length 0)".into(),
            Feed::NoCacheBranch => "false (no past)".into(),
            Feed::HardLabels => "hard labels".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct InputPlan {
    name: String,
    dtype: TensorElementType,
    shape: Vec<i64>,
    feed: Feed,
}

/// What a teacher is given for one batch.
pub enum TeacherBatch<'a> {
    /// Numeric features: `(column name, flat values [batch * width], width)`.
    Numeric { batch: usize, columns: &'a [(String, Vec<f32>, usize)] },
    /// Right-padded tokens. # Shapes: `ids`, `mask`: `[batch * seq]`
    Tokens { batch: usize, seq: usize, ids: &'a [i64], mask: &'a [i64] },
}

/// The hard labels fed to a teacher that computes its soft labels in the graph
/// ([`Teacher::compute_soft_labels_in_graph`]): `[batch]` or `[batch * seq]`, 0 where there
/// is none (its log-prob is then not used).
pub type HardLabels<'a> = &'a [i64];

/// One batch's soft labels as the in-graph nodes computed them, borrowed from ONNX Runtime.
///
/// # Shapes
/// - `logprobs`, `ids`: `[positions, k]` (`positions` = batch, or batch * seq)
/// - `tail_logmass`, `entropy`, `label_logprob`: `[positions]`
pub struct GraphSoftLabels<'a> {
    pub k: usize,
    pub logprobs: &'a [f32],
    pub ids: &'a [i64],
    pub tail_logmass: &'a [f32],
    pub entropy: &'a [f32],
    pub label_logprob: &'a [f32],
}

/// A batch of logits as ONNX Runtime returns them, borrowed (no copy), in the export's
/// own precision; rows are converted to f32 only where they are copied out.
#[derive(Clone, Copy)]
pub enum Logits<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl Logits<'_> {
    pub fn len(&self) -> usize {
        match self {
            Logits::F32(v) => v.len(),
            Logits::F16(v) => v.len(),
            Logits::Bf16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Append `range` of the logits to `out`, as f32 (exact: f16 and bf16 values are f32
    /// values).
    pub fn extend_f32(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        match self {
            Logits::F32(v) => out.extend_from_slice(&v[range]),
            Logits::F16(v) => out.extend(v[range].iter().map(|x| x.to_f32())),
            Logits::Bf16(v) => out.extend(v[range].iter().map(|x| x.to_f32())),
        }
    }
    /// All the logits as f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        self.extend_f32(0..self.len(), &mut out);
        out
    }
}

/// How inputs are mapped when the model is loaded.
#[derive(Debug, Clone, Default)]
pub struct InputMapping {
    /// Token model: feed `input_ids` & co from a tokenizer.
    pub tokens: bool,
    /// Explicit `input = column` pairs (numeric models).
    pub columns: Vec<(String, String)>,
    /// Output holding the logits; default `logits`, else the first output.
    pub output: Option<String>,
    /// Outputs returned beside the logits (`--hidden-states`).
    pub hidden: Vec<String>,
}

/// An output returned beside the logits: `[batch, dim]` or `[batch, seq, dim]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenOutput {
    pub name: String,
    pub dim: usize,
    /// `[batch, seq, dim]`: one vector per position.
    pub per_position: bool,
}

/// One batch's values of a [`HiddenOutput`], borrowed from ONNX Runtime like the logits.
pub struct HiddenValues<'a> {
    pub shape: Vec<usize>,
    pub values: Logits<'a>,
}

/// A loaded teacher.
pub struct Teacher {
    path: PathBuf,
    session: Session,
    inputs: Vec<InputPlan>,
    output: String,
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
    io_inputs: Vec<IoInfo>,
    io_outputs: Vec<IoInfo>,
    /// Why a requested CUDA device is not used (the teacher then runs on the CPU).
    pub device_note: Option<String>,
    /// The `present.*` output continuing each past input, in input order; empty when the
    /// model has no past inputs or lacks one of their outputs (no KV-cache decoding).
    presents: Vec<String>,
    /// How the session was built (threads, spin, library), to build it again with the
    /// soft-label nodes.
    build: (usize, bool, Option<PathBuf>, TeacherDevice),
    /// The soft-label nodes the session computes, if any.
    soft_nodes: Option<super::ingraph::SoftLabelNodes>,
}

/// One decoding step of a with-past export: `new` tokens per row after `past` cached
/// positions.
///
/// # Shapes
/// - `ids`, `positions`: `[batch * new]`
/// - `mask`: `[batch * (past + new)]`, over the cached positions and the new ones
pub struct Step<'a> {
    pub batch: usize,
    pub new: usize,
    pub ids: &'a [i64],
    pub mask: &'a [i64],
    pub positions: &'a [i64],
}

/// The key/value cache a with-past export returned (`present.*`), fed back as its past
/// (`past_key_values.*`) on the next [`Teacher::run_step`].
pub struct Past(Vec<ort::value::DynValue>);

/// Where the teacher runs (`--device cpu | cuda | cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TeacherDevice {
    #[default]
    Cpu,
    Cuda(i32),
}

impl std::str::FromStr for TeacherDevice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<TeacherDevice, String> {
        match s {
            "cpu" => Ok(TeacherDevice::Cpu),
            "cuda" => Ok(TeacherDevice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .filter(|n: &i32| *n >= 0)
                .map(TeacherDevice::Cuda)
                .ok_or_else(|| format!("must be `cpu`, `cuda` or `cuda:N` (got `{s}`)")),
        }
    }
}

impl std::fmt::Display for TeacherDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TeacherDevice::Cpu => f.write_str("cpu"),
            TeacherDevice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

fn dims(shape: &[i64]) -> String {
    let d: Vec<String> = shape.iter().map(|&d| if d < 0 { "?".to_string() } else { d.to_string() }).collect();
    format!("[{}]", d.join(", "))
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

    /// Rebuild the session with nodes that compute the soft labels (top `k` of
    /// `LogSoftmax(logits / temperature)` among ids `0..selectable`, tail, entropy, the hard
    /// label's log-prob) inside ONNX Runtime: see [`super::ingraph`]. Then use
    /// [`Teacher::run_soft_labels`]. The model needs opset >= 13.
    pub fn compute_soft_labels_in_graph(&mut self, k: usize, temperature: f32, selectable: usize) -> Result<()> {
        use super::ingraph;
        let path = self.path.clone();
        let bytes = crate::untrusted::read(&path, crate::untrusted::Cap::Weights)?;
        match ingraph::default_opset(&bytes) {
            Some(v) if v >= ingraph::MIN_OPSET => {}
            found => {
                return Err(Error::teacher(
                    &path,
                    format!(
                        "--topk-in onnxruntime needs opset >= {} (the model's default-domain opset is {}); use --topk-in rust",
                        ingraph::MIN_OPSET,
                        found.map_or("not found".into(), |v| v.to_string())
                    ),
                ));
            }
        }
        let out = self.io_outputs.iter().find(|o| o.name == self.output).expect("the logits output exists");
        let logits_type = match out.dtype.as_str() {
            "f16" => 10,
            "bf16" => 16,
            _ => 1,
        };
        let nodes = ingraph::SoftLabelNodes {
            logits: self.output.clone(),
            logits_type,
            rank: out.shape.len(),
            vocab: self.vocab_size,
            selectable,
            k,
            temperature,
        };
        let model = ingraph::append(&bytes, &nodes);
        let (threads, spin, ort_lib, device) = self.build.clone();
        let env = super::runtime::environment(ort_lib.as_deref())?;
        let configure = |e: String| Error::teacher(&path, format!("cannot configure a session: {e}"));
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        // An in-memory model finds its external-data files through this folder.
        let folder = dir.to_string_lossy().into_owned();
        let mut builder = session_builder(env, &path, threads, spin)?
            .with_config_entry("session.model_external_initializers_file_folder_path", &folder)
            .map_err(|e| configure(e.to_string()))?;
        // On the device the first session ran on (the CPU if CUDA did not start).
        if let (TeacherDevice::Cuda(id), None) = (device, &self.device_note) {
            let cuda = ort::ep::CUDA::default().with_device_id(id).build().error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| configure(e.to_string()))?;
        }
        let session = builder
            .commit_from_memory(&model)
            .map_err(|e| Error::teacher(&path, format!("the model with the soft-label nodes appended does not load: {e}")))?;
        self.session = session;
        self.inputs.push(InputPlan {
            name: ingraph::LABELS_INPUT.into(),
            dtype: TensorElementType::Int64,
            shape: vec![-1; nodes.rank - 1],
            feed: Feed::HardLabels,
        });
        self.soft_nodes = Some(nodes);
        Ok(())
    }

    /// Whether the session computes the soft labels ([`Teacher::compute_soft_labels_in_graph`]).
    pub fn soft_labels_in_graph(&self) -> bool {
        self.soft_nodes.is_some()
    }

    /// Run one batch through a session that computes the soft labels: only the soft labels
    /// and the [`Teacher::hidden`] outputs leave ONNX Runtime, not the logits. `f` sees the
    /// leading shape (`[batch]` or `[batch, seq]`), the soft labels and the hidden states.
    pub fn run_soft_labels<R>(
        &mut self,
        batch: &TeacherBatch<'_>,
        labels: HardLabels<'_>,
        f: impl FnOnce(&[usize], GraphSoftLabels<'_>, &[HiddenValues<'_>]) -> Result<R>,
    ) -> Result<R> {
        use super::ingraph;
        let Some(nodes) = self.soft_nodes.clone() else {
            return Err(Error::teacher(&self.path, "the session does not compute the soft labels"));
        };
        let mut feeds: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::with_capacity(self.inputs.len());
        for plan in &self.inputs {
            let value = if plan.feed == Feed::HardLabels {
                let shape: Vec<i64> = match batch {
                    TeacherBatch::Tokens { batch, seq, .. } if nodes.rank == 3 => vec![*batch as i64, *seq as i64],
                    TeacherBatch::Tokens { batch, .. } | TeacherBatch::Numeric { batch, .. } => vec![*batch as i64],
                };
                Tensor::<i64>::from_array((shape, labels.to_vec()))
                    .map(|t| t.into_dyn().into())
                    .map_err(|e| Error::teacher(&self.path, format!("input `{}`: {e}", plan.name)))?
            } else {
                self.input_value(plan, batch)?
            };
            feeds.push((Cow::Owned(plan.name.clone()), value));
        }
        let names = [ingraph::TOP_LOGPROBS, ingraph::TOP_IDS, ingraph::TAIL_LOGMASS, ingraph::ENTROPY, ingraph::LABEL_LOGPROB];
        let mut selector = ort::session::OutputSelector::no_default();
        for n in names.iter().copied().chain(self.hidden.iter().map(|h| h.name.as_str())) {
            selector = selector.with(n);
        }
        let path = self.path.clone();
        let options =
            ort::session::RunOptions::new().map_err(|e| Error::teacher(&path, format!("run options: {e}")))?.with_outputs(selector);
        let outputs =
            self.session.run_with_options(feeds, &options).map_err(|e| Error::teacher(&path, format!("inference failed: {e}")))?;
        let get =
            |name: &str| outputs.get(name).ok_or_else(|| Error::teacher(&path, format!("output `{name}` missing from the run's results")));
        let bad = |name: &str, e: ort::Error| Error::teacher(&path, format!("output `{name}`: {e}"));
        let f32s = |name: &str| get(name)?.try_extract_tensor::<f32>().map_err(|e| bad(name, e));
        let (shape, logprobs) = f32s(ingraph::TOP_LOGPROBS)?;
        let (_, ids) = get(ingraph::TOP_IDS)?.try_extract_tensor::<i64>().map_err(|e| bad(ingraph::TOP_IDS, e))?;
        let lead: Vec<usize> = shape[..shape.len() - 1].iter().map(|&d| d.max(0) as usize).collect();
        let soft = GraphSoftLabels {
            k: nodes.k,
            logprobs,
            ids,
            tail_logmass: f32s(ingraph::TAIL_LOGMASS)?.1,
            entropy: f32s(ingraph::ENTROPY)?.1,
            label_logprob: f32s(ingraph::LABEL_LOGPROB)?.1,
        };
        let hidden = self
            .hidden
            .iter()
            .map(|h| {
                let value = get(&h.name)?;
                let (shape, values) = match value.dtype().tensor_type() {
                    Some(TensorElementType::Float16) => {
                        value.try_extract_tensor::<f16>().map(|(s, v)| (s, Logits::F16(v))).map_err(|e| bad(&h.name, e))?
                    }
                    Some(TensorElementType::Bfloat16) => {
                        value.try_extract_tensor::<bf16>().map(|(s, v)| (s, Logits::Bf16(v))).map_err(|e| bad(&h.name, e))?
                    }
                    _ => value.try_extract_tensor::<f32>().map(|(s, v)| (s, Logits::F32(v))).map_err(|e| bad(&h.name, e))?,
                };
                Ok(HiddenValues { shape: shape.iter().map(|&d| d.max(0) as usize).collect(), values })
            })
            .collect::<Result<Vec<_>>>()?;
        f(&lead, soft, &hidden)
    }

    /// Whether the model can decode padded batches with a KV cache ([`Teacher::run_step`]):
    /// it has past inputs, a `present.*` output for each, and `attention_mask` and
    /// `position_ids` inputs (without them the padding inside the cache would be attended
    /// to, or the positions after it miscounted).
    pub fn has_kv_cache(&self) -> bool {
        let has = |feed: Feed| self.inputs.iter().any(|i| i.feed == feed);
        !self.presents.is_empty() && has(Feed::AttentionMask) && has(Feed::PositionIds)
    }

    /// Run one decoding step with a KV cache: `past` from the previous step, `None` for the
    /// first (the prompt, fed an empty past). `f` sees the logits of the new positions
    /// borrowed from ONNX Runtime; the returned [`Past`] holds every position so far.
    ///
    /// # Shapes
    /// - logits: `[batch, new, vocab]`
    pub fn run_step<R>(
        &mut self,
        step: &Step<'_>,
        past: Option<Past>,
        f: impl FnOnce(&[usize], Logits<'_>) -> Result<R>,
    ) -> Result<(R, Past)> {
        let bad = |m: String| Error::teacher(&self.path, m);
        if !self.has_kv_cache() {
            return Err(bad("the model lacks past_key_values inputs with present outputs, attention_mask or position_ids: it cannot decode with a KV cache".into()));
        }
        let cached = past.is_some();
        let mut past_values = past.map(|p| p.0.into_iter());
        let (b, new) = (step.batch as i64, step.new as i64);
        let total = step.mask.len() as i64 / b.max(1);
        let mut feeds: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::with_capacity(self.inputs.len());
        for plan in &self.inputs {
            let value = match &plan.feed {
                Feed::InputIds => int_tensor(plan, vec![b, new], step.ids.to_vec()).map_err(bad)?,
                Feed::AttentionMask => int_tensor(plan, vec![b, total], step.mask.to_vec()).map_err(bad)?,
                Feed::PositionIds => int_tensor(plan, vec![b, new], step.positions.to_vec()).map_err(bad)?,
                Feed::TokenTypeIds => int_tensor(plan, vec![b, new], vec![0; step.ids.len()]).map_err(bad)?,
                Feed::EmptyPast => match &mut past_values {
                    Some(values) => values.next().ok_or_else(|| bad(format!("no past value for input `{}`", plan.name)))?.into(),
                    None => {
                        let first = TeacherBatch::Tokens { batch: step.batch, seq: step.new, ids: step.ids, mask: step.mask };
                        self.input_value(plan, &first)?
                    }
                },
                Feed::NoCacheBranch => {
                    let s: Vec<i64> = if plan.shape.is_empty() { vec![] } else { vec![1] };
                    Tensor::<bool>::from_array((s, vec![cached]))
                        .map(|t| t.into_dyn().into())
                        .map_err(|e| bad(format!("input `{}`: {e}", plan.name)))?
                }
                Feed::Column(c) => {
                    return Err(bad(format!("input `{}` is fed from column `{c}`, which decoding does not carry", plan.name)));
                }
                Feed::HardLabels => return Err(bad(format!("input `{}` is fed by run_soft_labels", plan.name))),
            };
            feeds.push((Cow::Owned(plan.name.clone()), value));
        }
        let path = self.path.clone();
        let mut outputs = self.session.run(feeds).map_err(|e| Error::teacher(&path, format!("inference failed: {e}")))?;
        let result = {
            let value = outputs
                .get(&self.output)
                .ok_or_else(|| Error::teacher(&path, format!("output `{}` missing from the run's results", self.output)))?;
            let bad = |e: ort::Error| Error::teacher(&path, format!("output `{}`: {e}", self.output));
            let (shape, values) = match value.dtype().tensor_type() {
                Some(TensorElementType::Float16) => value.try_extract_tensor::<f16>().map(|(s, v)| (s, Logits::F16(v))).map_err(bad)?,
                Some(TensorElementType::Bfloat16) => value.try_extract_tensor::<bf16>().map(|(s, v)| (s, Logits::Bf16(v))).map_err(bad)?,
                _ => value.try_extract_tensor::<f32>().map(|(s, v)| (s, Logits::F32(v))).map_err(bad)?,
            };
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            f(&shape, values)?
        };
        let presents = self
            .presents
            .iter()
            .map(|name| {
                outputs.remove(name).ok_or_else(|| Error::teacher(&path, format!("output `{name}` missing from the run's results")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((result, Past(presents)))
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

    /// Run one batch; `f` sees the logits' shape and values while they are borrowed
    /// from ONNX Runtime (no copy), in the export's precision, and the [`Teacher::hidden`]
    /// outputs the same way.
    ///
    /// # Shapes
    /// - logits: `[batch, classes]` or `[batch, seq, vocab]`
    /// - hidden: `[batch, dim]` or `[batch, seq, dim]` each
    pub fn run<R>(
        &mut self,
        batch: &TeacherBatch<'_>,
        f: impl FnOnce(&[usize], Logits<'_>, &[HiddenValues<'_>]) -> Result<R>,
    ) -> Result<R> {
        let mut feeds: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::with_capacity(self.inputs.len());
        for plan in &self.inputs {
            let value = self.input_value(plan, batch)?;
            feeds.push((Cow::Owned(plan.name.clone()), value));
        }
        let path = self.path.clone();
        let outputs = self.session.run(feeds).map_err(|e| Error::teacher(&path, format!("inference failed: {e}")))?;
        let take = |name: &str| {
            let value =
                outputs.get(name).ok_or_else(|| Error::teacher(&path, format!("output `{name}` missing from the run's results")))?;
            let bad = |e: ort::Error| Error::teacher(&path, format!("output `{name}`: {e}"));
            let (shape, values) = match value.dtype().tensor_type() {
                Some(TensorElementType::Float16) => value.try_extract_tensor::<f16>().map(|(s, v)| (s, Logits::F16(v))).map_err(bad)?,
                Some(TensorElementType::Bfloat16) => value.try_extract_tensor::<bf16>().map(|(s, v)| (s, Logits::Bf16(v))).map_err(bad)?,
                _ => value.try_extract_tensor::<f32>().map(|(s, v)| (s, Logits::F32(v))).map_err(bad)?,
            };
            Ok(HiddenValues { shape: shape.iter().map(|&d| d.max(0) as usize).collect(), values })
        };
        let logits = take(&self.output)?;
        let hidden = self.hidden.iter().map(|h| take(&h.name)).collect::<Result<Vec<_>>>()?;
        f(&logits.shape, logits.values, &hidden)
    }

    fn input_value(&self, plan: &InputPlan, batch: &TeacherBatch<'_>) -> Result<SessionInputValue<'static>> {
        let bad = |m: String| Error::teacher(&self.path, m);
        match (&plan.feed, batch) {
            (Feed::Column(col), TeacherBatch::Numeric { batch, columns }) => {
                let (_, values, width) = columns
                    .iter()
                    .find(|(c, _, _)| c == col)
                    .ok_or_else(|| bad(format!("input `{}`: no values for column `{col}`", plan.name)))?;
                let shape: Vec<i64> = if plan.shape.len() == 1 { vec![*batch as i64] } else { vec![*batch as i64, *width as i64] };
                if plan.shape.len() == 1 && *width != 1 {
                    return Err(bad(format!("input `{}` is [batch] but column `{col}` has {width} values per row", plan.name)));
                }
                if plan.shape.len() > 2 {
                    return Err(bad(format!(
                        "input `{}` has shape {}; numeric columns feed [batch] or [batch, features]",
                        plan.name,
                        dims(&plan.shape)
                    )));
                }
                numeric_tensor(plan, shape, values).map_err(bad)
            }
            (Feed::Column(col), TeacherBatch::Tokens { .. }) => {
                Err(bad(format!("input `{}` is fed from column `{col}`, which a token batch does not carry", plan.name)))
            }
            (feed, TeacherBatch::Tokens { batch, seq, ids, mask }) => {
                let shape = vec![*batch as i64, *seq as i64];
                let values: Vec<i64> = match feed {
                    Feed::InputIds => ids.to_vec(),
                    Feed::AttentionMask => mask.to_vec(),
                    Feed::TokenTypeIds => vec![0; ids.len()],
                    Feed::PositionIds => {
                        let mut p = Vec::with_capacity(mask.len());
                        for row in mask.chunks(*seq) {
                            let mut c = 0i64;
                            for &m in row {
                                c += m;
                                p.push((c - 1).max(0));
                            }
                        }
                        p
                    }
                    Feed::EmptyPast => {
                        let s = vec![*batch as i64, plan.shape[1], 0, plan.shape[3]];
                        return match plan.dtype {
                            TensorElementType::Float32 => Tensor::<f32>::from_array((s, Vec::<f32>::new())).map(|t| t.into_dyn().into()),
                            TensorElementType::Float16 => Tensor::<f16>::from_array((s, Vec::<f16>::new())).map(|t| t.into_dyn().into()),
                            TensorElementType::Bfloat16 => Tensor::<bf16>::from_array((s, Vec::<bf16>::new())).map(|t| t.into_dyn().into()),
                            other => return Err(bad(format!("past input `{}` has dtype {other}", plan.name))),
                        }
                        .map_err(|e| bad(format!("input `{}`: {e}", plan.name)));
                    }
                    Feed::NoCacheBranch => {
                        let s: Vec<i64> = if plan.shape.is_empty() { vec![] } else { vec![1] };
                        return Tensor::<bool>::from_array((s, vec![false]))
                            .map(|t| t.into_dyn().into())
                            .map_err(|e| bad(format!("input `{}`: {e}", plan.name)));
                    }
                    Feed::Column(_) => unreachable!("handled above"),
                    Feed::HardLabels => return Err(bad(format!("input `{}` is fed by run_soft_labels", plan.name))),
                };
                int_tensor(plan, shape, values).map_err(bad)
            }
            (feed, TeacherBatch::Numeric { .. }) => {
                Err(bad(format!("input `{}` needs {} but the batch has no tokens", plan.name, feed.describe())))
            }
        }
    }
}

/// The outputs asked for beside the logits, checked against the model's outputs: each
/// must exist, be floating point, and have a fixed last dimension; `[batch, dim]` only for
/// a classifier.
/// The inputs and outputs of a model, each as `name dtype [shape]`, for error messages.
fn listing(ios: &[IoInfo]) -> String {
    ios.iter().map(|i| format!("{} {} {}", i.name, i.dtype, dims(&i.shape))).collect::<Vec<_>>().join(", ")
}

/// A session builder for `path` on `device`; a CUDA device that this ONNX Runtime cannot use
/// gives a CPU builder and the reason.
fn start_session(
    path: &Path,
    threads: usize,
    spin: bool,
    ort_lib: Option<&Path>,
    device: TeacherDevice,
) -> Result<(ort::session::builder::SessionBuilder, Option<String>)> {
    let env = super::runtime::environment(ort_lib)?;
    let builder = || session_builder(env, path, threads, spin);
    let TeacherDevice::Cuda(id) = device else { return Ok((builder()?, None)) };
    use ort::ep::ExecutionProvider;
    if !ort::ep::CUDA::is_available().unwrap_or(false) {
        let note = format!(
            "--device cuda:{id}: this ONNX Runtime has no CUDA execution provider (the `onnxruntime` wheel is \
             CPU-only; install `onnxruntime-gpu`, which needs the CUDA 13 libraries); the teacher runs on the CPU"
        );
        return Ok((builder()?, Some(note)));
    }
    let cuda = ort::ep::CUDA::default().with_device_id(id).build().error_on_failure();
    match builder()?.with_execution_providers([cuda]) {
        Ok(b) => Ok((b, None)),
        Err(e) => Ok((
            builder()?,
            Some(format!("--device cuda:{id}: the CUDA execution provider did not start ({e}); the teacher runs on the CPU")),
        )),
    }
}

/// The logits output (`--output`, else `logits`, else the first), its task from its rank and
/// its class or vocabulary count; refused if it is not f32/f16/bf16 logits at every position.
fn logits_output(path: &Path, mapping: &InputMapping, io_outputs: &[IoInfo]) -> Result<(String, Task, usize)> {
    let output = match &mapping.output {
        Some(o) => o.clone(),
        None if io_outputs.iter().any(|o| o.name == "logits") => "logits".to_string(),
        None => io_outputs.first().map(|o| o.name.clone()).unwrap_or_default(),
    };
    let Some(out_info) = io_outputs.iter().find(|o| o.name == output) else {
        return Err(Error::teacher(path, format!("output `{output}` does not exist; the model's outputs are: {}", listing(io_outputs))));
    };
    if !["f32", "f16", "bf16"].contains(&out_info.dtype.as_str()) {
        return Err(Error::teacher(path, format!("output `{output}` is {}, expected f32, f16 or bf16 logits", out_info.dtype)));
    }
    if out_info.shape.len() == 3 && out_info.shape[1] == 1 {
        return Err(Error::teacher(path, last_position_only(&output, &out_info.shape)));
    }
    let task = match out_info.shape.len() {
        2 => Task::Classification,
        3 => Task::CausalLm,
        _ => {
            return Err(Error::teacher(
                path,
                format!("output `{output}` has shape {}, expected [batch, classes] or [batch, seq, vocab]", dims(&out_info.shape)),
            ));
        }
    };
    let vocab = *out_info.shape.last().expect("rank >= 2");
    if vocab <= 0 {
        return Err(Error::teacher(
            path,
            format!("output `{output}` has a dynamic last dimension {}; the class/vocabulary count must be fixed", dims(&out_info.shape)),
        ));
    }
    Ok((output, task, vocab as usize))
}

/// How each input of the model is fed: a dataset column (numeric models, or `--input`), or
/// for a token model its ids, mask, positions, token types, an empty past or the merged
/// decoder's branch flag. Records each input's source in `io_inputs`; `types` are the
/// inputs' element types (`None`: not a tensor).
fn plan_inputs(
    path: &Path,
    mapping: &InputMapping,
    types: &[Option<TensorElementType>],
    io_inputs: &mut [IoInfo],
) -> Result<Vec<InputPlan>> {
    let known = listing(io_inputs);
    let mut inputs = Vec::new();
    for (io, &dtype) in io_inputs.iter_mut().zip(types) {
        let name = io.name.clone();
        let Some(dtype) = dtype else {
            return Err(Error::teacher(path, format!("input `{name}` is not a tensor")));
        };
        let mapped = mapping.columns.iter().find(|(i, _)| *i == name).map(|(_, c)| c.clone());
        let feed = match mapped {
            Some(col) => Feed::Column(col),
            None if mapping.tokens => token_feed(path, &name, &io.shape, &known)?,
            // Numeric model: an input is fed from the dataset column of the same name.
            None => Feed::Column(name.clone()),
        };
        io.filled_from = Some(feed.describe());
        inputs.push(InputPlan { name, dtype, shape: io.shape.clone(), feed });
    }
    if mapping.tokens && !inputs.iter().any(|i| i.feed == Feed::InputIds) {
        return Err(Error::teacher(path, format!("a tokenizer was given but the model has no `input_ids` input; its inputs are: {known}")));
    }
    for (input, _) in &mapping.columns {
        if !inputs.iter().any(|i| &i.name == input) {
            return Err(Error::teacher(path, format!("--input names `{input}`, which the model does not have; its inputs are: {known}")));
        }
    }
    Ok(inputs)
}

/// What feeds the input `name` of a token model.
fn token_feed(path: &Path, name: &str, shape: &[i64], known: &str) -> Result<Feed> {
    Ok(match name {
        "input_ids" => Feed::InputIds,
        "attention_mask" => Feed::AttentionMask,
        "position_ids" => Feed::PositionIds,
        "token_type_ids" => Feed::TokenTypeIds,
        "use_cache_branch" => Feed::NoCacheBranch,
        n if n.starts_with("past_key_values") || n.starts_with("past.") => {
            if shape.len() != 4 || shape[1] <= 0 || shape[3] <= 0 {
                return Err(Error::teacher(
                    path,
                    format!(
                        "past input `{n}` has shape {}, expected [batch, heads, past_seq, head_dim] with fixed heads and head_dim",
                        dims(shape)
                    ),
                ));
            }
            Feed::EmptyPast
        }
        _ => {
            return Err(Error::teacher(
                path,
                format!(
                    "cannot fill input `{name}` of a token model (known: input_ids, attention_mask, \
                     position_ids, token_type_ids, past_key_values.*, use_cache_branch); the model's inputs are: {known}"
                ),
            ));
        }
    })
}

fn hidden_outputs(path: &Path, names: &[String], outputs: &[IoInfo], logits: &str, task: Task) -> Result<Vec<HiddenOutput>> {
    let listing = || outputs.iter().map(|i| format!("{} {} {}", i.name, i.dtype, dims(&i.shape))).collect::<Vec<_>>().join(", ");
    names
        .iter()
        .map(|name| {
            let bad = |why: String| Error::teacher(path, format!("--hidden-states `{name}`: {why}"));
            if name == logits {
                return Err(bad("that is the logits output; name an output beside it".into()));
            }
            let info = outputs
                .iter()
                .find(|o| &o.name == name)
                .ok_or_else(|| bad(format!("the model has no such output; its outputs are: {}", listing())))?;
            if !["f32", "f16", "bf16"].contains(&info.dtype.as_str()) {
                return Err(bad(format!("the output is {}, expected f32, f16 or bf16", info.dtype)));
            }
            let per_position = match (info.shape.len(), task) {
                (2, Task::Classification) => false,
                (3, _) => true,
                _ => {
                    let expected = if task == Task::Classification { "[batch, dim] or [batch, seq, dim]" } else { "[batch, seq, dim]" };
                    return Err(bad(format!("the output has shape {}, expected {expected}", dims(&info.shape))));
                }
            };
            match info.shape.last() {
                Some(&d) if d > 0 => Ok(HiddenOutput { name: name.clone(), dim: d as usize, per_position }),
                _ => Err(bad(format!("the output has shape {}; its last dimension must be fixed", dims(&info.shape)))),
            }
        })
        .collect()
}

/// A session builder with `threads` intra-op threads (spinning between operators if
/// `spin`) and one inter-op thread.
fn session_builder(
    env: &ort::environment::Environment,
    path: &Path,
    threads: usize,
    spin: bool,
) -> Result<ort::session::builder::SessionBuilder> {
    let configure = |e: String| Error::teacher(path, format!("cannot configure a session: {e}"));
    Session::builder(env)
        .map_err(|e| configure(e.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| configure(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| configure(e.to_string()))?
        .with_intra_op_spinning(spin)
        .map_err(|e| configure(e.to_string()))
}

/// The output continuing each past input (`past_key_values.0.key` -> `present.0.key`,
/// `past.0.key` -> `present.0.key`), in input order; empty if any is missing.
fn present_outputs(inputs: &[InputPlan], outputs: &[IoInfo]) -> Vec<String> {
    let past: Vec<&InputPlan> = inputs.iter().filter(|p| p.feed == Feed::EmptyPast).collect();
    let presents: Vec<String> = past
        .iter()
        .filter_map(|p| {
            let rest = p.name.strip_prefix("past_key_values").or_else(|| p.name.strip_prefix("past"))?;
            let name = format!("present{rest}");
            outputs.iter().any(|o| o.name == name).then_some(name)
        })
        .collect();
    if presents.len() == past.len() { presents } else { Vec::new() }
}

/// Why logits of the last position only cannot be cached (pruned LM-head exports).
pub fn last_position_only(output: &str, shape: &[i64]) -> String {
    format!(
        "output `{output}` has shape {}: logits for the last position only (an export with a pruned LM head, \
         e.g. onnxruntime-genai's `prune_lm_head`); stage one needs logits at every position, [batch, seq, vocab]: \
         re-export the teacher without pruning the LM head",
        dims(shape)
    )
}

/// Hash every external-data file the graph at `path` names. Each must follow ONNX Runtime's
/// rules (a relative path inside the model's directory, a regular file), whether the graph
/// uses the tensor or not: an unused tensor pointing at `/dev/zero` or at a file outside
/// would otherwise hang the hash or publish that file's hash in the manifest.
fn hash_external_data(path: &Path) -> Result<Vec<ExternalDataInfo>> {
    let dir = crate::integrity::parent_dir(path);
    let mut out = Vec::new();
    for ext in super::onnx_file::external_data_locations(path)? {
        let what = format!("the external data of tensor `{}`", ext.tensor);
        let file = crate::untrusted::inside(dir, &ext.location, &what).map_err(|e| Error::teacher(path, e.to_string()))?;
        let (_, bytes) =
            crate::untrusted::open(&file, crate::untrusted::Cap::Weights).map_err(|e| Error::teacher(path, format!("{what}: {e}")))?;
        out.push(ExternalDataInfo { file: ext.location, bytes, sha256: sha256_file(&file)? });
    }
    Ok(out)
}

/// An ONNX input or output as the manifest records it.
fn io_info(name: &str, t: &ValueType) -> IoInfo {
    IoInfo {
        name: name.to_string(),
        dtype: t.tensor_type().map(|t| t.to_string()).unwrap_or_else(|| format!("{t:?}")),
        shape: t.tensor_shape().map(|s| s.to_vec()).unwrap_or_default(),
        filled_from: None,
    }
}

fn numeric_tensor(plan: &InputPlan, shape: Vec<i64>, values: &[f32]) -> std::result::Result<SessionInputValue<'static>, String> {
    let err = |e: ort::Error| format!("input `{}`: {e}", plan.name);
    Ok(match plan.dtype {
        TensorElementType::Float32 => Tensor::<f32>::from_array((shape, values.to_vec())).map_err(err)?.into_dyn().into(),
        TensorElementType::Float64 => {
            Tensor::<f64>::from_array((shape, values.iter().map(|&v| v as f64).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        TensorElementType::Int64 => {
            Tensor::<i64>::from_array((shape, values.iter().map(|&v| v as i64).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        TensorElementType::Int32 => {
            Tensor::<i32>::from_array((shape, values.iter().map(|&v| v as i32).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        other => return Err(format!("input `{}` has dtype {other}; numeric columns feed f32, f64, i64 or i32", plan.name)),
    })
}

fn int_tensor(plan: &InputPlan, shape: Vec<i64>, values: Vec<i64>) -> std::result::Result<SessionInputValue<'static>, String> {
    let err = |e: ort::Error| format!("input `{}`: {e}", plan.name);
    Ok(match plan.dtype {
        TensorElementType::Int64 => Tensor::<i64>::from_array((shape, values)).map_err(err)?.into_dyn().into(),
        TensorElementType::Int32 => {
            Tensor::<i32>::from_array((shape, values.into_iter().map(|v| v as i32).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        TensorElementType::Bool => {
            Tensor::<bool>::from_array((shape, values.into_iter().map(|v| v != 0).collect::<Vec<_>>())).map_err(err)?.into_dyn().into()
        }
        other => return Err(format!("input `{}` has dtype {other}; token inputs feed i64, i32 or bool", plan.name)),
    })
}
