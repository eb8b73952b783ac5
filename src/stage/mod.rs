//! Orchestration of the stages; the work itself lives in `teacher`, `cache` and `data`.

pub mod cache_teacher;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod merge;
pub mod report;

pub use cache_teacher::{CacheSummary, RunOptions, cache_teacher};
pub use inspect::{CacheStats, inspect};
