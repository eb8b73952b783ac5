//! Stage one's input side: the ONNX Runtime library, the frozen teacher session with
//! its input plan, and the top-k soft-label kernel.

pub mod model;
pub mod runtime;
pub mod topk;

pub use model::{InputMapping, Teacher, TeacherBatch, TeacherDevice};
pub use topk::{SoftLabel, TopKScratch, soft_top_k};
