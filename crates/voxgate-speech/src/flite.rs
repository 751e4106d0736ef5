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
    /// A directory only this process can use (mode 0700, unique name), removed on drop: flite
    /// writes its WAVs there, so no other user can read them or plant a link in their place.
    tmp: tempfile::TempDir,
    seq: AtomicU64,
}

impl Flite {
    /// Checks that `binary` runs; temporary WAVs go to a private directory made inside `tmp`.
    ///
    /// # Errors
    /// [`SpeechError::Unavailable`] when flite cannot run or the directory cannot be made.
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
        let tmp = tempfile::Builder::new()
            .prefix("voxgate-flite-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(tmp)
            .map_err(|e| {
                SpeechError::Unavailable(format!(
                    "flite: temporary directory in {}: {e}",
                    tmp.display()
                ))
            })?;
        Ok(Flite {
            binary: binary.to_path_buf(),
            tmp,
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
        let path = self
            .tmp
            .path()
            .join(format!("{}.wav", self.seq.fetch_add(1, Ordering::Relaxed)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// flite's WAVs live in a directory only this process may use, and do not stay there.
    #[test]
    fn temporary_files_are_private_and_removed() {
        let base = std::env::temp_dir();
        let f = Flite::new(Path::new("flite"), &base)
            .expect("flite is missing: run `make test` (scripts/install-deps.sh installs it)");
        let mode = std::fs::metadata(f.tmp.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        assert!(f.tmp.path().starts_with(&base));
        let a = f.synthesize("Hello there.", None).unwrap();
        assert!(a.samples.len() > 1600);
        assert_eq!(std::fs::read_dir(f.tmp.path()).unwrap().count(), 0);
        let dir = f.tmp.path().to_path_buf();
        drop(f);
        assert!(!dir.exists());
    }
}
