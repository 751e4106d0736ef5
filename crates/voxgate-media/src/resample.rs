//! Sample-rate conversion with `rubato`'s synchronous FFT resampler (exact ratios, ~65 dB SNR).
//!
//! [`StreamResampler`] converts a stream chunk by chunk (one 20 ms frame in, about one frame out,
//! with the resampler's fixed delay); [`resample_clip`] converts a whole clip in memory and trims
//! the delay, for TTS output and files.

use crate::types::{AudioFrame, SampleRate};
use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

/// Error building or running a resampler (an invariant failure in practice: rates are validated).
#[derive(Debug, thiserror::Error)]
#[error("resampler: {0}")]
pub struct ResampleError(String);

/// Streaming mono resampler from one [`SampleRate`] to another. Input may arrive in chunks of any
/// size; output is produced in whatever sizes the FFT blocks allow (callers re-frame to 20 ms).
pub struct StreamResampler {
    from: SampleRate,
    to: SampleRate,
    inner: Option<Fft<f32>>,
    pending: Vec<f32>,
    out_buf: Vec<f32>,
}

impl StreamResampler {
    /// A resampler whose input chunk is 20 ms of `from`. `from == to` is a pass-through.
    ///
    /// # Errors
    /// [`ResampleError`] if rubato rejects the pair (never for [`SampleRate`] values).
    pub fn new(from: SampleRate, to: SampleRate) -> Result<Self, ResampleError> {
        let inner = if from == to {
            None
        } else {
            let chunk = from.samples_in_ms(20);
            Some(
                Fft::<f32>::new(
                    from.hz() as usize,
                    to.hz() as usize,
                    chunk,
                    1,
                    FixedSync::Input,
                )
                .map_err(|e| ResampleError(e.to_string()))?,
            )
        };
        let out_max = inner.as_ref().map(|r| r.output_frames_max()).unwrap_or(0);
        Ok(StreamResampler {
            from,
            to,
            inner,
            pending: Vec::new(),
            out_buf: vec![0.0; out_max],
        })
    }

    /// Source rate.
    pub fn from_rate(&self) -> SampleRate {
        self.from
    }

    /// Target rate.
    pub fn to_rate(&self) -> SampleRate {
        self.to
    }

    /// Feeds samples at the source rate; appends converted samples at the target rate to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let Some(r) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return;
        };
        self.pending
            .extend(input.iter().map(|&s| s as f32 / 32768.0));
        let mut consumed = 0;
        loop {
            let need = r.input_frames_next();
            if self.pending.len() - consumed < need {
                break;
            }
            let slice = &self.pending[consumed..consumed + need];
            let inp = InterleavedSlice::new(slice, 1, need).expect("sized input");
            let out_frames = r.output_frames_next();
            let mut outp = InterleavedSlice::new_mut(&mut self.out_buf[..], 1, out_frames)
                .expect("sized output");
            match r.process_into_buffer(&inp, &mut outp, None) {
                Ok((_, produced)) => {
                    out.extend(self.out_buf[..produced].iter().map(|&x| to_i16(x)))
                }
                Err(_) => break,
            }
            consumed += need;
        }
        self.pending.drain(..consumed);
    }

    /// Converts one frame (any size) and returns what the resampler produced so far.
    pub fn process_frame(&mut self, frame: &AudioFrame) -> AudioFrame {
        let mut out = Vec::with_capacity(self.to.samples_in_ms(20));
        self.process(&frame.samples, &mut out);
        AudioFrame::mono(self.to, out)
    }
}

fn to_i16(x: f32) -> i16 {
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Converts a whole mono clip from `from` to `to`, trimming the resampler delay so that the output
/// is time-aligned with the input and has `len × to / from` samples (rounded up).
///
/// # Errors
/// [`ResampleError`] if rubato fails (an invariant failure for [`SampleRate`] values).
pub fn resample_clip(
    samples: &[i16],
    from: SampleRate,
    to: SampleRate,
) -> Result<Vec<i16>, ResampleError> {
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let input: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
    let mut r = Fft::<f32>::new(
        from.hz() as usize,
        to.hz() as usize,
        1024,
        1,
        FixedSync::Input,
    )
    .map_err(|e| ResampleError(e.to_string()))?;
    let needed = r.process_all_needed_output_len(input.len());
    let mut out = vec![0.0f32; needed];
    let inp = InterleavedSlice::new(&input[..], 1, input.len())
        .map_err(|e| ResampleError(e.to_string()))?;
    let mut outp = InterleavedSlice::new_mut(&mut out[..], 1, needed)
        .map_err(|e| ResampleError(e.to_string()))?;
    let (_, produced) = r
        .process_all_into_buffer(&inp, &mut outp, input.len(), None)
        .map_err(|e| ResampleError(e.to_string()))?;
    Ok(out[..produced].iter().map(|&x| to_i16(x)).collect())
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

    /// Dominant frequency by zero crossings.
    fn freq(s: &[i16], rate: SampleRate) -> f32 {
        let zc = s.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        zc as f32 / 2.0 / (s.len() as f32 / rate.hz() as f32)
    }

    #[test]
    fn clip_conversions_keep_length_and_pitch() {
        for (from, to) in [
            (SampleRate::HZ_8000, SampleRate::HZ_16000),
            (SampleRate::HZ_16000, SampleRate::HZ_8000),
            (SampleRate::HZ_22050, SampleRate::HZ_16000),
            (SampleRate::HZ_24000, SampleRate::HZ_16000),
            (SampleRate::HZ_48000, SampleRate::HZ_16000),
            (SampleRate::HZ_16000, SampleRate::HZ_48000),
        ] {
            let src = tone(from, 440.0, from.hz() as usize);
            let out = resample_clip(&src, from, to).unwrap();
            let want = to.hz() as usize;
            assert!(
                out.len().abs_diff(want) <= want / 100,
                "{from}->{to}: {} samples",
                out.len()
            );
            let f = freq(&out[want / 10..want * 9 / 10], to);
            assert!((f - 440.0).abs() < 5.0, "{from}->{to}: {f} Hz");
        }
    }

    #[test]
    fn streaming_8k_to_16k_doubles_the_samples() {
        let mut r = StreamResampler::new(SampleRate::HZ_8000, SampleRate::HZ_16000).unwrap();
        let src = tone(SampleRate::HZ_8000, 440.0, 8000);
        let mut out = Vec::new();
        for chunk in src.chunks(160) {
            r.process(chunk, &mut out);
        }
        assert_eq!(out.len(), 16000);
        let f = freq(&out[4000..], SampleRate::HZ_16000);
        assert!((f - 440.0).abs() < 5.0, "{f}");
    }
}
