//! One UDP datagram as the SIP socket receives it: `voxgate::sip::guard::inspect` first (its
//! stateless answers must themselves be SIP that parses), then, for what it passes on, the SIP
//! adapter's parsing entry (`voxgate::sip::inspect_datagram`): rsipstack's parser, what routing
//! reads of an INVITE and the status its SDP would get. The same bytes as a TCP stream: the
//! framer (`voxgate::sip::stream::frame`) and the stream's fallback answer (`guard::refuse`);
//! and for a parsed request, the session-timer negotiation and the registrar (digest check and
//! REGISTER bindings). The same bytes as text: an `Authorization` checked against a stored HA1,
//! a `Replaces` value and a Refer-To URI's headers.

#![no_main]
use libfuzzer_sys::fuzz_target;
use voxgate::sip::guard::{inspect, refuse, Verdict};
use voxgate::sip::stream::{frame, Frame};

static REGISTRAR: std::sync::OnceLock<voxgate::sip::registrar::Registrar> =
    std::sync::OnceLock::new();

/// Runs a future that never waits (the registrar without a store).
fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the registrar waited without a store"),
    }
}

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
                        None,
                    )
                });
                if let voxgate::sip::registrar::Auth::User(u, _) = now(reg.authenticate(&req)) {
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
    if let Ok(text) = std::str::from_utf8(data) {
        let ha1 = "0123456789abcdef0123456789abcdef";
        for alg in ["MD5", "SHA-256"] {
            let _ = voxgate::sip::registrar::verify_with_ha1(
                text,
                ha1,
                alg,
                &rsipstack::sip::Method::Register,
            );
        }
        let _ = voxgate::sip::parse_replaces(text);
        if let Some(r) = voxgate::sip::call::uri_header_replaces(text) {
            assert!(r.len() <= text.len(), "unescaping never grows");
        }
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
