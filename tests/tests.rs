//! Integration tests: one binary, real ONNX Runtime, real Parquet files, real outside readers.

mod common;

mod cache_teacher;
mod docs;
mod failures;
mod fuzz;
mod generate;
mod hidden_states;
mod ingraph;
mod inputs;
mod object_store;
mod onpolicy;
mod python_package;
mod sharding;
mod silent;
mod snapshots;
mod train_student;
mod trust;
