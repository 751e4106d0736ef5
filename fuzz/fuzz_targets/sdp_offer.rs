//! Any text as a remote SDP offer and as an answer to our offer (`voxgate_rtp::sdp`), with SRTP
//! (SDES) optional and required; any bytes as an SRTP and an SRTCP packet
//! (`voxgate_rtp::srtp`), as the network may send them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxgate_rtp::sdp::{self, Direction, LocalMedia, PayloadFormat, SrtpPolicy};
use voxgate_rtp::srtp::{self, CryptoSuite, SdesKey};

fuzz_target!(|data: &[u8]| {
    let key = SdesKey {
        suite: CryptoSuite::AesCm128HmacSha1_80,
        key: [7; 16],
        salt: [9; 14],
    };
    // Untrusted packets on a keyed session: refused or read, never a panic.
    let (_, mut rx) = srtp::contexts(&key, &key).expect("keys build");
    let _ = rx.unprotect_rtp(data);
    let _ = rx.unprotect_rtcp(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = SdesKey::parse_attribute(text);
    for policy in [SrtpPolicy::Optional, SrtpPolicy::Required] {
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
            srtp_policy: policy,
            srtp: Some(key.clone()),
        };
        if let Ok((answer, neg)) = sdp::answer(text, &local) {
            // Our answer must itself be a usable description with the chosen codec, and carry
            // our key when SRTP was negotiated.
            let back = sdp::parse_audio(&answer).expect("our answer parses");
            assert!(back.formats.iter().any(|f| f.pt == neg.codec.pt));
            assert!((10..=60).contains(&neg.ptime_ms));
            if let Some(k) = &neg.srtp {
                assert_eq!(back.crypto.len(), 1);
                let (_, ours) = SdesKey::parse_attribute(&back.crypto[0]).expect("our a=crypto");
                assert_eq!(&ours, &k.local);
                srtp::contexts(&k.local, &k.remote).expect("negotiated keys build");
            }
        }
        let _ = sdp::read_answer(text, &local);
    }
});
