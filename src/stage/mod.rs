//! Orchestration of the stages; the work itself lives in `teacher`, `cache` and `data`.

pub mod cache_teacher;
pub mod inspect;
pub mod train_student;
pub mod eval;
pub mod merge;

pub use cache_teacher::{CacheSummary, RunOptions, cache_teacher};
pub use inspect::{CacheStats, inspect};
