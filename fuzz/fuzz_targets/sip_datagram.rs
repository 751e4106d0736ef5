//! One UDP datagram into the SIP adapter's parsing entry (`voxgate::sip::inspect_datagram`):
//! rsipstack's parser, then what routing reads of an INVITE and the status its SDP would get.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((summary, status))) = voxgate::sip::inspect_datagram(data) {
        assert!(
            matches!(status, 200 | 400 | 488),
            "{status} for {summary:?}"
        );
    }
});
