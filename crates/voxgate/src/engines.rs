//! Wiring of the speech engines (loaded once per server, shared by every call): the call core's
//! [`Speech`] port filled from the configuration.

use crate::config::Config;
use std::collections::BTreeMap;
use std::sync::Arc;
use voxgate_call::{Speech, VadFactory};
use voxgate_media::speech::{Synthesizer, Transcriber};
use voxgate_media::vad::{Earshot, VoiceDetector};
use voxgate_speech::silero::{Silero, SileroModel};

/// Which VAD each call gets.
#[derive(Clone)]
pub enum VadEngine {
    Earshot,
    Silero(Arc<SileroModel>),
}

impl VadFactory for VadEngine {
    fn detector(&self) -> Box<dyn VoiceDetector> {
        match self {
            VadEngine::Earshot => Box::new(Earshot::default()),
            VadEngine::Silero(m) => Box::new(Silero::new(m.clone())),
        }
    }
}

/// Loads the speech engines the configuration names.
pub struct Engines;

impl Engines {
    /// Loads what the configuration names. Missing model files are reported with the command
    /// that fetches them.
    ///
    /// # Errors
    /// Every engine that failed to load, one per line.
    pub fn load(cfg: &Config) -> Result<Speech, String> {
        let mut errs = Vec::new();
        let models = &cfg.models_dir;
        let needs_ort = cfg.asr.engine == "moonshine"
            || cfg.vad.engine == "silero"
            || cfg.tts.engine == "piper";
        let env = if needs_ort {
            match voxgate_speech::runtime::environment(&models.join("libonnxruntime.so")) {
                Ok(e) => Some(e),
                Err(e) => {
                    errs.push(format!(
                        "{e} (run `make models` or scripts/fetch-models.sh)"
                    ));
                    None
                }
            }
        } else {
            None
        };
        let mut asr: Option<Arc<dyn Transcriber>> = None;
        if cfg.asr.engine == "moonshine" {
            if let Some(env) = env {
                let (encoder, _) =
                    voxgate_speech::moonshine::model_files(&models.join("moonshine-base"));
                if encoder.extension().is_some_and(|e| e == "ort") {
                    tracing::warn!(
                        "asr: using Moonshine's int8 .ort models, ~3.5x slower than the fp32 ones \
                         that scripts/fetch-models.sh derives from them"
                    );
                }
                match voxgate_speech::moonshine::Moonshine::load(
                    env,
                    &models.join("moonshine-base"),
                    cfg.asr.instances,
                    cfg.asr.threads,
                ) {
                    Ok(m) => asr = Some(Arc::new(m)),
                    Err(e) => errs.push(format!("asr: {e}")),
                }
            }
        }
        let vad = if cfg.vad.engine == "silero" {
            match env.map(|env| SileroModel::load(env, &models.join("silero_vad.onnx"), 2)) {
                Some(Ok(m)) => VadEngine::Silero(m),
                Some(Err(e)) => {
                    errs.push(format!("vad: {e}"));
                    VadEngine::Earshot
                }
                None => VadEngine::Earshot,
            }
        } else {
            VadEngine::Earshot
        };
        let mut tts: BTreeMap<String, Arc<dyn Synthesizer>> = BTreeMap::new();
        match voxgate_speech::flite::Flite::new(&cfg.tts.flite, &std::env::temp_dir()) {
            Ok(f) => {
                tts.insert("flite".into(), Arc::new(f));
            }
            Err(e) if cfg.tts.engine == "flite" => errs.push(format!("tts: {e}")),
            Err(e) => tracing::warn!("flite TTS unavailable: {e}"),
        }
        let piper_model = cfg
            .tts
            .piper_model
            .clone()
            .unwrap_or_else(|| models.join("piper/en_US-joe-medium.onnx"));
        let piper_env = if cfg.tts.engine == "piper" {
            env
        } else {
            voxgate_speech::runtime::environment(&models.join("libonnxruntime.so")).ok()
        };
        if let Some(env) = piper_env {
            match voxgate_speech::piper::Piper::load(
                env,
                &piper_model,
                &cfg.tts.espeak_ng,
                cfg.tts.instances,
                cfg.tts.threads,
            ) {
                Ok(p) => {
                    tts.insert("piper".into(), Arc::new(p));
                }
                Err(e) if cfg.tts.engine == "piper" => errs.push(format!("tts: {e}")),
                Err(e) => tracing::warn!("piper TTS unavailable: {e}"),
            }
        }
        let tts = tts
            .into_iter()
            .map(|(name, t)| {
                let cached: Arc<dyn Synthesizer> = Arc::new(
                    voxgate_media::speech::CachedSynthesizer::new(t, cfg.tts.cache_pieces),
                );
                (name, cached)
            })
            .collect();
        if errs.is_empty() {
            let asr_slots = Arc::new(tokio::sync::Semaphore::new(cfg.asr.instances.max(1)));
            Ok(Speech {
                asr,
                asr_slots,
                tts,
                default_tts: cfg.tts.engine.clone(),
                vad: Arc::new(vad),
            })
        } else {
            Err(errs.join("\n"))
        }
    }
}
