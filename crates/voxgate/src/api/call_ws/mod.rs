//! `GET /call` (seed 002 "WebSocket Call Handler"): one call per WebSocket, JSON commands and
//! events as text messages, caller and bot audio as binary messages in the invite's codec.

pub mod adapter;
pub mod handler;
pub mod wire;
