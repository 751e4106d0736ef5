//! Moonshine base ASR (Useful Sensors, MIT) on ONNX Runtime.
//!
//! Encoder: `input_values` [1, N] f32 at 16 kHz → `last_hidden_state` [1, T, 416]. Merged decoder:
//! `input_ids` [1, n] i64, `encoder_hidden_states`, `use_cache_branch` [1] bool and
//! `past_key_values.{0..7}.{decoder,encoder}.{key,value}` [1, 8, len, 52]; outputs `logits`
//! [1, n, 32000] and `present.*` caches. Greedy decoding from token 1 (`<s>`) to token 2 (`</s>`),
//! capped at 6.5 tokens per second of audio and stopped when an n-gram repeats (greedy decoding
//! of a non-streaming model can loop on noise).
//!
//! `tokenizer.bin`: 32 000 byte strings, each prefixed by its length as a little-endian base-128
//! varint; ids 3–258 are raw bytes `<0x00>`…`<0xFF>`; `▁` (U+2581) is a space.

use crate::pool::Pool;
use crate::runtime::{engine_err, load_sharing};
use ort::session::builder::PrepackedWeights;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use std::borrow::Cow;
use std::path::Path;
use std::path::PathBuf;
use voxgate_media::speech::{SpeechError, Transcriber};

const LAYERS: usize = 8;
const HEADS: usize = 8;
const HEAD_DIM: usize = 52;
const START: i64 = 1;
const END: i64 = 2;

struct Model {
    encoder: Session,
    decoder: Session,
}

/// The Moonshine transcriber: `instances` encoder/decoder pairs shared by all calls.
pub struct Moonshine {
    pool: Pool<Model>,
    vocab: Vec<Vec<u8>>,
}

/// The encoder and decoder files in `dir`: the fp32 ONNX models that `scripts/moonshine-fp32.py`
/// derives (same output, ~3.5x faster: the shipped `.ort` files dequantise their int8 weights on
/// every run, once per generated token for the decoder), else the shipped `.ort` files.
pub fn model_files(dir: &Path) -> (PathBuf, PathBuf) {
    let fp32 = (
        dir.join("encoder_model.fp32.onnx"),
        dir.join("decoder_model_merged.fp32.onnx"),
    );
    if fp32.0.exists() && fp32.1.exists() {
        fp32
    } else {
        (
            dir.join("encoder_model.ort"),
            dir.join("decoder_model_merged.ort"),
        )
    }
}

impl Moonshine {
    /// Loads the encoder and decoder ([`model_files`]) and `tokenizer.bin` from `dir`; the
    /// `instances` share their pre-packed weights and run with `threads` intra-op threads each.
    ///
    /// # Errors
    /// [`SpeechError::Unavailable`] when a file is missing or unreadable.
    pub fn load(
        env: &ort::environment::Environment,
        dir: &Path,
        instances: usize,
        threads: usize,
    ) -> Result<Self, SpeechError> {
        let (encoder, decoder) = model_files(dir);
        let shared = (PrepackedWeights::new(), PrepackedWeights::new());
        let mut models = Vec::new();
        for _ in 0..instances.max(1) {
            models.push(Model {
                encoder: load_sharing(env, &encoder, threads.max(1), Some(&shared.0))?,
                decoder: load_sharing(env, &decoder, threads.max(1), Some(&shared.1))?,
            });
        }
        let tok = std::fs::read(dir.join("tokenizer.bin")).map_err(|e| {
            SpeechError::Unavailable(format!("{}: {e}", dir.join("tokenizer.bin").display()))
        })?;
        Ok(Moonshine {
            pool: Pool::new(models),
            vocab: parse_vocab(&tok)?,
        })
    }

    fn detokenize(&self, ids: &[i64]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let id = id as usize;
            if (3..=258).contains(&id) {
                bytes.push((id - 3) as u8);
            } else if let Some(t) = self.vocab.get(id) {
                if id > 258 {
                    bytes.extend_from_slice(t);
                }
            }
        }
        String::from_utf8_lossy(&bytes)
            .replace('▁', " ")
            .trim()
            .to_string()
    }
}

fn parse_vocab(d: &[u8]) -> Result<Vec<Vec<u8>>, SpeechError> {
    let mut out = Vec::with_capacity(32_000);
    let mut i = 0;
    while i < d.len() {
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = *d
                .get(i)
                .ok_or_else(|| SpeechError::Unavailable("truncated tokenizer.bin".into()))?;
            i += 1;
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b < 0x80 {
                break;
            }
        }
        let t = d
            .get(i..i + len)
            .ok_or_else(|| SpeechError::Unavailable("truncated tokenizer.bin".into()))?;
        out.push(t.to_vec());
        i += len;
    }
    Ok(out)
}

/// True when the last `n` tokens repeat the `n` before them, for some n in 1..=4 with enough
/// repeats (a single token repeated 6 times, or a 2–4-gram repeated 3 times).
fn is_looping(ids: &[i64]) -> bool {
    for n in 1..=4usize {
        let reps = if n == 1 { 6 } else { 3 };
        if ids.len() < n * reps {
            continue;
        }
        let tail = &ids[ids.len() - n..];
        if (1..reps).all(|r| &ids[ids.len() - (r + 1) * n..ids.len() - r * n] == tail) {
            return true;
        }
    }
    false
}

fn decode(m: &mut Model, samples: &[f32]) -> Result<Vec<i64>, SpeechError> {
    let input =
        Tensor::from_array(([1usize, samples.len()], samples.to_vec())).map_err(engine_err)?;
    let mut enc_out = m
        .encoder
        .run(ort::inputs!["input_values" => input])
        .map_err(engine_err)?;
    let hidden: DynValue = enc_out
        .remove("last_hidden_state")
        .ok_or_else(|| engine_err("encoder gave no output"))?;
    drop(enc_out);

    let max_tokens = ((samples.len() as f32 / 16_000.0) * 6.5).ceil() as usize + 4;
    let mut tokens: Vec<i64> = Vec::new();
    let mut past: Vec<(String, DynValue)> = Vec::with_capacity(LAYERS * 4);
    for l in 0..LAYERS {
        for part in ["decoder", "encoder"] {
            for kv in ["key", "value"] {
                let empty =
                    Tensor::<f32>::from_array(([1usize, HEADS, 0, HEAD_DIM], Vec::<f32>::new()))
                        .map_err(engine_err)?;
                past.push((format!("past_key_values.{l}.{part}.{kv}"), empty.into_dyn()));
            }
        }
    }
    let mut next = START;
    for step in 0..max_tokens {
        let ids = Tensor::from_array(([1usize, 1], vec![next])).map_err(engine_err)?;
        let branch = Tensor::from_array(([1usize], vec![step > 0])).map_err(engine_err)?;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            ("input_ids".into(), ids.into()),
            ("encoder_hidden_states".into(), (&hidden).into()),
            ("use_cache_branch".into(), branch.into()),
        ];
        for (name, v) in &past {
            inputs.push((name.as_str().into(), v.into()));
        }
        let mut out = m.decoder.run(inputs).map_err(engine_err)?;
        let (shape, logits) = out["logits"]
            .try_extract_tensor::<f32>()
            .map_err(engine_err)?;
        let vocab = shape[2] as usize;
        let last = &logits[logits.len() - vocab..];
        let best = last
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as i64)
            .unwrap_or(END);
        // Carry the caches: decoder caches always; encoder caches only from the first step (with
        // the cache branch on, the model passes them through).
        for (name, slot) in past.iter_mut() {
            let is_encoder = name.contains(".encoder.");
            if step == 0 || !is_encoder {
                let present = name.replace("past_key_values", "present");
                if let Some(v) = out.remove(present.as_str()) {
                    *slot = v;
                }
            }
        }
        if best == END {
            break;
        }
        tokens.push(best);
        if is_looping(&tokens) {
            break;
        }
        next = best;
    }
    Ok(tokens)
}

impl Transcriber for Moonshine {
    fn name(&self) -> &str {
        "moonshine"
    }

    fn transcribe(&self, samples_16k: &[f32]) -> Result<String, SpeechError> {
        // The encoder needs at least ~0.1 s of input for one output step.
        if samples_16k.len() < 1600 {
            return Ok(String::new());
        }
        let ids = self.pool.with(|m| decode(m, samples_16k))?;
        Ok(self.detokenize(&ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_guard() {
        assert!(is_looping(&[5, 7, 7, 7, 7, 7, 7]));
        assert!(is_looping(&[1, 2, 3, 1, 2, 3, 1, 2, 3]));
        assert!(!is_looping(&[1, 2, 3, 4, 5, 6, 7, 8]));
    }

    #[test]
    fn varint_vocab() {
        let v = parse_vocab(&[1, b'a', 0, 2, b'b', b'c']).unwrap();
        assert_eq!(v, vec![b"a".to_vec(), vec![], b"bc".to_vec()]);
        assert!(parse_vocab(&[3, b'a']).is_err());
    }
}
