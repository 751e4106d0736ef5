//! Piper TTS (VITS voices on ONNX Runtime; default voice `en_US-joe-medium`, 22 050 Hz mono).
//!
//! Text → IPA phonemes from an `espeak-ng` **process** (`espeak-ng -q --ipa -v VOICE`; espeak-ng
//! is GPL-3, so it is never linked into voxgate) → ids through the voice's `phoneme_id_map`
//! (`^`, pad, each phoneme followed by pad `_`, `$`) → ONNX inputs `input` [1, n] i64,
//! `input_lengths` [1] i64, `scales` [noise 0.667, length 1.0, noise_w 0.8] → `output` f32 samples.

use crate::pool::Pool;
use crate::runtime::{engine_err, load};
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use voxgate_media::speech::{SpeechError, Synthesizer};
use voxgate_media::{AudioFrame, SampleRate};

#[derive(Deserialize)]
struct VoiceConfig {
    audio: AudioCfg,
    espeak: EspeakCfg,
    #[serde(default)]
    inference: Option<InferenceCfg>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}
#[derive(Deserialize)]
struct AudioCfg {
    sample_rate: u32,
}
#[derive(Deserialize)]
struct EspeakCfg {
    voice: String,
}
#[derive(Deserialize)]
struct InferenceCfg {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

/// A Piper voice with `instances` ONNX sessions.
pub struct Piper {
    pool: Pool<Session>,
    map: HashMap<char, Vec<i64>>,
    espeak_voice: String,
    espeak: PathBuf,
    rate: SampleRate,
    scales: [f32; 3],
}

impl Piper {
    /// Loads `model` (`*.onnx`, with `*.onnx.json` beside it) into `instances` sessions of
    /// `threads` intra-op threads each. `espeak` is the `espeak-ng` binary.
    ///
    /// On an idle 2-core machine 2 threads synthesise a 1.9 s sentence in ~95 ms instead of
    /// ~160 ms (the first audio of a reply waits for its first sentence).
    ///
    /// # Errors
    /// [`SpeechError::Unavailable`] when a file is missing or `espeak-ng` cannot run.
    pub fn load(
        env: &ort::environment::Environment,
        model: &Path,
        espeak: &Path,
        instances: usize,
        threads: usize,
    ) -> Result<Self, SpeechError> {
        let json_path = PathBuf::from(format!("{}.json", model.display()));
        let raw = std::fs::read_to_string(&json_path)
            .map_err(|e| SpeechError::Unavailable(format!("{}: {e}", json_path.display())))?;
        let cfg: VoiceConfig = serde_json::from_str(&raw)
            .map_err(|e| SpeechError::Unavailable(format!("{}: {e}", json_path.display())))?;
        let rate = SampleRate::new(cfg.audio.sample_rate)
            .map_err(|e| SpeechError::Unavailable(e.to_string()))?;
        let map = cfg
            .phoneme_id_map
            .into_iter()
            .filter_map(|(k, v)| {
                k.chars()
                    .next()
                    .filter(|_| k.chars().count() == 1)
                    .map(|c| (c, v))
            })
            .collect();
        let inf = cfg.inference.unwrap_or(InferenceCfg {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        });
        let ok = Command::new(espeak)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Err(SpeechError::Unavailable(format!(
                "{} cannot run (install espeak-ng)",
                espeak.display()
            )));
        }
        let sessions = (0..instances.max(1))
            .map(|_| load(env, model, threads.max(1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Piper {
            pool: Pool::new(sessions),
            map,
            espeak_voice: cfg.espeak.voice,
            espeak: espeak.to_path_buf(),
            rate,
            scales: [inf.noise_scale, inf.length_scale, inf.noise_w],
        })
    }

    /// IPA phonemes for `text`, clause by clause with the clause punctuation kept.
    fn phonemize(&self, text: &str) -> Result<String, SpeechError> {
        let out = Command::new(&self.espeak)
            .args(["-q", "--ipa", "-v", &self.espeak_voice, "--"])
            .arg(text)
            .output()
            .map_err(|e| SpeechError::Engine(format!("espeak-ng: {e}")))?;
        if !out.status.success() {
            return Err(SpeechError::Engine(format!(
                "espeak-ng failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let puncts = clause_punctuation(text);
        let mut s = String::new();
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(line);
            if lines.len() == puncts.len() {
                s.push(puncts[i]);
            }
        }
        if lines.len() != puncts.len() {
            if let Some(&p) = puncts.last() {
                s.push(p);
            }
        }
        Ok(s)
    }
}

/// The punctuation that closes each clause of `text` (`,` `.` `!` `?` `;` `:`), `.` for a last
/// clause without one.
fn clause_punctuation(text: &str) -> Vec<char> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut pending_words = false;
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            pending_words = true;
        }
        if matches!(c, ',' | '.' | '!' | '?' | ';' | ':')
            && chars.get(i + 1).is_none_or(|n| n.is_whitespace())
            && pending_words
        {
            out.push(c);
            pending_words = false;
        }
    }
    if pending_words {
        out.push('.');
    }
    out
}

impl Synthesizer for Piper {
    fn name(&self) -> &str {
        "piper"
    }

    fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<AudioFrame, SpeechError> {
        if let Some(v) = voice
            .filter(|v| !v.is_empty() && *v != "default" && *v != "joe" && *v != "en_US-joe-medium")
        {
            return Err(SpeechError::BadInput(format!(
                "unknown piper voice `{v}` (available: en_US-joe-medium)"
            )));
        }
        let phonemes = self.phonemize(text)?;
        let mut ids: Vec<i64> = vec![1, 0];
        for c in phonemes.chars() {
            if let Some(v) = self.map.get(&c) {
                ids.extend_from_slice(v);
                ids.push(0);
            }
        }
        ids.push(2);
        if ids.len() <= 3 {
            return Ok(AudioFrame::mono(self.rate, Vec::new()));
        }
        let n = ids.len();
        let samples = self.pool.with(|s| -> Result<Vec<i16>, SpeechError> {
            let input = Tensor::from_array(([1usize, n], ids)).map_err(engine_err)?;
            let lens = Tensor::from_array(([1usize], vec![n as i64])).map_err(engine_err)?;
            let scales =
                Tensor::from_array(([3usize], self.scales.to_vec())).map_err(engine_err)?;
            let out = s
                .run(ort::inputs!["input" => input, "input_lengths" => lens, "scales" => scales])
                .map_err(engine_err)?;
            let (_, audio) = out["output"]
                .try_extract_tensor::<f32>()
                .map_err(engine_err)?;
            Ok(audio
                .iter()
                .map(|&x| (x * 32767.0).clamp(-32768.0, 32767.0) as i16)
                .collect())
        })?;
        Ok(AudioFrame::mono(self.rate, samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses() {
        assert_eq!(
            clause_punctuation("Hello, world. How are you?"),
            vec![',', '.', '?']
        );
        assert_eq!(clause_punctuation("It costs 3.50 dollars"), vec!['.']);
    }
}
