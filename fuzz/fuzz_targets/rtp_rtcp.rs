//! Any datagram on an RTP port: RTP, RTCP compound packets and RFC 4733 payloads, then the
//! receive statistics and the jitter buffer fed with whatever parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use voxgate_rtp::jitter::{JitterBuffer, JitterConfig};
use voxgate_rtp::packet::{is_rtcp, RtpPacket};
use voxgate_rtp::rtcp;
use voxgate_rtp::stats::ReceiveStats;
use voxgate_rtp::telephone_event::EventReceiver;

fuzz_target!(|data: &[u8]| {
    if is_rtcp(data) {
        if let Ok(c) = rtcp::parse(data) {
            for b in &c.reports {
                let _ = rtcp::round_trip(b, u64::MAX);
            }
        }
        return;
    }
    // Treat the input as a sequence of datagrams split on a 0xff 0x00 marker, so the fuzzer can
    // exercise reordering, duplicates and wraps in the stateful parts.
    let mut stats = ReceiveStats::new(8000);
    let mut jb: JitterBuffer<usize> = JitterBuffer::new(JitterConfig::default());
    let mut events = EventReceiver::default();
    let mut now = Duration::ZERO;
    for (i, dgram) in data.split(|&b| b == 0xff).enumerate().take(256) {
        now += Duration::from_millis(7);
        if let Ok(p) = RtpPacket::parse(dgram) {
            let ext = stats.on_packet(p.header.sequence, p.header.timestamp, now);
            let _ = events.on_packet(p.header.timestamp, p.payload);
            jb.push(now, ext, p.header.timestamp, i);
        }
        while jb.pop(now).is_some() {}
    }
    assert!(stats.received() <= stats.expected() + stats.duplicates() + 256);
});
