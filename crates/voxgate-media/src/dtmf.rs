//! In-band DTMF detection (ITU-T Q.23/Q.24 tones) with Goertzel filters.
//!
//! Input: 20 ms mono frames at 16 kHz (320 samples; other rates work, the filters are computed for
//! the frame's rate). A digit is reported once, when it has been present in two consecutive frames
//! (≥ 40 ms, the Q.24 minimum), and not again until a frame without it.
//!
//! Checks per frame: both tones dominate the frame's energy (≥ 65 % of it together), the frame is
//! above −40 dBFS, each tone exceeds the others of its group by 6 dB, and the twist (column over
//! row power) lies within −8…+4 dB.

use crate::types::AudioFrame;

const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const DIGITS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Streaming DTMF detector; keep one per caller track.
#[derive(Default)]
pub struct DtmfDetector {
    candidate: Option<char>,
    reported: Option<char>,
}

fn goertzel(samples: &[i16], freq: f32, rate: f32) -> f32 {
    let coeff = 2.0 * (2.0 * std::f32::consts::PI * freq / rate).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s0 = x as f32 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

impl DtmfDetector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The digit a single frame carries, if any (no duration logic).
    pub fn classify(frame: &AudioFrame) -> Option<char> {
        let s = &frame.samples;
        if s.len() < 100 || frame.level_dbfs() < -40.0 {
            return None;
        }
        let rate = frame.rate.hz() as f32;
        let n = s.len() as f32;
        let energy: f32 = s.iter().map(|&x| (x as f32) * (x as f32)).sum();
        let rows: [f32; 4] = ROWS.map(|f| goertzel(s, f, rate));
        let cols: [f32; 4] = COLS.map(|f| goertzel(s, f, rate));
        let best = |v: &[f32]| {
            let (i, &p) = v
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .expect("4 filters");
            let second = v
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, &q)| q)
                .fold(0.0, f32::max);
            (i, p, second)
        };
        let (ri, rp, r2) = best(&rows);
        let (ci, cp, c2) = best(&cols);
        // A pure tone of amplitude A gives Goertzel power (A·N/2)² and energy A²·N/2, so
        // power / (energy·N/2) is the share of the frame's energy in that tone.
        let share = (rp + cp) / (energy * n / 2.0);
        if share < 0.65 || rp < 4.0 * r2 || cp < 4.0 * c2 {
            return None;
        }
        let twist_db = 10.0 * (cp / rp).log10();
        if !(-8.0..=4.0).contains(&twist_db) {
            return None;
        }
        Some(DIGITS[ri][ci])
    }

    /// Feeds one frame; returns a digit when a new key press is confirmed.
    pub fn process(&mut self, frame: &AudioFrame) -> Option<char> {
        let d = Self::classify(frame);
        let mut out = None;
        match d {
            Some(c) if self.candidate == Some(c) && self.reported != Some(c) => {
                self.reported = Some(c);
                out = Some(c);
            }
            None => self.reported = None,
            _ => {}
        }
        self.candidate = d;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SampleRate;

    /// `ms` of the digit's two tones at −9 dBFS each, then `gap` ms of silence, at 16 kHz.
    pub fn digit_audio(d: char, ms: u32, gap: u32) -> Vec<i16> {
        let (r, c) = (0..16)
            .map(|i| (i / 4, i % 4))
            .find(|&(r, c)| DIGITS[r][c] == d)
            .unwrap();
        let n = SampleRate::HZ_16000.samples_in_ms(ms);
        let mut v: Vec<i16> = (0..n)
            .map(|i| {
                let t = i as f32 / 16000.0;
                (8000.0
                    * ((2.0 * std::f32::consts::PI * ROWS[r] * t).sin()
                        + (2.0 * std::f32::consts::PI * COLS[c] * t).sin())) as i16
            })
            .collect();
        v.extend(std::iter::repeat_n(
            0,
            SampleRate::HZ_16000.samples_in_ms(gap),
        ));
        v
    }

    #[test]
    fn every_digit_once() {
        let mut det = DtmfDetector::new();
        let keys = "0123456789*#ABCD";
        let mut audio = Vec::new();
        for k in keys.chars() {
            audio.extend(digit_audio(k, 100, 60));
        }
        let got: String = audio
            .chunks(320)
            .filter_map(|c| det.process(&AudioFrame::mono(SampleRate::HZ_16000, c.to_vec())))
            .collect();
        assert_eq!(got, keys);
    }

    #[test]
    fn single_tone_and_noise_are_not_digits() {
        let tone: Vec<i16> = (0..3200)
            .map(|i| {
                (8000.0 * (2.0 * std::f32::consts::PI * 697.0 * i as f32 / 16000.0).sin()) as i16
            })
            .collect();
        let mut x: u32 = 1;
        let noise: Vec<i16> = (0..3200)
            .map(|_| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                (x >> 20) as i16 - 2048
            })
            .collect();
        let mut det = DtmfDetector::new();
        for c in tone.chunks(320).chain(noise.chunks(320)) {
            assert_eq!(
                det.process(&AudioFrame::mono(SampleRate::HZ_16000, c.to_vec())),
                None
            );
        }
    }
}
