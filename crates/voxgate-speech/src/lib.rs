//! Offline speech engines for voxgate (layer L4 "speech" of `DESIGN.md`), all loaded once per
//! server and shared by every call:
//!
//! - [`moonshine::Moonshine`]: ASR with Moonshine base (ONNX, 16 kHz input).
//! - [`silero::Silero`]: Silero VAD v6 (ONNX, 512-sample chunks at 16 kHz).
//! - [`piper::Piper`]: Piper TTS (ONNX, 22 050 Hz output), phonemes from an `espeak-ng` process.
//! - [`flite::Flite`]: flite TTS (16 kHz output), run as a `flite` process.
//!
//! Models come from `scripts/fetch-models.sh` (see the repository's SPEECH notes).

pub mod flite;
pub mod moonshine;
pub mod piper;
pub mod runtime;
pub mod silero;

pub(crate) mod pool;
