//! Voice-activity detection: the [`VoiceDetector`] trait, the pure-Rust earshot engine, and the
//! [`Segmenter`] that turns per-frame speech probabilities into speech-start / speech-end decisions
//! (endpointing).
//!
//! Input to every detector is mono 16 kHz audio; each engine consumes its own chunk size
//! (earshot 256 samples = 16 ms, Silero 512 samples = 32 ms), so [`Vad`] re-chunks 20 ms frames.

use crate::types::AudioFrame;

/// A speech-probability model over fixed chunks of 16 kHz mono audio.
pub trait VoiceDetector: Send {
    /// Samples per chunk at 16 kHz.
    fn chunk_len(&self) -> usize;
    /// Probability in 0..=1 that the chunk contains speech. `chunk.len() == chunk_len()`.
    fn predict(&mut self, chunk: &[i16]) -> f32;
    /// Clears recurrent state (between calls, never mid-utterance).
    fn reset(&mut self);
    /// Whether [`Self::predict`] is too slow, or may wait on a shared model, to run on a call's
    /// task: the call core then runs it on the blocking thread pool (Silero on ONNX Runtime).
    /// Default `false` (earshot: microseconds per chunk, no shared state).
    fn is_blocking(&self) -> bool {
        false
    }
}

/// earshot (pyke.io): a small neural VAD compiled into the binary; 256-sample chunks at 16 kHz.
pub struct Earshot(Box<earshot::Detector>);

impl Default for Earshot {
    fn default() -> Self {
        Earshot(earshot::Detector::default_boxed())
    }
}

impl VoiceDetector for Earshot {
    fn chunk_len(&self) -> usize {
        256
    }
    fn predict(&mut self, chunk: &[i16]) -> f32 {
        self.0.predict_i16(chunk)
    }
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// Feeds 20 ms frames to a [`VoiceDetector`] and reports one probability per frame: the maximum
/// over the chunks completed during that frame (the last one when none completed).
///
/// Energy gate: once the input has stayed below `gate_dbfs` for [`GATE_AFTER_MS`], the model is
/// not run (probability 0) until a louder frame arrives; the detector is then reset, as for a new
/// audio sequence. Near-silent stretches (digital silence, comfort noise) are common on calls, and
/// the model is the most expensive step of the inbound chain.
pub struct Vad {
    detector: Box<dyn VoiceDetector>,
    buf: Vec<i16>,
    last: f32,
    gate_dbfs: f32,
    quiet_ms: u32,
}

/// Quiet time before the energy gate closes, ms.
pub const GATE_AFTER_MS: u32 = 200;

impl Vad {
    /// A VAD with the default energy gate (−55 dBFS).
    pub fn new(detector: Box<dyn VoiceDetector>) -> Self {
        Self::with_gate(detector, -55.0)
    }

    /// A VAD whose gate closes below `gate_dbfs` (use `f32::NEG_INFINITY` to always run the model).
    pub fn with_gate(detector: Box<dyn VoiceDetector>, gate_dbfs: f32) -> Self {
        Vad {
            detector,
            buf: Vec::with_capacity(1024),
            last: 0.0,
            gate_dbfs,
            quiet_ms: 0,
        }
    }

    /// Whether the detector must run off the call's task (see [`VoiceDetector::is_blocking`]).
    pub fn is_blocking(&self) -> bool {
        self.detector.is_blocking()
    }

    /// Whether the gate is closed (the model is idle).
    pub fn gated(&self) -> bool {
        self.quiet_ms >= GATE_AFTER_MS
    }

    /// Speech probability for a 16 kHz mono frame.
    pub fn process(&mut self, frame: &AudioFrame) -> f32 {
        if frame.level_dbfs() < self.gate_dbfs {
            self.quiet_ms = self.quiet_ms.saturating_add(frame.duration_ms() as u32);
            if self.gated() {
                self.buf.clear();
                self.last = 0.0;
                return 0.0;
            }
        } else {
            if self.gated() {
                self.detector.reset();
            }
            self.quiet_ms = 0;
        }
        self.buf.extend_from_slice(&frame.samples);
        let n = self.detector.chunk_len();
        let mut best: Option<f32> = None;
        let mut off = 0;
        while self.buf.len() - off >= n {
            let p = self.detector.predict(&self.buf[off..off + n]);
            best = Some(best.map_or(p, |b: f32| b.max(p)));
            off += n;
        }
        self.buf.drain(..off);
        if let Some(p) = best {
            self.last = p;
        }
        self.last
    }
}

/// Endpointing parameters. Times in milliseconds of media time.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmenterConfig {
    /// Probability at or above which a frame is voiced (default 0.5).
    pub threshold: f32,
    /// Voiced time needed before speech is declared started (default 60 ms).
    pub min_speech_ms: u32,
    /// Unvoiced time that ends an utterance (default 600 ms).
    pub min_silence_ms: u32,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        SegmenterConfig {
            threshold: 0.5,
            min_speech_ms: 60,
            min_silence_ms: 600,
        }
    }
}

/// A decision of the [`Segmenter`]. Times are milliseconds since the stream began.
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    /// Speech began at `start_ms` (the first voiced frame of the run).
    SpeechStart { start_ms: u64 },
    /// The utterance that began at `start_ms` ended at `end_ms` (last voiced frame's end), and
    /// the caller has been silent since then for `silence_ms`.
    SpeechEnd {
        start_ms: u64,
        end_ms: u64,
        silence_ms: u64,
    },
}

/// State machine over per-frame voiced/unvoiced decisions.
pub struct Segmenter {
    cfg: SegmenterConfig,
    in_speech: bool,
    run_start_ms: Option<u64>,
    speech_start_ms: u64,
    last_voiced_end_ms: u64,
    /// Unvoiced time that ends the current utterance instead of `min_silence_ms` (adaptive
    /// endpointing); cleared when an utterance starts or ends.
    silence_override_ms: Option<u32>,
}

impl Segmenter {
    pub fn new(cfg: SegmenterConfig) -> Self {
        Segmenter {
            cfg,
            in_speech: false,
            run_start_ms: None,
            speech_start_ms: 0,
            last_voiced_end_ms: 0,
            silence_override_ms: None,
        }
    }

    /// Sets the unvoiced time (ms) that ends the utterance in progress, instead of
    /// `min_silence_ms`; no effect between utterances. A value at or below the silence so far ends
    /// the utterance at the next unvoiced frame.
    pub fn set_utterance_silence_ms(&mut self, ms: u32) {
        if self.in_speech {
            self.silence_override_ms = Some(ms);
        }
    }

    pub fn config(&self) -> &SegmenterConfig {
        &self.cfg
    }

    /// Whether an utterance is in progress.
    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// End of the last voiced frame, ms.
    pub fn last_voiced_end_ms(&self) -> u64 {
        self.last_voiced_end_ms
    }

    /// Start of the current utterance (when [`Self::in_speech`]).
    pub fn speech_start_ms(&self) -> u64 {
        self.speech_start_ms
    }

    /// Feeds one frame's probability, for the frame spanning `start_ms .. start_ms + dur_ms`.
    pub fn process(&mut self, prob: f32, start_ms: u64, dur_ms: u64) -> Option<Segment> {
        let end_ms = start_ms + dur_ms;
        let voiced = prob >= self.cfg.threshold;
        if voiced {
            self.last_voiced_end_ms = end_ms;
            let run_start = *self.run_start_ms.get_or_insert(start_ms);
            if !self.in_speech && end_ms - run_start >= self.cfg.min_speech_ms as u64 {
                self.in_speech = true;
                self.speech_start_ms = run_start;
                self.silence_override_ms = None;
                return Some(Segment::SpeechStart {
                    start_ms: run_start,
                });
            }
        } else {
            self.run_start_ms = None;
            let needed = self.silence_override_ms.unwrap_or(self.cfg.min_silence_ms);
            if self.in_speech && end_ms - self.last_voiced_end_ms >= needed as u64 {
                self.in_speech = false;
                self.silence_override_ms = None;
                return Some(Segment::SpeechEnd {
                    start_ms: self.speech_start_ms,
                    end_ms: self.last_voiced_end_ms,
                    silence_ms: end_ms - self.last_voiced_end_ms,
                });
            }
        }
        None
    }

    /// Length of the current voiced run in ms (0 when the last frame was unvoiced): barge-in
    /// compares it with its minimum.
    pub fn voiced_run_ms(&self, now_ms: u64) -> u64 {
        self.run_start_ms.map_or(0, |s| now_ms.saturating_sub(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmenter_needs_min_speech_and_min_silence() {
        let mut s = Segmenter::new(SegmenterConfig::default());
        let mut out = Vec::new();
        // 20 ms blip (ignored), 40 ms gap, 1 s of speech, 200 ms pause (kept), 200 ms speech, 1 s silence.
        let pattern: Vec<f32> = [
            vec![0.9],
            vec![0.1; 2],
            vec![0.9; 50],
            vec![0.1; 10],
            vec![0.9; 10],
            vec![0.1; 50],
        ]
        .concat();
        for (i, p) in pattern.iter().enumerate() {
            if let Some(seg) = s.process(*p, i as u64 * 20, 20) {
                out.push(seg);
            }
        }
        assert_eq!(
            out,
            vec![
                Segment::SpeechStart { start_ms: 60 },
                Segment::SpeechEnd {
                    start_ms: 60,
                    end_ms: 1460,
                    silence_ms: 600
                }
            ]
        );
    }

    /// Counts model runs; calls chunks with any sample above 1000 speech.
    struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl VoiceDetector for Counting {
        fn chunk_len(&self) -> usize {
            160
        }
        fn predict(&mut self, chunk: &[i16]) -> f32 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if chunk.iter().any(|&x| x > 1000) {
                1.0
            } else {
                0.0
            }
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn energy_gate_idles_the_model_in_silence_only() {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut v = Vad::new(Box::new(Counting(runs.clone())));
        let silence = AudioFrame::silence(crate::SampleRate::HZ_16000, 20);
        for _ in 0..50 {
            assert_eq!(v.process(&silence), 0.0);
        }
        // The model runs for the first 180 ms of quiet (9 frames x 2 chunks); the frame that
        // completes 200 ms closes the gate.
        assert_eq!(runs.load(std::sync::atomic::Ordering::Relaxed), 18);
        assert!(v.gated());
        let loud = AudioFrame::mono(crate::SampleRate::HZ_16000, [3000i16, -3000].repeat(160));
        assert_eq!(v.process(&loud), 1.0);
        assert!(!v.gated());
    }

    #[test]
    fn earshot_hears_no_speech_in_silence() {
        let mut v = Vad::new(Box::new(Earshot::default()));
        for _ in 0..50 {
            let p = v.process(&AudioFrame::silence(crate::SampleRate::HZ_16000, 20));
            assert!(p < 0.5);
        }
    }
}
