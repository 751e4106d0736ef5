//! Silero VAD v6 (MIT) on ONNX Runtime: 512-sample chunks at 16 kHz with the previous 64 samples
//! prepended (the model expects that context), recurrent `state` [2, 1, 128] carried per stream,
//! `sr` = 16000. Output: speech probability [1, 1].
//!
//! The model is loaded once ([`SileroModel`]) and shared; each call's [`Silero`] holds its own
//! state and context. Runs are serialised through a small session pool.

use crate::pool::Pool;
use crate::runtime::load;
use ort::session::Session;
use ort::value::Tensor;
use std::path::Path;
use std::sync::Arc;
use voxgate_media::speech::SpeechError;
use voxgate_media::vad::VoiceDetector;

const CHUNK: usize = 512;
const CONTEXT: usize = 64;

/// The shared Silero model.
pub struct SileroModel {
    pool: Pool<Session>,
}

impl SileroModel {
    /// Loads `silero_vad.onnx` with `instances` sessions.
    ///
    /// # Errors
    /// [`SpeechError::Unavailable`] when the model cannot be loaded.
    pub fn load(
        env: &ort::environment::Environment,
        path: &Path,
        instances: usize,
    ) -> Result<Arc<Self>, SpeechError> {
        let sessions = (0..instances.max(1))
            .map(|_| load(env, path, 1))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(SileroModel {
            pool: Pool::new(sessions),
        }))
    }
}

/// One stream's Silero detector.
pub struct Silero {
    model: Arc<SileroModel>,
    state: Vec<f32>,
    context: Vec<f32>,
    input: Vec<f32>,
}

impl Silero {
    pub fn new(model: Arc<SileroModel>) -> Self {
        Silero {
            model,
            state: vec![0.0; 2 * 128],
            context: vec![0.0; CONTEXT],
            input: Vec::with_capacity(CHUNK + CONTEXT),
        }
    }
}

impl VoiceDetector for Silero {
    fn chunk_len(&self) -> usize {
        CHUNK
    }

    fn predict(&mut self, chunk: &[i16]) -> f32 {
        self.input.clear();
        self.input.extend_from_slice(&self.context);
        self.input.extend(chunk.iter().map(|&s| s as f32 / 32768.0));
        self.context
            .copy_from_slice(&self.input[self.input.len() - CONTEXT..]);
        let input = self.input.clone();
        let state = self.state.clone();
        let r = self
            .model
            .pool
            .with(|s| -> Result<(f32, Vec<f32>), ort::Error> {
                let out = s.run(ort::inputs![
                    "input" => Tensor::from_array(([1usize, CHUNK + CONTEXT], input))?,
                    "state" => Tensor::from_array(([2usize, 1, 128], state))?,
                    "sr" => Tensor::from_array(((), vec![16_000i64]))?,
                ])?;
                let (_, p) = out["output"].try_extract_tensor::<f32>()?;
                let (_, st) = out["stateN"].try_extract_tensor::<f32>()?;
                Ok((p[0], st.to_vec()))
            });
        match r {
            Ok((p, st)) => {
                self.state = st;
                p
            }
            // A failed run counts as silence; the stream goes on.
            Err(_) => 0.0,
        }
    }

    fn reset(&mut self) {
        self.state.iter_mut().for_each(|x| *x = 0.0);
        self.context.iter_mut().for_each(|x| *x = 0.0);
    }

    /// ONNX inference (about 0.1 ms per chunk) on a session shared through a pool: the call core
    /// runs it on the blocking thread pool, never on a call's task.
    fn is_blocking(&self) -> bool {
        true
    }
}
