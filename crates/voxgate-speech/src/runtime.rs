//! The process-wide ONNX Runtime: loaded once from `libonnxruntime.so` (fetched into `models/` by
//! `scripts/fetch-models.sh`, version 1.31.x to match `ort` 2.0.0-rc.15) and shared by all models.

use ort::environment::Environment;
use ort::session::Session;
use std::path::Path;
use std::sync::OnceLock;

use voxgate_media::speech::SpeechError;

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Initialises ONNX Runtime from the shared library at `dylib` (first call wins; later calls return
/// the same environment).
///
/// # Errors
/// [`SpeechError::Unavailable`] when the library cannot be loaded.
pub fn environment(dylib: &Path) -> Result<&'static Environment, SpeechError> {
    ENV.get_or_init(|| {
        let builder = ort::init_from(dylib)
            .map_err(|e| format!("loading ONNX Runtime from {}: {e}", dylib.display()))?;
        builder
            .with_name("voxgate")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| SpeechError::Unavailable(e.clone()))
}

/// Loads a model file into a session with `threads` intra-op threads (1 is fastest on a loaded
/// 2-core machine, see SPEECH.md).
///
/// # Errors
/// [`SpeechError::Unavailable`] when the file is missing or not a model.
pub fn load(env: &Environment, model: &Path, threads: usize) -> Result<Session, SpeechError> {
    if !model.exists() {
        return Err(SpeechError::Unavailable(format!(
            "model file {} is missing (run scripts/fetch-models.sh)",
            model.display()
        )));
    }
    let err = |e: ort::Error| SpeechError::Unavailable(format!("loading {}: {e}", model.display()));
    Session::builder(env)
        .map_err(err)?
        .with_intra_threads(threads)
        .map_err(|e| SpeechError::Unavailable(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| SpeechError::Unavailable(e.to_string()))?
        .commit_from_file(model)
        .map_err(err)
}

pub(crate) fn engine_err(e: impl std::fmt::Display) -> SpeechError {
    SpeechError::Engine(e.to_string())
}
