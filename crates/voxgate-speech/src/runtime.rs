//! The process-wide ONNX Runtime: loaded once from `libonnxruntime.so` (fetched into `models/` by
//! `scripts/fetch-models.sh`, version 1.31.x to match `ort` 2.0.0-rc.15) and shared by all models.

use ort::environment::Environment;
use ort::session::builder::PrepackedWeights;
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
    load_sharing(env, model, threads, None)
}

/// [`load`], with the sessions of one model sharing their pre-packed weights (the MatMul weights
/// ONNX Runtime re-lays out at load): N instances then hold one packed copy, not N.
///
/// # Errors
/// [`SpeechError::Unavailable`] when the file is missing or not a model.
pub fn load_sharing(
    env: &Environment,
    model: &Path,
    threads: usize,
    weights: Option<&PrepackedWeights>,
) -> Result<Session, SpeechError> {
    if !model.exists() {
        return Err(SpeechError::Unavailable(format!(
            "model file {} is missing (run scripts/fetch-models.sh)",
            model.display()
        )));
    }
    let err = |e: ort::Error| SpeechError::Unavailable(format!("loading {}: {e}", model.display()));
    let mut b = Session::builder(env).map_err(err)?;
    if let Some(w) = weights {
        b = b
            .with_prepacked_weights(w)
            .map_err(|e| SpeechError::Unavailable(e.to_string()))?;
    }
    if threads > 1 {
        // Idle intra-op threads sleep instead of spinning: a shared machine's other calls need
        // the cores between inferences.
        b = b
            .with_intra_op_spinning(false)
            .map_err(|e| SpeechError::Unavailable(e.to_string()))?;
    }
    b.with_intra_threads(threads)
        .map_err(|e| SpeechError::Unavailable(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| SpeechError::Unavailable(e.to_string()))?
        .commit_from_file(model)
        .map_err(err)
}

pub(crate) fn engine_err(e: impl std::fmt::Display) -> SpeechError {
    SpeechError::Engine(e.to_string())
}
