//! L0 types: sample rates, channel counts, media time and the typed audio frame.

use std::fmt;
use std::time::Duration;

/// An audio sample rate in Hz. Only rates voxgate converts between are constructible:
/// 8 000, 16 000, 22 050, 24 000, 44 100 and 48 000 Hz.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleRate(u32);

/// Error for a sample rate voxgate does not support.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported sample rate {0} Hz (supported: 8000, 16000, 22050, 24000, 44100, 48000)")]
pub struct UnsupportedRate(pub u32);

impl SampleRate {
    /// 8 kHz: G.711 (PCMU/PCMA) and the telephone network.
    pub const HZ_8000: SampleRate = SampleRate(8_000);
    /// 16 kHz: voxgate's internal rate, G.722's sampling rate, ASR and VAD input.
    pub const HZ_16000: SampleRate = SampleRate(16_000);
    /// 22.05 kHz: Piper voices.
    pub const HZ_22050: SampleRate = SampleRate(22_050);
    /// 24 kHz: common cloud TTS output rate.
    pub const HZ_24000: SampleRate = SampleRate(24_000);
    /// 44.1 kHz: CD audio, common in WAV/MP3 files for playback.
    pub const HZ_44100: SampleRate = SampleRate(44_100);
    /// 48 kHz: Opus and WebRTC.
    pub const HZ_48000: SampleRate = SampleRate(48_000);

    /// Validates a rate in Hz.
    ///
    /// # Errors
    /// [`UnsupportedRate`] for any rate not listed on [`SampleRate`].
    pub fn new(hz: u32) -> Result<Self, UnsupportedRate> {
        match hz {
            8_000 | 16_000 | 22_050 | 24_000 | 44_100 | 48_000 => Ok(SampleRate(hz)),
            other => Err(UnsupportedRate(other)),
        }
    }

    /// The rate in Hz.
    pub const fn hz(self) -> u32 {
        self.0
    }

    /// Samples per channel in `ms` milliseconds (rounded down), e.g. 160 for 20 ms at 8 kHz.
    pub const fn samples_in_ms(self, ms: u32) -> usize {
        (self.0 as u64 * ms as u64 / 1000) as usize
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.0)
    }
}

/// Number of interleaved channels. voxgate's call pipeline is mono; stereo appears only in files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channels {
    Mono,
    Stereo,
}

impl Channels {
    /// Channel count (1 or 2).
    pub const fn count(self) -> usize {
        match self {
            Channels::Mono => 1,
            Channels::Stereo => 2,
        }
    }
}

/// A point in media time: `ticks` of a clock running at `rate`. Used for positions inside a call
/// (for example "speech started 1 840 ms after the call began"), never for wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaTime {
    pub ticks: u64,
    pub rate: SampleRate,
}

impl MediaTime {
    /// Zero at the given clock rate.
    pub const fn zero(rate: SampleRate) -> Self {
        MediaTime { ticks: 0, rate }
    }

    /// Milliseconds since zero, rounded down.
    pub const fn as_millis(self) -> u64 {
        self.ticks * 1000 / self.rate.0 as u64
    }

    /// Advances by `samples` ticks.
    pub fn advance(&mut self, samples: usize) {
        self.ticks += samples as u64;
    }
}

/// A block of signed 16-bit linear PCM audio with its format in its type.
///
/// `samples` is interleaved when `channels` is stereo. A call frame is 20 ms mono: 320 samples at
/// 16 kHz, 160 at 8 kHz.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioFrame {
    pub rate: SampleRate,
    pub channels: Channels,
    pub samples: Vec<i16>,
}

impl AudioFrame {
    /// Mono frame at `rate`.
    pub fn mono(rate: SampleRate, samples: Vec<i16>) -> Self {
        AudioFrame {
            rate,
            channels: Channels::Mono,
            samples,
        }
    }

    /// `ms` milliseconds of mono silence at `rate`.
    pub fn silence(rate: SampleRate, ms: u32) -> Self {
        Self::mono(rate, vec![0; rate.samples_in_ms(ms)])
    }

    /// Samples per channel.
    pub fn len_per_channel(&self) -> usize {
        self.samples.len() / self.channels.count()
    }

    /// Duration of the frame.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.len_per_channel() as u64 * 1_000_000 / self.rate.hz() as u64)
    }

    /// Duration in whole milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.len_per_channel() as u64 * 1000 / self.rate.hz() as u64
    }

    /// Down-mixes stereo to mono by averaging; mono frames are returned unchanged.
    pub fn into_mono(self) -> AudioFrame {
        match self.channels {
            Channels::Mono => self,
            Channels::Stereo => {
                let samples = self
                    .samples
                    .chunks_exact(2)
                    .map(|c| ((c[0] as i32 + c[1] as i32) / 2) as i16)
                    .collect();
                AudioFrame::mono(self.rate, samples)
            }
        }
    }

    /// Root-mean-square level in dBFS (−inf for digital silence is reported as −100).
    pub fn level_dbfs(&self) -> f32 {
        if self.samples.is_empty() {
            return -100.0;
        }
        let sum = self
            .samples
            .iter()
            .map(|&s| (s as i64) * (s as i64))
            .sum::<i64>() as f64;
        let rms = (sum / self.samples.len() as f64).sqrt() / 32768.0;
        if rms <= 1e-5 {
            -100.0
        } else {
            (20.0 * rms.log10()) as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_validate_and_count_samples() {
        assert_eq!(SampleRate::new(8000).unwrap().samples_in_ms(20), 160);
        assert_eq!(SampleRate::HZ_22050.samples_in_ms(20), 441);
        assert_eq!(SampleRate::new(11025), Err(UnsupportedRate(11025)));
    }

    #[test]
    fn frame_duration_and_downmix() {
        let f = AudioFrame {
            rate: SampleRate::HZ_16000,
            channels: Channels::Stereo,
            samples: [100i16, 300].repeat(320),
        };
        assert_eq!(f.duration_ms(), 20);
        let m = f.into_mono();
        assert_eq!(m.samples.len(), 320);
        assert_eq!(m.samples[0], 200);
        let mut t = MediaTime::zero(SampleRate::HZ_8000);
        t.advance(160 * 3);
        assert_eq!(t.as_millis(), 60);
    }
}
