//! Stage one's input side: the ONNX Runtime library, the frozen teacher session with
//! its input plan (and the external-data files its fingerprint covers), and the soft-label
//! kernels (the top-k, or tokens sampled from the teacher).

pub mod hidden;
pub mod ingraph;
pub mod model;
pub mod onnx_file;
pub mod runtime;
pub mod sample;
pub mod topk;

pub use model::{GraphSoftLabels, HiddenOutput, HiddenValues, InputMapping, Logits, Past, Step, Teacher, TeacherBatch, TeacherDevice};
pub use topk::{SoftLabel, TopKScratch, soft_top_k};
