//! MP3 decoded as a stream (seed 003 `audio` with `audioFormat: mp3`): bytes arrive in messages
//! of any size, MPEG frames split across them. We find frame boundaries from the MPEG audio
//! frame headers (ISO/IEC 11172-3 §2.4.1.3, 13818-3 for MPEG-2/2.5 rates) and hand each complete
//! Layer III frame to symphonia's MP3 decoder, which keeps the bit reservoir between frames.
//!
//! Output: 16 kHz mono s16 samples. Supported source rates: 8, 16, 22.05, 24, 44.1 and 48 kHz
//! (voxgate's resampler rates); others are refused with an error.

use symphonia::core::codecs::audio::well_known::CODEC_ID_MP3;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::packet::Packet;
use voxgate_media::resample::StreamResampler;
use voxgate_media::SampleRate;

/// Bytes kept waiting for the rest of a frame or a sync word (a Layer III frame is at most
/// 1441 bytes, 2881 for free-format-like padding cases; 16 KiB is ample).
const MAX_PENDING: usize = 16 * 1024;

/// One MPEG audio Layer III frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    sample_rate: u32,
    /// Frame length in bytes, header included.
    len: usize,
    /// Samples per channel.
    samples: u32,
    channels: u32,
}

fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < 4 || b[0] != 0xFF || b[1] & 0xE0 != 0xE0 {
        return None;
    }
    let version = (b[1] >> 3) & 3; // 0: 2.5, 2: 2, 3: 1
    let layer = (b[1] >> 1) & 3; // 1: Layer III
    if version == 1 || layer != 1 {
        return None;
    }
    let bitrate_idx = (b[2] >> 4) as usize;
    let rate_idx = ((b[2] >> 2) & 3) as usize;
    if bitrate_idx == 0 || bitrate_idx == 15 || rate_idx == 3 {
        return None;
    }
    const V1: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let (kbps, sample_rate, coef, samples) = match version {
        3 => (
            V1[bitrate_idx],
            [44_100, 48_000, 32_000][rate_idx],
            144,
            1152,
        ),
        2 => (V2[bitrate_idx], [22_050, 24_000, 16_000][rate_idx], 72, 576),
        _ => (V2[bitrate_idx], [11_025, 12_000, 8_000][rate_idx], 72, 576),
    };
    let padding = ((b[2] >> 1) & 1) as usize;
    let len = (coef * kbps * 1000 / sample_rate) as usize + padding;
    Some(Header {
        sample_rate,
        len,
        samples,
        channels: if b[3] >> 6 == 3 { 1 } else { 2 },
    })
}

/// What one [`Mp3Stream::push`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Pushed {
    /// Complete frames decoded.
    pub frames: usize,
    /// Bytes that were not MP3 (garbage, a truncated frame) and were skipped.
    pub skipped: usize,
}

/// A streaming MP3 decoder to 16 kHz mono.
#[derive(Default)]
pub struct Mp3Stream {
    pending: Vec<u8>,
    /// Bytes of an ID3v2 tag still to skip.
    skip_tag: usize,
    at_start: bool,
    decoder: Option<(u32, Box<dyn AudioDecoder>, StreamResampler)>,
    ts: u64,
    mono: Vec<i16>,
}

impl Mp3Stream {
    pub fn new() -> Self {
        Mp3Stream {
            at_start: true,
            ..Default::default()
        }
    }

    /// Adds bytes; decoded 16 kHz samples are appended to `out`.
    ///
    /// # Errors
    /// A sample rate voxgate cannot resample, or a decoder failure. Bytes that are not MP3 are
    /// skipped and counted in [`Pushed::skipped`], not an error.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<i16>) -> Result<Pushed, String> {
        let mut r = Pushed::default();
        let mut bytes = bytes;
        if self.skip_tag > 0 {
            let n = self.skip_tag.min(bytes.len());
            self.skip_tag -= n;
            bytes = &bytes[n..];
        }
        self.pending.extend_from_slice(bytes);
        if self.at_start && self.pending.len() >= 10 {
            self.at_start = false;
            if &self.pending[..3] == b"ID3" {
                let p = &self.pending;
                let size = (usize::from(p[6] & 0x7F) << 21)
                    | (usize::from(p[7] & 0x7F) << 14)
                    | (usize::from(p[8] & 0x7F) << 7)
                    | usize::from(p[9] & 0x7F);
                let footer = if p[5] & 0x10 != 0 { 10 } else { 0 };
                let total = 10 + size + footer;
                let n = total.min(self.pending.len());
                self.pending.drain(..n);
                self.skip_tag = total - n;
            }
        }
        let mut pos = 0;
        loop {
            let rest = &self.pending[pos..];
            if rest.len() < 4 {
                break;
            }
            let Some(h) = parse_header(rest) else {
                pos += 1;
                r.skipped += 1;
                continue;
            };
            if rest.len() < h.len {
                break;
            }
            // A frame counts only when the next one starts right after it (or the data ends
            // there): otherwise this was a false sync or a truncated frame.
            let next = &rest[h.len..];
            if next.len() >= 4 && parse_header(next).is_none() {
                pos += 1;
                r.skipped += 1;
                continue;
            }
            let frame = rest[..h.len].to_vec();
            pos += h.len;
            self.decode(h, frame, out)?;
            r.frames += 1;
        }
        self.pending.drain(..pos);
        if self.pending.len() > MAX_PENDING {
            r.skipped += self.pending.len();
            self.pending.clear();
        }
        Ok(r)
    }

    fn decode(&mut self, h: Header, frame: Vec<u8>, out: &mut Vec<i16>) -> Result<(), String> {
        if self.decoder.as_ref().is_none_or(|d| d.0 != h.sample_rate) {
            let rate = SampleRate::new(h.sample_rate).map_err(|e| format!("MP3: {e}"))?;
            let mut params = AudioCodecParameters::new();
            params
                .for_codec(CODEC_ID_MP3)
                .with_sample_rate(h.sample_rate);
            let dec = symphonia::default::get_codecs()
                .make_audio_decoder(&params, &AudioDecoderOptions::default())
                .map_err(|e| format!("MP3 decoder: {e}"))?;
            let rs = StreamResampler::new(rate, SampleRate::HZ_16000)
                .map_err(|e| format!("MP3: {e}"))?;
            self.decoder = Some((h.sample_rate, dec, rs));
        }
        let Some((_, dec, rs)) = self.decoder.as_mut() else {
            return Ok(());
        };
        let packet = Packet::new(
            0,
            (self.ts as i64).into(),
            u64::from(h.samples).into(),
            frame,
        );
        self.ts += u64::from(h.samples);
        let buf = match dec.decode(&packet) {
            Ok(b) => b,
            // A damaged frame (or one that needs the reservoir of a frame we never saw): skip it.
            Err(symphonia::core::errors::Error::DecodeError(_)) => return Ok(()),
            Err(e) => return Err(format!("MP3: {e}")),
        };
        let ch = buf.spec().channels().count().max(1);
        let mut interleaved: Vec<f32> = vec![0.0; buf.frames() * ch];
        buf.copy_to_slice_interleaved(&mut interleaved);
        self.mono.clear();
        self.mono.extend(interleaved.chunks(ch).map(|c| {
            let m = c.iter().sum::<f32>() / ch as f32;
            (m.clamp(-1.0, 1.0) * 32767.0) as i16
        }));
        rs.process(&self.mono, out);
        let _ = h.channels;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        // MPEG-1 Layer III, 128 kbps, 44.1 kHz, no padding, joint stereo: 417 bytes.
        let h = parse_header(&[0xFF, 0xFB, 0x90, 0x44]).unwrap();
        assert_eq!(
            (h.sample_rate, h.len, h.samples, h.channels),
            (44_100, 417, 1152, 2)
        );
        // MPEG-2 Layer III, 64 kbps, 24 kHz, mono: 192 bytes.
        let h = parse_header(&[0xFF, 0xF3, 0x84, 0xC4]).unwrap();
        assert_eq!((h.sample_rate, h.len, h.channels), (24_000, 192, 1));
        assert!(parse_header(&[0xFF, 0xFD, 0x90, 0x44]).is_none()); // Layer II
        assert!(parse_header(&[0xFF, 0xFB, 0xF0, 0x44]).is_none()); // bad bitrate
        assert!(parse_header(b"ID3\x04").is_none());
    }

    #[test]
    fn garbage_is_skipped_without_panicking() {
        let mut s = Mp3Stream::new();
        let mut out = Vec::new();
        let junk: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let r = s.push(&junk, &mut out).unwrap();
        assert_eq!(r.frames, 0);
        assert!(r.skipped > 4000, "{r:?}");
        assert!(out.is_empty());
    }
}
