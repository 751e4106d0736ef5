//! Audio codecs on the call's edges: L16 PCM, PCMU and PCMA (ITU-T G.711) and G.722 (ITU-T G.722,
//! 64 kbit/s mode). G.711 and G.722 come from the `audio-codec` crate; this module gives them typed
//! frames and the wire names of seed 002 (`codec` of the `invite` command: `pcm`, `pcmu`, `pcma`,
//! `g722`).
//!
//! Byte sizes of one 20 ms frame: PCM 16-bit LE = 2 bytes × rate × 0.02 (640 at 16 kHz, 320 at
//! 8 kHz); PCMU/PCMA = 160 bytes (8 kHz, 1 byte per sample); G.722 = 160 bytes (16 kHz sampling,
//! 4 bits per sample; its RTP clock is 8 kHz by RFC 3551 §4.5.2 but that matters only for RTP).

use crate::types::{AudioFrame, SampleRate};

/// A codec negotiated for a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Signed 16-bit little-endian linear PCM, mono, at the given rate.
    Pcm(SampleRate),
    /// G.711 µ-law, 8 kHz.
    Pcmu,
    /// G.711 A-law, 8 kHz.
    Pcma,
    /// G.722, 16 kHz sampling, 64 kbit/s.
    G722,
    /// Opus (RFC 6716/7587), 48 kHz, one packet per frame (RTP legs only: packets have no fixed
    /// size, so a byte stream cannot carry it). Decoded to mono; encoded as the stereo
    /// `opus/48000/2` that RFC 7587 §7 requires in SDP, from mono input.
    Opus,
}

/// Error for an unknown codec name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("unknown codec `{0}` (expected pcm, pcmu, pcma, g722 or opus)")]
    Unknown(String),
    #[error(transparent)]
    Rate(#[from] crate::types::UnsupportedRate),
}

impl Codec {
    /// Parses the seed-002 name (`pcm`, `pcmu`, `pcma`, `g722`, case-insensitive; `pcm16`, `l16`,
    /// `linear16` are accepted for PCM). `pcm_rate` applies to PCM only (16 kHz when `None`).
    ///
    /// # Errors
    /// [`CodecError::Unknown`] for other names, [`CodecError::Rate`] for an unsupported PCM rate.
    pub fn from_name(name: &str, pcm_rate: Option<u32>) -> Result<Codec, CodecError> {
        match name.to_ascii_lowercase().as_str() {
            "pcm" | "pcm16" | "l16" | "linear16" | "slin" => {
                Ok(Codec::Pcm(SampleRate::new(pcm_rate.unwrap_or(16_000))?))
            }
            "pcmu" | "ulaw" | "mulaw" | "g711u" => Ok(Codec::Pcmu),
            "pcma" | "alaw" | "g711a" => Ok(Codec::Pcma),
            "g722" => Ok(Codec::G722),
            "opus" => Ok(Codec::Opus),
            other => Err(CodecError::Unknown(other.to_string())),
        }
    }

    /// The seed-002 wire name.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcm(_) => "pcm",
            Codec::Pcmu => "pcmu",
            Codec::Pcma => "pcma",
            Codec::G722 => "g722",
            Codec::Opus => "opus",
        }
    }

    /// The rate of the decoded audio.
    pub fn sample_rate(self) -> SampleRate {
        match self {
            Codec::Pcm(r) => r,
            Codec::Pcmu | Codec::Pcma => SampleRate::HZ_8000,
            Codec::G722 => SampleRate::HZ_16000,
            Codec::Opus => SampleRate::HZ_48000,
        }
    }

    /// Encoded bytes in `ms` milliseconds of audio (20 ms: 640 for PCM 16 kHz, 160 for G.711/G.722);
    /// 0 for Opus, whose packets vary in size.
    pub fn bytes_in_ms(self, ms: u32) -> usize {
        match self {
            Codec::Opus => 0,
            Codec::Pcm(r) => r.samples_in_ms(ms) * 2,
            Codec::Pcmu | Codec::Pcma => SampleRate::HZ_8000.samples_in_ms(ms),
            Codec::G722 => SampleRate::HZ_16000.samples_in_ms(ms) / 2,
        }
    }
}

/// Decoder state for one direction of one leg (G.722 is stateful; keep one per stream).
pub struct AudioDecoder {
    codec: Codec,
    inner: Option<Box<dyn audio_codec::Decoder>>,
}

impl AudioDecoder {
    pub fn new(codec: Codec) -> Self {
        let inner = match codec {
            Codec::Pcm(_) => None,
            Codec::Pcmu => Some(audio_codec::create_decoder(audio_codec::CodecType::PCMU)),
            Codec::Pcma => Some(audio_codec::create_decoder(audio_codec::CodecType::PCMA)),
            Codec::G722 => Some(audio_codec::create_decoder(audio_codec::CodecType::G722)),
            Codec::Opus => Some(audio_codec::create_decoder(audio_codec::CodecType::Opus)),
        };
        AudioDecoder { codec, inner }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Decodes one payload into a mono frame at [`Codec::sample_rate`]. A trailing odd byte of PCM
    /// is ignored (callers frame PCM on even boundaries, see [`crate::framer`]).
    pub fn decode(&mut self, payload: &[u8]) -> AudioFrame {
        let rate = self.codec.sample_rate();
        let samples = match &mut self.inner {
            None => payload
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
            Some(d) => d.decode(payload),
        };
        AudioFrame::mono(rate, samples)
    }
}

/// Encoder state for one direction of one leg.
pub struct AudioEncoder {
    codec: Codec,
    inner: Option<Box<dyn audio_codec::Encoder>>,
}

impl AudioEncoder {
    pub fn new(codec: Codec) -> Self {
        let inner = match codec {
            Codec::Pcm(_) => None,
            Codec::Pcmu => Some(audio_codec::create_encoder(audio_codec::CodecType::PCMU)),
            Codec::Pcma => Some(audio_codec::create_encoder(audio_codec::CodecType::PCMA)),
            Codec::G722 => Some(audio_codec::create_encoder(audio_codec::CodecType::G722)),
            Codec::Opus => Some(audio_codec::create_encoder(audio_codec::CodecType::Opus)),
        };
        AudioEncoder { codec, inner }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Encodes a mono frame that is already at [`Codec::sample_rate`] (callers resample first).
    ///
    /// # Panics
    /// Debug builds assert the rate; it is an invariant of the pipeline, not input validation.
    pub fn encode(&mut self, frame: &AudioFrame) -> Vec<u8> {
        debug_assert_eq!(frame.rate, self.codec.sample_rate());
        match &mut self.inner {
            None => frame.samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
            Some(e) => e.encode(&frame.samples),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: SampleRate, hz: f32, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (8000.0 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate.hz() as f32).sin())
                    as i16
            })
            .collect()
    }

    fn snr_db(a: &[i16], b: &[i16]) -> f64 {
        let sig: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
        let noise: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        10.0 * (sig / noise.max(1e-9)).log10()
    }

    #[test]
    fn names_parse() {
        assert_eq!(Codec::from_name("PCMU", None), Ok(Codec::Pcmu));
        assert_eq!(
            Codec::from_name("pcm", Some(8000)),
            Ok(Codec::Pcm(SampleRate::HZ_8000))
        );
        assert_eq!(Codec::from_name("pcm", None).unwrap().bytes_in_ms(20), 640);
        assert!(matches!(
            Codec::from_name("gsm", None),
            Err(CodecError::Unknown(_))
        ));
        assert!(matches!(
            Codec::from_name("pcm", Some(11025)),
            Err(CodecError::Rate(_))
        ));
    }

    #[test]
    fn opus_round_trip_keeps_a_tone() {
        let mut enc = AudioEncoder::new(Codec::Opus);
        let mut dec = AudioDecoder::new(Codec::Opus);
        let src = tone(SampleRate::HZ_48000, 440.0, 960 * 50);
        let mut out = Vec::new();
        for f in src.chunks(960) {
            let packet = enc.encode(&AudioFrame::mono(SampleRate::HZ_48000, f.to_vec()));
            assert!(!packet.is_empty() && packet.len() < 400, "{}", packet.len());
            out.extend(dec.decode(&packet).samples);
        }
        assert_eq!(out.len(), src.len());
        // Opus delays the signal a little; compare the energy of the second half.
        let e = |s: &[i16]| s.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / s.len() as f64;
        let ratio = e(&out[24000..]) / e(&src[24000..]);
        assert!((0.5..2.0).contains(&ratio), "{ratio}");
    }

    #[test]
    fn g711_and_pcm_round_trip() {
        for codec in [Codec::Pcmu, Codec::Pcma, Codec::Pcm(SampleRate::HZ_8000)] {
            let src = tone(SampleRate::HZ_8000, 440.0, 1600);
            let mut enc = AudioEncoder::new(codec);
            let mut dec = AudioDecoder::new(codec);
            let bytes = enc.encode(&AudioFrame::mono(SampleRate::HZ_8000, src.clone()));
            assert_eq!(bytes.len(), codec.bytes_in_ms(200));
            let out = dec.decode(&bytes);
            assert!(snr_db(&src, &out.samples) > 30.0, "{codec:?}");
        }
    }

    #[test]
    fn g722_round_trip_keeps_the_tone() {
        let src = tone(SampleRate::HZ_16000, 1000.0, 3200);
        let mut enc = AudioEncoder::new(Codec::G722);
        let mut dec = AudioDecoder::new(Codec::G722);
        let mut out = Vec::new();
        for chunk in src.chunks(320) {
            let bytes = enc.encode(&AudioFrame::mono(SampleRate::HZ_16000, chunk.to_vec()));
            assert_eq!(bytes.len(), 160);
            out.extend(dec.decode(&bytes).samples);
        }
        // G.722 has a codec delay; compare energies after the start-up.
        let e_in: f64 = src[1600..].iter().map(|&x| (x as f64).powi(2)).sum();
        let e_out: f64 = out[1600..].iter().map(|&x| (x as f64).powi(2)).sum();
        assert!(
            (e_out / e_in - 1.0).abs() < 0.2,
            "energy ratio {}",
            e_out / e_in
        );
    }
}
