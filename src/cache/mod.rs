//! The cache: the contract between stage one (which only writes through this module)
//! and stage two (which only reads through it). Plain zstd Parquet shards plus a JSON
//! manifest; the schema is documented in [`schema`] and in docs/cache-format.md.

mod dataset_info;
pub mod identity;
pub mod manifest;
pub mod out_dir;
pub mod reader;
pub mod schema;
mod stamp;
pub mod writer;

pub use identity::CacheIdentity;
pub use manifest::{Manifest, Positions, ShardInfo, Task};
pub use reader::{CacheReader, SoftLabelBatch};
pub use schema::LogprobEncoding;
pub use writer::ShardBuilder;
