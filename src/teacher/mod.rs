//! Stage one's input side: the ONNX Runtime library, the frozen teacher session with
//! its input plan (and the external-data files its fingerprint covers), and the soft-label
//! kernels (the top-k, or tokens sampled from the teacher).

pub mod hidden;
pub mod ingraph;
mod inputs;
pub mod model;
pub mod onnx_file;
mod run;
pub mod runtime;
pub mod sample;
mod session;
pub mod topk;

pub use inputs::InputMapping;
pub use model::{HiddenOutput, Teacher};
pub use run::{GraphSoftLabels, HardLabels, HiddenValues, Logits, Past, Step, TeacherBatch, last_position_only};
pub use session::TeacherDevice;
pub use topk::{SoftLabel, TopKScratch, soft_top_k};
