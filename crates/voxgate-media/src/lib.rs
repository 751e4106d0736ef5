//! voxgate media core (layers L0–L2 of `DESIGN.md`).
//!
//! Everything here is sans-IO and synchronous: no sockets, no clock, no tokio. Callers feed audio
//! frames and media time in, and take frames and events out. Internally a call runs at 16 kHz mono
//! with 20 ms frames (320 samples); codecs and resamplers convert at the edges.
//!
//! - [`types`]: [`SampleRate`], [`Channels`], [`MediaTime`], [`AudioFrame`].
//! - [`codec`]: L16 PCM, PCMU, PCMA (ITU-T G.711) and G.722 encode/decode.
//! - [`resample`]: sample-rate conversion between 8, 16, 22.05, 24 and 48 kHz.
//! - [`framer`]: cutting a byte or sample stream into fixed 20 ms frames.
//! - [`edge`]: a leg's conversion between codec bytes and the core's 16 kHz 20 ms frames.
//! - [`dtmf`]: in-band DTMF detection (Goertzel).
//! - [`vad`]: voice-activity detection trait, the earshot engine and the speech/silence segmenter.
//! - [`player`]: the flushable outbound playout queue (barge-in, interrupt, pause/resume).
//! - [`pipeline`]: the core's inbound chain on 16 kHz frames (DTMF → VAD → endpointing → ASR tap).
//! - [`speech`]: the ASR and TTS engine traits that offline and cloud engines implement.

pub mod codec;
pub mod dtmf;
pub mod edge;
pub mod framer;
pub mod pipeline;
pub mod player;
pub mod resample;
pub mod speech;
pub mod types;
pub mod vad;

pub use types::{AudioFrame, Channels, MediaTime, SampleRate};
