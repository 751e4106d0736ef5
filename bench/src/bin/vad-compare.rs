//! Compares the two VAD engines on real speech, as voxgate uses them: LibriVox clips sent through
//! an 8 kHz PCMU round trip, clean and with white noise, cut into utterances by the inbound
//! pipeline (same endpointing as the server), each utterance transcribed by Moonshine.
//!
//! Prints per engine: utterances found (5 expected), WER of the transcripts, and the VAD's own
//! real-time factor (CPU seconds per second of audio, one thread).
//!
//! `cargo run --release -p voxgate-bench --bin vad-compare` (models from scripts/fetch-models.sh).

use std::path::Path;
use std::time::{Duration, Instant};
use voxgate_bench::{librivox, wer};
use voxgate_media::codec::{AudioEncoder, Codec};
use voxgate_media::pipeline::{InboundConfig, InboundPipeline, MediaEvent};
use voxgate_media::speech::Transcriber;
use voxgate_media::vad::{Earshot, VoiceDetector};
use voxgate_media::{AudioFrame, SampleRate};
use voxgate_speech::silero::{Silero, SileroModel};

/// Times every `predict` call of the wrapped detector.
struct Timed<D> {
    inner: D,
    spent: std::sync::Arc<std::sync::Mutex<Duration>>,
}

impl<D: VoiceDetector> VoiceDetector for Timed<D> {
    fn chunk_len(&self) -> usize {
        self.inner.chunk_len()
    }
    fn predict(&mut self, chunk: &[i16]) -> f32 {
        let t = Instant::now();
        let p = self.inner.predict(chunk);
        *self.spent.lock().unwrap() += t.elapsed();
        p
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
}

fn main() -> anyhow::Result<()> {
    let models = Path::new("models");
    let env = voxgate_speech::runtime::environment(&models.join("libonnxruntime.so"))?;
    let asr =
        voxgate_speech::moonshine::Moonshine::load(env, &models.join("moonshine-base"), 1, 1)?;
    let silero = SileroModel::load(env, &models.join("silero_vad.onnx"), 1)?;
    let clips = librivox()?;
    let reference: Vec<&str> = clips.iter().map(|(_, t)| t.as_str()).collect();
    // Stream: 1 s silence, then each clip followed by 1.5 s of silence; 16 kHz.
    let mut stream = vec![0i16; 16000];
    for (s, _) in &clips {
        stream.extend(s);
        stream.extend(vec![0i16; 24000]);
    }
    let audio_secs = stream.len() as f64 / 16000.0;
    println!(
        "{:<8} {:<12} {:>10} {:>8} {:>10}",
        "engine", "condition", "utterances", "WER %", "VAD RTF"
    );
    for (cond, snr_db) in [
        ("clean", None),
        ("noise 10dB", Some(10.0f64)),
        ("noise 3dB", Some(3.0)),
    ] {
        let mut s = stream.clone();
        if let Some(snr) = snr_db {
            let speech_rms = (clips
                .iter()
                .flat_map(|(c, _)| c.iter())
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>()
                / clips.iter().map(|(c, _)| c.len()).sum::<usize>() as f64)
                .sqrt();
            let noise_rms = speech_rms / 10f64.powf(snr / 20.0);
            let mut x: u64 = 0x2545F4914F6CDD1D;
            for v in s.iter_mut() {
                // Sum of 4 uniforms ≈ Gaussian, variance 4/12.
                let mut g = 0.0;
                for _ in 0..4 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    g += (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                }
                *v = (*v as f64 + g / (4.0f64 / 12.0).sqrt() * noise_rms).clamp(-32768.0, 32767.0)
                    as i16;
            }
        }
        let pcm8 =
            voxgate_media::resample::resample_clip(&s, SampleRate::HZ_16000, SampleRate::HZ_8000)?;
        let payload =
            AudioEncoder::new(Codec::Pcmu).encode(&AudioFrame::mono(SampleRate::HZ_8000, pcm8));
        for engine in ["earshot", "silero"] {
            let spent = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
            let det: Box<dyn VoiceDetector> = match engine {
                "earshot" => Box::new(Timed {
                    inner: Earshot::default(),
                    spent: spent.clone(),
                }),
                _ => Box::new(Timed {
                    inner: Silero::new(silero.clone()),
                    spent: spent.clone(),
                }),
            };
            let cfg = InboundConfig {
                partial_interval_ms: 0,
                dtmf: false,
                ..InboundConfig::default()
            };
            let mut ingress = voxgate_media::edge::Ingress::new(Codec::Pcmu, 160);
            let mut p = InboundPipeline::new(det, cfg);
            let mut ev = Vec::new();
            let mut frames = Vec::new();
            for chunk in payload.chunks(160) {
                ingress.push_payload(chunk, &mut frames);
                for f in frames.drain(..) {
                    p.process_frame(f, &mut ev);
                }
            }
            p.finish(&mut ev);
            let mut hyp = Vec::new();
            for e in &ev {
                if let MediaEvent::UtteranceFinal { samples, .. } = e {
                    hyp.push(asr.transcribe(samples)?);
                }
            }
            let rtf = spent.lock().unwrap().as_secs_f64() / audio_secs;
            println!(
                "{:<8} {:<12} {:>10} {:>8.1} {:>10.5}",
                engine,
                cond,
                hyp.len(),
                wer(&reference.join(" "), &hyp.join(" ")) * 100.0,
                rtf
            );
        }
    }
    Ok(())
}
