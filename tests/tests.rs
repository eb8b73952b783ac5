//! Integration tests: one binary, real ONNX Runtime, real Parquet files, real outside readers.

mod common;

mod cache_teacher;
mod inputs;
mod train_student;
mod failures;
mod silent;
mod fuzz;
mod snapshots;
mod object_store;
mod sharding;
