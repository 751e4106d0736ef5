//! The call core's processor chain for caller audio, on 16 kHz mono 20 ms frames (what every leg
//! hands the core; decoding and resampling happen in the leg, see [`crate::edge`]):
//! in-band DTMF → VAD → [`Segmenter`] (endpointing) → utterance tap for ASR.
//!
//! Synchronous and sans-IO: frames in, [`MediaEvent`]s out as data. Media time is the amount of
//! caller audio processed, in milliseconds since the leg started (20 ms per frame).
//!
//! A VAD whose model must not run on the call's task ([`crate::vad::VoiceDetector::is_blocking`])
//! is taken out with [`InboundPipeline::take_vad`], run elsewhere, and its probabilities fed back
//! with [`InboundPipeline::process_frame_with_prob`] in frame order.

use crate::dtmf::DtmfDetector;
use crate::types::{AudioFrame, SampleRate};
use crate::vad::{Segment, Segmenter, SegmenterConfig, Vad, VoiceDetector};
use std::collections::VecDeque;

/// Inbound chain parameters.
#[derive(Clone, Debug)]
pub struct InboundConfig {
    pub segmenter: SegmenterConfig,
    /// Collect utterances for ASR.
    pub asr: bool,
    /// Emit a growing-utterance snapshot for partial results every this many ms of speech
    /// (0 = no partials).
    pub partial_interval_ms: u32,
    /// Audio kept from before the detected speech start, so ASR hears the first phoneme.
    pub pre_roll_ms: u32,
    /// Speculative ASR: once the caller has been silent [`FINAL_TAIL_MS`] inside an utterance
    /// (the tail a final keeps), emit [`MediaEvent::UtteranceSpeculative`] with the utterance so
    /// far, so that recognition runs while endpointing still waits (`min_silence_ms`): when the
    /// silence ends the utterance, the final's audio is the same.
    pub speculative: bool,
    /// Utterances longer than this are cut and finalised (ASR models have a context limit).
    pub max_utterance_ms: u32,
    /// Detect in-band DTMF.
    pub dtmf: bool,
    /// Energy gate of the VAD, dBFS (see [`Vad`]); `f32::NEG_INFINITY` disables it.
    pub vad_gate_dbfs: f32,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            segmenter: SegmenterConfig::default(),
            asr: true,
            partial_interval_ms: 1000,
            pre_roll_ms: 300,
            speculative: true,
            max_utterance_ms: 20_000,
            dtmf: true,
            vad_gate_dbfs: -55.0,
        }
    }
}

/// What the inbound chain observed. Times are ms of media time since the leg started.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaEvent {
    /// Caller speech started (seed 002 `speaking`).
    Speaking { start_ms: u64 },
    /// Caller fell silent at `start_ms` and has been silent for `duration_ms` (seed 002 `silence`).
    Silence { start_ms: u64, duration_ms: u64 },
    /// A DTMF key press detected in the audio.
    Dtmf { digit: char, at_ms: u64 },
    /// The utterance so far, for a partial transcript (`asrDelta`). Mono 16 kHz f32 samples.
    UtterancePartial {
        index: u32,
        start_ms: u64,
        end_ms: u64,
        samples: Vec<f32>,
    },
    /// The utterance so far, [`FINAL_TAIL_MS`] into a silence that may end it: transcribe it now;
    /// if [`MediaEvent::UtteranceFinal`] follows with the same `index` and as many samples, its
    /// transcript is this one. Mono 16 kHz f32 samples.
    UtteranceSpeculative {
        index: u32,
        start_ms: u64,
        end_ms: u64,
        samples: Vec<f32>,
    },
    /// A complete utterance for the final transcript (`asrFinal`). Mono 16 kHz f32 samples.
    UtteranceFinal {
        index: u32,
        start_ms: u64,
        end_ms: u64,
        samples: Vec<f32>,
    },
}

/// Per-call inbound chain over 16 kHz mono 20 ms frames.
pub struct InboundPipeline {
    cfg: InboundConfig,
    dtmf: DtmfDetector,
    vad: Option<Vad>,
    /// The last speech probability (used while the VAD is out, see [`Self::take_vad`]).
    last_prob: f32,
    seg: Segmenter,
    now_ms: u64,
    pre_roll: VecDeque<i16>,
    utt: Option<Utterance>,
    next_index: u32,
}

struct Utterance {
    index: u32,
    start_ms: u64,
    samples: Vec<i16>,
    last_partial_len: usize,
    /// The last voiced end a speculative snapshot was taken at.
    speculated_at: Option<u64>,
}

/// A partial snapshot is not taken once the caller has been silent this long (ms): the
/// speculation [`FINAL_TAIL_MS`] into the pause transcribes the same audio, better.
pub const PARTIAL_PAUSE_MS: u64 = 100;

/// Audio a final utterance keeps after its last voiced frame, ms.
pub const FINAL_TAIL_MS: u64 = 200;

impl InboundPipeline {
    /// A chain with the given voice detector.
    pub fn new(detector: Box<dyn VoiceDetector>, cfg: InboundConfig) -> Self {
        InboundPipeline {
            dtmf: DtmfDetector::new(),
            vad: Some(Vad::with_gate(detector, cfg.vad_gate_dbfs)),
            last_prob: 0.0,
            seg: Segmenter::new(cfg.segmenter.clone()),
            now_ms: 0,
            pre_roll: VecDeque::with_capacity(16 * cfg.pre_roll_ms as usize + 320),
            utt: None,
            next_index: 1,
            cfg,
        }
    }

    /// Media time processed so far, in ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Length of the caller's current voiced run in ms (for barge-in).
    pub fn voiced_run_ms(&self) -> u64 {
        self.seg.voiced_run_ms(self.now_ms)
    }

    /// Adaptive endpointing: the silence (ms) that ends the utterance in progress, instead of the
    /// configured `min_silence_ms` (see [`Segmenter::set_utterance_silence_ms`]). Ending it no
    /// earlier than [`FINAL_TAIL_MS`] into the silence keeps the final's audio equal to the
    /// speculation's.
    pub fn set_utterance_silence_ms(&mut self, ms: u32) {
        self.seg
            .set_utterance_silence_ms(ms.max(FINAL_TAIL_MS as u32));
    }

    /// Index of the utterance in progress, or of the next one (as its [`MediaEvent`]s will
    /// carry it).
    pub fn utterance_index(&self) -> u32 {
        self.utt.as_ref().map_or(self.next_index, |u| u.index)
    }

    /// Whether the caller is mid-utterance.
    pub fn in_speech(&self) -> bool {
        self.seg.in_speech()
    }

    /// Whether the VAD must run off the caller's task ([`Vad::is_blocking`]).
    pub fn vad_is_blocking(&self) -> bool {
        self.vad.as_ref().is_some_and(Vad::is_blocking)
    }

    /// Takes the VAD out to run it elsewhere; `None` while it is out. Feed its probabilities to
    /// [`Self::process_frame_with_prob`] and give it back with [`Self::restore_vad`].
    pub fn take_vad(&mut self) -> Option<Vad> {
        self.vad.take()
    }

    /// Returns the VAD taken with [`Self::take_vad`].
    pub fn restore_vad(&mut self, vad: Vad) {
        self.vad = Some(vad);
    }

    /// The last speech probability the VAD gave.
    pub fn last_prob(&self) -> f32 {
        self.last_prob
    }

    /// Processes one 20 ms, 16 kHz mono frame, running the VAD here. While the VAD is taken out,
    /// the last probability stands in for it.
    pub fn process_frame(&mut self, frame: AudioFrame, out: &mut Vec<MediaEvent>) {
        let p = match self.vad.as_mut() {
            Some(v) => v.process(&frame),
            None => self.last_prob,
        };
        self.process_frame_with_prob(frame, p, out);
    }

    /// Processes one 20 ms, 16 kHz mono frame whose speech probability `prob` (0..=1) the VAD
    /// computed elsewhere. Frames must come in order.
    pub fn process_frame_with_prob(
        &mut self,
        frame: AudioFrame,
        prob: f32,
        out: &mut Vec<MediaEvent>,
    ) {
        debug_assert_eq!(frame.rate, SampleRate::HZ_16000);
        self.last_prob = prob;
        let start = self.now_ms;
        let dur = frame.duration_ms();
        self.now_ms += dur;
        if self.cfg.dtmf {
            if let Some(digit) = self.dtmf.process(&frame) {
                out.push(MediaEvent::Dtmf {
                    digit,
                    at_ms: start,
                });
            }
        }
        let seg = self.seg.process(prob, start, dur);

        if self.cfg.asr {
            let keep = 16 * self.cfg.pre_roll_ms as usize;
            self.pre_roll.extend(&frame.samples);
            let excess = self.pre_roll.len().saturating_sub(keep);
            self.pre_roll.drain(..excess);
            if let Some(u) = self.utt.as_mut() {
                u.samples.extend_from_slice(&frame.samples);
            }
        }
        match seg {
            Some(Segment::SpeechStart { start_ms }) => {
                out.push(MediaEvent::Speaking { start_ms });
                if self.cfg.asr {
                    let samples: Vec<i16> = self.pre_roll.iter().copied().collect();
                    let start_ms = self.now_ms.saturating_sub(samples.len() as u64 / 16);
                    self.utt = Some(Utterance {
                        index: self.next_index,
                        start_ms,
                        samples,
                        last_partial_len: 0,
                        speculated_at: None,
                    });
                    self.next_index += 1;
                }
            }
            Some(Segment::SpeechEnd {
                end_ms, silence_ms, ..
            }) => {
                out.push(MediaEvent::Silence {
                    start_ms: end_ms,
                    duration_ms: silence_ms,
                });
                if let Some(mut u) = self.utt.take() {
                    // Keep 200 ms after the last voiced frame; drop the rest of the silence.
                    let keep_until = end_ms + FINAL_TAIL_MS;
                    let len = ((keep_until.saturating_sub(u.start_ms)) * 16) as usize;
                    u.samples.truncate(len);
                    out.push(MediaEvent::UtteranceFinal {
                        index: u.index,
                        start_ms: u.start_ms,
                        end_ms,
                        samples: to_f32(&u.samples),
                    });
                }
            }
            None => {}
        }
        let due = self.utt.as_ref().and_then(|u| self.speculation_due(u));
        if let Some(u) = self.utt.as_mut() {
            let len_ms = u.samples.len() as u64 / 16;
            if len_ms >= self.cfg.max_utterance_ms as u64 {
                // Cut a very long utterance; speech continues in a new one.
                let u = self.utt.take().expect("checked");
                out.push(MediaEvent::UtteranceFinal {
                    index: u.index,
                    start_ms: u.start_ms,
                    end_ms: self.now_ms,
                    samples: to_f32(&u.samples),
                });
                self.utt = Some(Utterance {
                    index: self.next_index,
                    start_ms: self.now_ms,
                    samples: Vec::new(),
                    last_partial_len: 0,
                    speculated_at: None,
                });
                self.next_index += 1;
            } else if let Some(at) = due {
                // Silent `speculative_ms` after the last voiced frame: what the final would be.
                u.speculated_at = Some(at);
                out.push(MediaEvent::UtteranceSpeculative {
                    index: u.index,
                    start_ms: u.start_ms,
                    end_ms: at,
                    samples: to_f32(&u.samples),
                });
            } else if self.cfg.partial_interval_ms > 0
                && self.seg.in_speech()
                // Not in a pause: a speculation (the better transcript) is coming, and a partial
                // computed now would compete with it for the CPU.
                && self.now_ms.saturating_sub(self.seg.last_voiced_end_ms()) < PARTIAL_PAUSE_MS
                && u.samples.len() - u.last_partial_len
                    >= 16 * self.cfg.partial_interval_ms as usize
            {
                u.last_partial_len = u.samples.len();
                out.push(MediaEvent::UtterancePartial {
                    index: u.index,
                    start_ms: u.start_ms,
                    end_ms: self.now_ms,
                    samples: to_f32(&u.samples),
                });
            }
        }
    }

    /// The last voiced end, when a speculative snapshot of `u` is due now: in speech, silent for
    /// exactly [`FINAL_TAIL_MS`] and not taken yet for this silence.
    fn speculation_due(&self, u: &Utterance) -> Option<u64> {
        let ms = FINAL_TAIL_MS;
        let at = self.seg.last_voiced_end_ms();
        let fits = self.cfg.speculative
            && ms < u64::from(self.seg.config().min_silence_ms)
            && self.seg.in_speech()
            && self.now_ms.saturating_sub(at) == ms
            && at > u.start_ms
            && u.start_ms + u.samples.len() as u64 / 16 == self.now_ms;
        (fits && u.speculated_at != Some(at)).then_some(at)
    }

    /// Ends the stream: an utterance in progress is finalised (the caller hung up mid-sentence).
    pub fn finish(&mut self, out: &mut Vec<MediaEvent>) {
        if let Some(u) = self.utt.take() {
            out.push(MediaEvent::UtteranceFinal {
                index: u.index,
                start_ms: u.start_ms,
                end_ms: self.now_ms,
                samples: to_f32(&u.samples),
            });
        }
    }
}

fn to_f32(s: &[i16]) -> Vec<f32> {
    s.iter().map(|&x| x as f32 / 32768.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A detector that calls loud chunks speech: lets the chain be tested without a model.
    struct Energy;
    impl VoiceDetector for Energy {
        fn chunk_len(&self) -> usize {
            160
        }
        fn predict(&mut self, chunk: &[i16]) -> f32 {
            let e = chunk.iter().map(|&x| (x as f32).abs()).sum::<f32>() / chunk.len() as f32;
            if e > 500.0 {
                1.0
            } else {
                0.0
            }
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn pcmu_speech_burst_gives_speaking_silence_and_one_utterance() {
        let codec = crate::codec::Codec::Pcmu;
        let mut enc = crate::codec::AudioEncoder::new(codec);
        let mut ingress = crate::edge::Ingress::new(codec, 1 << 20);
        let mut p = InboundPipeline::new(Box::new(Energy), InboundConfig::default());
        // 1 s silence, 1.5 s of a 300 Hz buzz, 1 s silence, as 8 kHz PCMU in odd-sized messages.
        let mut pcm = vec![0i16; 8000];
        pcm.extend((0..12000).map(|i| {
            (6000.0 * (i as f32 * 300.0 * 2.0 * std::f32::consts::PI / 8000.0).sin()) as i16
        }));
        pcm.extend(vec![0i16; 8000]);
        let bytes = enc.encode(&AudioFrame::mono(SampleRate::HZ_8000, pcm));
        let mut ev = Vec::new();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(333) {
            ingress.push_payload(chunk, &mut frames);
            for f in frames.drain(..) {
                p.process_frame(f, &mut ev);
            }
        }
        let speaking: Vec<_> = ev
            .iter()
            .filter(|e| matches!(e, MediaEvent::Speaking { .. }))
            .collect();
        assert_eq!(speaking.len(), 1);
        let MediaEvent::Speaking { start_ms } = speaking[0] else {
            unreachable!()
        };
        assert!((1000..1100).contains(start_ms), "{start_ms}");
        let finals: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                MediaEvent::UtteranceFinal {
                    samples,
                    start_ms,
                    end_ms,
                    ..
                } => Some((samples.len(), *start_ms, *end_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(finals.len(), 1);
        assert!(finals[0].0 >= 16 * 1500, "{:?}", finals[0]);
        assert!(ev.iter().any(|e| matches!(
            e,
            MediaEvent::Silence {
                duration_ms: 600,
                ..
            }
        )));
        assert!(ev
            .iter()
            .any(|e| matches!(e, MediaEvent::UtterancePartial { index: 1, .. })));
        assert_eq!(p.now_ms(), 3500);
        // 200 ms into the silence, before endpointing (600 ms), the same audio as the final.
        let spec: Vec<_> = ev
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                MediaEvent::UtteranceSpeculative {
                    index,
                    samples,
                    start_ms,
                    end_ms,
                } => Some((i, *index, samples.len(), *start_ms, *end_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(spec.len(), 1, "one silence, one speculation");
        let fin = ev
            .iter()
            .position(|e| matches!(e, MediaEvent::UtteranceFinal { .. }))
            .unwrap();
        assert!(spec[0].0 < fin);
        assert_eq!(spec[0].1, 1);
        assert_eq!((spec[0].2, spec[0].3, spec[0].4), finals[0]);
    }

    /// Partials are taken while the caller speaks, never in a pause (where the speculation
    /// transcribes the same audio): 560 ms of buzz, a 400 ms pause, 1.2 s of buzz, silence.
    #[test]
    fn no_partial_is_taken_in_a_pause() {
        let loud_frame = |k: usize| (50..78).contains(&k) || (98..158).contains(&k);
        let mut p = InboundPipeline::new(Box::new(Energy), InboundConfig::default());
        let mut last_loud_end = 0u64;
        let (mut partials, mut speculations) = (0, 0);
        for k in 0..220usize {
            let loud = loud_frame(k);
            let samples = (0..320)
                .map(|i| match (loud, i % 2) {
                    (false, _) => 0,
                    (true, 0) => 3000,
                    (true, _) => -3000,
                })
                .collect();
            let mut ev = Vec::new();
            p.process_frame(AudioFrame::mono(SampleRate::HZ_16000, samples), &mut ev);
            if loud {
                last_loud_end = p.now_ms();
            }
            for e in &ev {
                match e {
                    MediaEvent::UtterancePartial { .. } => {
                        partials += 1;
                        let pause = p.now_ms() - last_loud_end;
                        assert!(
                            pause < PARTIAL_PAUSE_MS,
                            "a partial {pause} ms into a pause"
                        );
                    }
                    MediaEvent::UtteranceSpeculative { .. } => speculations += 1,
                    _ => {}
                }
            }
        }
        // The utterance passed 1 s during the pause; its partial came once the caller resumed.
        assert!(partials >= 1, "no partial at all");
        assert_eq!(speculations, 2, "one speculation per pause");
    }

    #[test]
    fn a_vad_run_elsewhere_gives_the_same_events() {
        let buzz: Vec<AudioFrame> = (0..150)
            .map(|k| {
                let loud = (50..100).contains(&k);
                AudioFrame::mono(
                    SampleRate::HZ_16000,
                    (0..320)
                        .map(|i| {
                            if loud {
                                if i % 2 == 0 {
                                    3000
                                } else {
                                    -3000
                                }
                            } else {
                                0
                            }
                        })
                        .collect(),
                )
            })
            .collect();
        let mut inline = InboundPipeline::new(Box::new(Energy), InboundConfig::default());
        let mut a = Vec::new();
        for f in &buzz {
            inline.process_frame(f.clone(), &mut a);
        }
        let mut offloaded = InboundPipeline::new(Box::new(Energy), InboundConfig::default());
        let mut vad = offloaded.take_vad().unwrap();
        assert!(offloaded.take_vad().is_none());
        let mut b = Vec::new();
        for f in &buzz {
            let p = vad.process(f);
            offloaded.process_frame_with_prob(f.clone(), p, &mut b);
        }
        offloaded.restore_vad(vad);
        assert_eq!(a, b);
        assert!(a
            .iter()
            .any(|e| matches!(e, MediaEvent::UtteranceFinal { .. })));
    }
}
