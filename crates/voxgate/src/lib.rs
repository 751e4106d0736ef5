//! voxgate server: the adapters (L4: APIs, SIP, store, speech wiring) around the call core
//! (`voxgate-call`, L3), and the server itself (L5). See `DESIGN.md` for the layers and the README
//! for the protocols.

pub mod agent;
pub mod api;
pub mod audio_file;
pub mod auth;
pub mod bots;
pub mod cli;
pub mod config;
pub mod engines;
pub mod limits;
pub mod llm;
pub mod mp3_stream;
pub mod server;
pub mod sip;
pub mod store;
