//! Finding and loading the ONNX Runtime shared library (stage one only).
//!
//! `ort` is built with `load-dynamic`: nothing is downloaded or linked at build time. The
//! library is looked up, in order, from an explicit path (`--ort-lib`), the
//! `ORT_DYLIB_PATH` environment variable, and the `onnxruntime` Python package importable
//! by `python3` (`<package>/capi/libonnxruntime.so*`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

static ENVIRONMENT: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();

/// Locate the ONNX Runtime library; the error lists every place that was tried.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(p) = explicit {
        // A path the user gave wins or fails; it never falls through to the environment.
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(Error::Runtime(format!("--ort-lib {}: no such file (libonnxruntime.so expected)", p.display())));
    }
    tried.push("--ort-lib (not given)".to_string());
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if Path::new(&p).is_file() => return Ok(PathBuf::from(p)),
        Some(p) => tried.push(format!("ORT_DYLIB_PATH={} (no such file)", Path::new(&p).display())),
        None => tried.push("ORT_DYLIB_PATH (not set)".to_string()),
    }
    match python_package_library() {
        Ok(p) => return Ok(p),
        Err(why) => tried.push(format!("python3's onnxruntime package ({why})")),
    }
    Err(Error::Runtime(format!(
        "cannot find the ONNX Runtime library (libonnxruntime.so); tried: {}. \
         Install it with `pip install onnxruntime==1.31.1` (the README's setup does) or point \
         ORT_DYLIB_PATH at libonnxruntime.so",
        tried.join("; ")
    )))
}

fn python_package_library() -> std::result::Result<PathBuf, String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('onnxruntime'); \
             print(s.submodule_search_locations[0] if s else '')",
        ])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dir.is_empty() {
        return Err("not installed".to_string());
    }
    let capi = Path::new(&dir).join("capi");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&capi)
        .map_err(|e| format!("{}: {e}", capi.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    found.sort();
    // Prefer the fully versioned file name (libonnxruntime.so.1.31.1) when several exist.
    found.pop().ok_or_else(|| format!("no libonnxruntime.so* in {}", capi.display()))
}

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment(explicit: Option<&Path>) -> Result<&'static ort::environment::Environment> {
    if let Some((_, env)) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let lib = find_library(explicit)?;
    let env = ort::init_from(&lib)
        .map_err(|e| Error::Runtime(format!("{}: cannot load: {e}", lib.display())))?
        .with_name("distill")
        .build()
        .map_err(|e| Error::Runtime(format!("{}: cannot create an environment: {e}", lib.display())))?;
    let _ = ENVIRONMENT.set((lib, env));
    Ok(&ENVIRONMENT.get().expect("just set").1)
}

/// Path of the library the environment was loaded from, once loaded.
pub fn loaded_library() -> Option<&'static Path> {
    ENVIRONMENT.get().map(|(p, _)| p.as_path())
}
