//! One UDP datagram as the SIP socket receives it: `voxgate::sip::guard::inspect` first (its
//! stateless answers must themselves be SIP that parses), then, for what it passes on, the SIP
//! adapter's parsing entry (`voxgate::sip::inspect_datagram`): rsipstack's parser, what routing
//! reads of an INVITE and the status its SDP would get. The same bytes as a TCP stream: the
//! framer (`voxgate::sip::stream::frame`) and the stream's fallback answer (`guard::refuse`);
//! and for a parsed request, the session-timer negotiation and the registrar (digest check and
//! REGISTER bindings).
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxgate::sip::guard::{inspect, refuse, Verdict};
use voxgate::sip::stream::{frame, Frame};

static REGISTRAR: std::sync::OnceLock<voxgate::sip::registrar::Registrar> =
    std::sync::OnceLock::new();

fn parses_as_response(response: &[u8]) -> bool {
    matches!(
        rsipstack::sip::SipMessage::try_from(response),
        Ok(rsipstack::sip::SipMessage::Response(_))
    )
}

fuzz_target!(|data: &[u8]| {
    let source = "192.0.2.1:5060".parse().unwrap();
    match inspect(data, source) {
        Verdict::Pass(bytes) => {
            // Session timers and digest credentials read what rsipstack parsed.
            if let Ok(rsipstack::sip::SipMessage::Request(req)) =
                rsipstack::sip::SipMessage::try_from(&bytes[..])
            {
                let _ = voxgate::sip::timer::uas(&req, 90);
                let reg = REGISTRAR.get_or_init(|| {
                    voxgate::sip::registrar::Registrar::new(
                        "voxgate",
                        &["MD5".to_string(), "SHA-256".to_string()],
                        [("alice".to_string(), "s3cret".to_string())],
                    )
                });
                if let voxgate::sip::registrar::Auth::User(u) = reg.authenticate(&req) {
                    let _ = reg.register(&req, &u);
                }
                let _ = reg.register(&req, "alice");
            }
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
    if let Some(r) = refuse(data, source, 400, "Bad Request") {
        assert!(parses_as_response(&r), "{}", String::from_utf8_lossy(&r));
    }
    // Bounded: every frame consumes at least one octet.
    let mut rest = data;
    for _ in 0..64 {
        match frame(rest) {
            Frame::Message(n) | Frame::Ping(n) => {
                assert!(n > 0 && n <= rest.len(), "frame of {n} in {}", rest.len());
                rest = &rest[n..];
            }
            Frame::Partial | Frame::Broken(..) => break,
        }
    }
});
