//! One UDP datagram as the SIP socket receives it: `voxgate::sip::guard::inspect` first (its
//! stateless answers must themselves be SIP that parses), then, for what it passes on, the SIP
//! adapter's parsing entry (`voxgate::sip::inspect_datagram`): rsipstack's parser, what routing
//! reads of an INVITE and the status its SDP would get.
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxgate::sip::guard::{inspect, Verdict};

fuzz_target!(|data: &[u8]| {
    let source = "192.0.2.1:5060".parse().unwrap();
    match inspect(data, source) {
        Verdict::Pass(bytes) => {
            if let Ok(Some((summary, status))) = voxgate::sip::inspect_datagram(&bytes) {
                assert!(
                    matches!(status, 200 | 400 | 488),
                    "{status} for {summary:?}"
                );
            }
        }
        Verdict::Answer { response, code, .. } => {
            let parsed = rsipstack::sip::SipMessage::try_from(&response[..]);
            assert!(
                matches!(parsed, Ok(rsipstack::sip::SipMessage::Response(_))),
                "our {code} answer does not parse: {:?}\n{}",
                parsed.err(),
                String::from_utf8_lossy(&response)
            );
        }
        Verdict::Drop(_) => {}
    }
});
