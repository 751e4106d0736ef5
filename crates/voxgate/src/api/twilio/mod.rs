//! Twilio (seed 004): TwiML for `POST /voice` and the Media Streams WebSocket
//! `/stream/{bot_id}`. `wire` is the only place Twilio's JSON lives.

pub mod stream;
pub mod twiml;
pub mod wire;
