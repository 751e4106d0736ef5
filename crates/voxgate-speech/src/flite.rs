//! flite TTS (CMU, BSD-style licence): the small, fast alternative to Piper. Runs the Debian
//! `flite` binary as a process per sentence and reads its 16 kHz mono WAV output.
//! Voices: `slt` (default), `kal`, `kal16`, `awb`, `rms`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use voxgate_media::speech::{SpeechError, Synthesizer};
use voxgate_media::{AudioFrame, SampleRate};

const VOICES: [&str; 5] = ["slt", "kal", "kal16", "awb", "rms"];

/// The flite synthesizer.
pub struct Flite {
    binary: PathBuf,
    tmp: PathBuf,
    seq: AtomicU64,
}

impl Flite {
    /// Checks that `binary` runs; temporary WAVs go to `tmp`.
    ///
    /// # Errors
    /// [`SpeechError::Unavailable`] when flite cannot run.
    pub fn new(binary: &Path, tmp: &Path) -> Result<Self, SpeechError> {
        let ok = Command::new(binary)
            .arg("-lv")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Err(SpeechError::Unavailable(format!(
                "{} cannot run (install flite)",
                binary.display()
            )));
        }
        Ok(Flite {
            binary: binary.to_path_buf(),
            tmp: tmp.to_path_buf(),
            seq: AtomicU64::new(0),
        })
    }
}

impl Synthesizer for Flite {
    fn name(&self) -> &str {
        "flite"
    }

    fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<AudioFrame, SpeechError> {
        let voice = voice
            .filter(|v| !v.is_empty() && *v != "default")
            .unwrap_or("slt");
        if !VOICES.contains(&voice) {
            return Err(SpeechError::BadInput(format!(
                "unknown flite voice `{voice}` (available: {})",
                VOICES.join(", ")
            )));
        }
        let path = self.tmp.join(format!(
            "flite-{}-{}.wav",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let out = Command::new(&self.binary)
            .args(["-voice", voice, "-o"])
            .arg(&path)
            .args(["-t", text])
            .output()
            .map_err(|e| SpeechError::Engine(format!("flite: {e}")))?;
        let result = if out.status.success() {
            read_wav(&path)
        } else {
            Err(SpeechError::Engine(format!(
                "flite failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        };
        let _ = std::fs::remove_file(&path);
        result
    }
}

fn read_wav(path: &Path) -> Result<AudioFrame, SpeechError> {
    let r = hound::WavReader::open(path)
        .map_err(|e| SpeechError::Engine(format!("flite output: {e}")))?;
    let spec = r.spec();
    let rate = SampleRate::new(spec.sample_rate).map_err(|e| SpeechError::Engine(e.to_string()))?;
    let samples: Vec<i16> = r
        .into_samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(|e| SpeechError::Engine(e.to_string()))?;
    let frame = AudioFrame {
        rate,
        channels: if spec.channels == 2 {
            voxgate_media::Channels::Stereo
        } else {
            voxgate_media::Channels::Mono
        },
        samples,
    };
    Ok(frame.into_mono())
}
