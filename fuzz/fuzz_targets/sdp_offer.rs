//! Any text as a remote SDP offer and as an answer to our offer (`voxgate_rtp::sdp`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxgate_rtp::sdp::{self, Direction, LocalMedia, PayloadFormat};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let local = LocalMedia {
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        port: 40000,
        formats: vec![
            PayloadFormat::new(0, "PCMU", 8000, 1, None),
            PayloadFormat::new(9, "G722", 8000, 1, None),
            PayloadFormat::new(111, "opus", 48000, 2, None),
        ],
        telephone_events: vec![(8000, 101), (48000, 110)],
        ptime_ms: 20,
        direction: Direction::SendRecv,
        session_id: 1,
        session_version: 1,
    };
    if let Ok((answer, neg)) = sdp::answer(text, &local) {
        // Our answer must itself be a usable description with the chosen codec.
        let back = sdp::parse_audio(&answer).expect("our answer parses");
        assert!(back.formats.iter().any(|f| f.pt == neg.codec.pt));
        assert!((10..=60).contains(&neg.ptime_ms));
    }
    let _ = sdp::read_answer(text, &local);
});
