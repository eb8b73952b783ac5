//! The teacher's ONNX Runtime session: where it runs (CPU, or CUDA with the reason when it
//! falls back to the CPU), how it is built, the logits output that decides the task, the
//! hidden-state outputs, and the external-data files hashed into the fingerprint.

use crate::cache::manifest::{ExternalDataInfo, IoInfo, Task, sha256_file};
use crate::error::{Error, Result};
use ort::session::Session;
use ort::value::ValueType;
use std::path::Path;

use super::inputs::{InputMapping, dims};
use super::model::HiddenOutput;
use super::run::last_position_only;

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

/// The inputs and outputs of a model, each as `name dtype [shape]`, for error messages.
pub(super) fn listing(ios: &[IoInfo]) -> String {
    ios.iter().map(|i| format!("{} {} {}", i.name, i.dtype, dims(&i.shape))).collect::<Vec<_>>().join(", ")
}

/// A session builder for `path` on `device`; a CUDA device that this ONNX Runtime cannot use
/// gives a CPU builder and the reason.
pub(super) fn start_session(
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
pub(super) fn logits_output(path: &Path, mapping: &InputMapping, io_outputs: &[IoInfo]) -> Result<(String, Task, usize)> {
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

/// The outputs asked for beside the logits, checked against the model's outputs: each
/// must exist, be floating point, and have a fixed last dimension; `[batch, dim]` only for
/// a classifier.
pub(super) fn hidden_outputs(path: &Path, names: &[String], outputs: &[IoInfo], logits: &str, task: Task) -> Result<Vec<HiddenOutput>> {
    let listing = || listing(outputs);
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
pub(super) fn session_builder(
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

/// Hash every external-data file the graph at `path` names. Each must follow ONNX Runtime's
/// rules (a relative path inside the model's directory, a regular file), whether the graph
/// uses the tensor or not: an unused tensor pointing at `/dev/zero` or at a file outside
/// would otherwise hang the hash or publish that file's hash in the manifest.
pub(super) fn hash_external_data(path: &Path) -> Result<Vec<ExternalDataInfo>> {
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
pub(super) fn io_info(name: &str, t: &ValueType) -> IoInfo {
    IoInfo {
        name: name.to_string(),
        dtype: t.tensor_type().map(|t| t.to_string()).unwrap_or_else(|| format!("{t:?}")),
        shape: t.tensor_shape().map(|s| s.to_vec()).unwrap_or_default(),
        filled_from: None,
    }
}
