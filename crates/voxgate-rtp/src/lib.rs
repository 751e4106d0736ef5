//! voxgate L1, sans-IO: RTP for the SIP leg.
//!
//! - [`packet`]: RTP fixed header parse/write (RFC 3550 §5.1).
//! - [`rtcp`]: sender and receiver reports (RFC 3550 §6.4) and RTT from LSR/DLSR (§6.4.1).
//! - [`stats`]: per-source receive statistics: extended sequence, loss, interarrival jitter (RFC 3550 A.1, A.3, A.8).
//! - [`jitter`]: an adaptive jitter buffer keyed by sequence number with a packet-loss signal.
//! - [`telephone_event`]: RFC 4733 DTMF events, sent and received (end packets, duplicates).
//! - [`sdp`]: SDP offer/answer for one audio stream (RFC 3264, RFC 4566).
//!
//! Nothing here does I/O or reads a clock: callers pass bytes and `now` (a [`std::time::Duration`]
//! since an origin of their choice) and get bytes, events and deadlines back.

pub mod jitter;
pub mod packet;
pub mod rtcp;
pub mod sdp;
pub mod srtp;
pub mod stats;
pub mod telephone_event;

pub use packet::{RtpError, RtpHeader, RtpPacket};
