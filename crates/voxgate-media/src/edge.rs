//! A leg's audio edges: the conversion between what a transport carries and the call core's
//! 16 kHz mono 20 ms [`AudioFrame`]s (320 samples).
//!
//! - [`Ingress`]: encoded bytes of any size (WebSocket binary messages, base64-decoded Twilio
//!   payloads) or decoded samples at the codec's rate (an RTP leg after its jitter buffer) →
//!   resampled to 16 kHz → whole 20 ms frames.
//! - [`Egress`]: 16 kHz frames → resampled to the codec's rate → encoded bytes.
//!
//! Both keep state across calls (G.722 and the resamplers are stateful): one of each per stream.

use crate::codec::{AudioDecoder, AudioEncoder, Codec};
use crate::framer::{ByteFramer, SampleFramer};
use crate::resample::StreamResampler;
use crate::types::{AudioFrame, SampleRate};

/// Samples in one core frame: 20 ms at 16 kHz.
pub const CORE_FRAME_SAMPLES: usize = 320;

/// Receive side: codec bytes or samples → 16 kHz mono 20 ms frames.
pub struct Ingress {
    codec: Codec,
    decoder: AudioDecoder,
    framer: ByteFramer,
    resampler: StreamResampler,
    frames16: SampleFramer,
    pcm16: Vec<i16>,
}

impl Ingress {
    /// An ingress for `codec` (not Opus: its packets are decoded by the RTP leg and given to
    /// [`Self::push_samples`]). `max_buffered` bounds the bytes waiting for a whole frame: the
    /// caller sizes it above its largest message, so that nothing is dropped (see
    /// [`ByteFramer`]).
    pub fn new(codec: Codec, max_buffered: usize) -> Self {
        let frame_bytes = codec.bytes_in_ms(20).max(1);
        Ingress {
            codec,
            decoder: AudioDecoder::new(codec),
            framer: ByteFramer::new(frame_bytes, max_buffered.max(frame_bytes)),
            resampler: StreamResampler::new(codec.sample_rate(), SampleRate::HZ_16000)
                .expect("supported rates"),
            frames16: SampleFramer::new(CORE_FRAME_SAMPLES),
            pcm16: Vec::with_capacity(CORE_FRAME_SAMPLES * 2),
        }
    }

    /// The codec this ingress decodes.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Feeds encoded bytes of any size; appends every whole 16 kHz 20 ms frame they complete to
    /// `out`. A partial frame waits for the rest.
    pub fn push_payload(&mut self, payload: &[u8], out: &mut Vec<AudioFrame>) {
        self.framer.push(payload);
        while let Some(frame) = self.framer.pop() {
            let decoded = self.decoder.decode(&frame);
            self.push_samples(&decoded.samples, out);
        }
    }

    /// Feeds mono samples at the codec's rate ([`Codec::sample_rate`]); appends whole 16 kHz
    /// frames to `out`.
    pub fn push_samples(&mut self, samples: &[i16], out: &mut Vec<AudioFrame>) {
        self.pcm16.clear();
        self.resampler.process(samples, &mut self.pcm16);
        self.frames16.push(&self.pcm16);
        while let Some(f) = self.frames16.pop() {
            out.push(AudioFrame::mono(SampleRate::HZ_16000, f));
        }
    }

    /// Bytes dropped because more than `max_buffered` waited for a frame (0 when sized right).
    pub fn dropped_bytes(&self) -> u64 {
        self.framer.dropped_bytes()
    }
}

/// Send side: 16 kHz mono frames → encoded bytes of `codec`.
pub struct Egress {
    resampler: StreamResampler,
    encoder: AudioEncoder,
}

impl Egress {
    /// An egress for `codec` (one encoded payload per 20 ms frame; Opus works too, one packet
    /// per frame).
    pub fn new(codec: Codec) -> Self {
        Egress {
            resampler: StreamResampler::new(SampleRate::HZ_16000, codec.sample_rate())
                .expect("supported rates"),
            encoder: AudioEncoder::new(codec),
        }
    }

    /// The codec this egress encodes.
    pub fn codec(&self) -> Codec {
        self.encoder.codec()
    }

    /// Encodes a 16 kHz frame; `None` while the resampler is still filling its first block.
    pub fn encode(&mut self, frame: &AudioFrame) -> Option<Vec<u8>> {
        let f = self.resampler.process_frame(frame);
        (!f.samples.is_empty()).then(|| self.encoder.encode(&f))
    }

    /// Resamples a 16 kHz frame to the codec's rate without encoding (an RTP leg encodes per
    /// packet time itself).
    pub fn resample(&mut self, frame: &AudioFrame, out: &mut Vec<i16>) {
        self.resampler.process(&frame.samples, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_second_message_becomes_a_hundred_frames() {
        for codec in [Codec::Pcmu, Codec::G722, Codec::Pcm(SampleRate::HZ_8000)] {
            let mut enc = AudioEncoder::new(codec);
            let rate = codec.sample_rate();
            let bytes = enc.encode(&AudioFrame::silence(rate, 2000));
            let mut ing = Ingress::new(codec, bytes.len() + 640);
            let mut out = Vec::new();
            ing.push_payload(&bytes[..7], &mut out);
            ing.push_payload(&bytes[7..], &mut out);
            assert_eq!(out.len(), 100, "{codec:?}");
            assert!(out.iter().all(|f| f.samples.len() == 320));
            assert_eq!(ing.dropped_bytes(), 0);
        }
    }

    #[test]
    fn egress_encodes_twenty_ms_per_frame() {
        let mut e = Egress::new(Codec::Pcmu);
        let mut total = 0;
        for _ in 0..50 {
            if let Some(b) = e.encode(&AudioFrame::silence(SampleRate::HZ_16000, 20)) {
                total += b.len();
            }
        }
        assert_eq!(total, 8000, "one second of PCMU");
        let mut e = Egress::new(Codec::Pcm(SampleRate::HZ_16000));
        assert_eq!(
            e.encode(&AudioFrame::silence(SampleRate::HZ_16000, 20))
                .unwrap()
                .len(),
            640
        );
    }
}
