//! voxgate server: the call core (L3), the APIs, store and speech wiring (L4) and the server
//! itself (L5). See `DESIGN.md` for the layers and the README for the protocol.

pub mod api;
pub mod audio_file;
pub mod call;
pub mod cli;
pub mod config;
pub mod engines;
pub mod server;
pub mod sip;
pub mod store;
