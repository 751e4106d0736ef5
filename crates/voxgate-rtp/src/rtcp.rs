//! RTCP (RFC 3550 §6.4): sender reports (SR, 200), receiver reports (RR, 201), SDES CNAME (202) and
//! BYE (203) in compound packets, and the round-trip time from a report block (§6.4.1):
//! `RTT = A − LSR − DLSR` in NTP short format (1/65536 s).

use std::time::Duration;

/// Why a datagram is not a usable RTCP compound packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP packet too short")]
    TooShort,
    #[error("RTCP version is not 2")]
    BadVersion,
    #[error("RTCP length field exceeds the datagram")]
    BadLength,
}

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp for a time since the Unix epoch.
pub fn ntp_from_unix(since_epoch: Duration) -> u64 {
    let secs = since_epoch.as_secs() + NTP_UNIX_OFFSET;
    let frac = ((since_epoch.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp (the LSR/DLSR unit: 1/65536 s).
pub fn ntp_short(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// One reception report block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, /256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire; clamped at 0 here).
    pub cumulative_lost: u32,
    pub highest_seq: u32,
    /// Interarrival jitter, RTP clock units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received from `ssrc` (0 if none).
    pub last_sr: u32,
    /// Delay since that SR, 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// Sender information of an SR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packets: u32,
    pub octets: u32,
}

/// What one compound packet carried.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Compound {
    /// SSRC of the reporter.
    pub ssrc: Option<u32>,
    pub sender_info: Option<SenderInfo>,
    pub reports: Vec<ReportBlock>,
    pub bye: bool,
}

/// Parses a compound RTCP packet; unknown packet types are skipped.
pub fn parse(buf: &[u8]) -> Result<Compound, RtcpError> {
    let mut out = Compound::default();
    let mut rest = buf;
    if rest.len() < 4 {
        return Err(RtcpError::TooShort);
    }
    while rest.len() >= 4 {
        if rest[0] >> 6 != 2 {
            return Err(RtcpError::BadVersion);
        }
        let count = (rest[0] & 0x1f) as usize;
        let pt = rest[1];
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
        if len > rest.len() {
            return Err(RtcpError::BadLength);
        }
        let body = &rest[4..len];
        match pt {
            200 | 201 => {
                let fixed = if pt == 200 { 24 } else { 4 };
                if body.len() < fixed {
                    return Err(RtcpError::TooShort);
                }
                out.ssrc = Some(be32(&body[0..4]));
                if pt == 200 {
                    out.sender_info = Some(SenderInfo {
                        ntp: ((be32(&body[4..8]) as u64) << 32) | be32(&body[8..12]) as u64,
                        rtp_timestamp: be32(&body[12..16]),
                        packets: be32(&body[16..20]),
                        octets: be32(&body[20..24]),
                    });
                }
                for b in body[fixed..].chunks_exact(24).take(count) {
                    out.reports.push(ReportBlock {
                        ssrc: be32(&b[0..4]),
                        fraction_lost: b[4],
                        cumulative_lost: (u32::from_be_bytes([0, b[5], b[6], b[7]]) & 0x7f_ffff)
                            * (b[5] >> 7 == 0) as u32,
                        highest_seq: be32(&b[8..12]),
                        jitter: be32(&b[12..16]),
                        last_sr: be32(&b[16..20]),
                        delay_since_last_sr: be32(&b[20..24]),
                    });
                }
            }
            203 => out.bye = true,
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(out)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Builds a compound packet: an SR (when `sender` is given) or an RR, then SDES with `cname`.
pub fn build(
    ssrc: u32,
    sender: Option<SenderInfo>,
    reports: &[ReportBlock],
    cname: &str,
    out: &mut Vec<u8>,
) {
    let reports = &reports[..reports.len().min(31)];
    let pt = if sender.is_some() { 200 } else { 201 };
    let words = 1 + if sender.is_some() { 5 } else { 0 } + 6 * reports.len();
    out.push(0x80 | reports.len() as u8);
    out.push(pt);
    out.extend_from_slice(&(words as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    if let Some(s) = sender {
        out.extend_from_slice(&s.ntp.to_be_bytes());
        out.extend_from_slice(&s.rtp_timestamp.to_be_bytes());
        out.extend_from_slice(&s.packets.to_be_bytes());
        out.extend_from_slice(&s.octets.to_be_bytes());
    }
    for r in reports {
        out.extend_from_slice(&r.ssrc.to_be_bytes());
        let lost = r.cumulative_lost.min(0x7f_ffff).to_be_bytes();
        out.extend_from_slice(&[r.fraction_lost, lost[1], lost[2], lost[3]]);
        out.extend_from_slice(&r.highest_seq.to_be_bytes());
        out.extend_from_slice(&r.jitter.to_be_bytes());
        out.extend_from_slice(&r.last_sr.to_be_bytes());
        out.extend_from_slice(&r.delay_since_last_sr.to_be_bytes());
    }
    // SDES: one chunk, CNAME item, null-terminated and padded to a word.
    let cname = &cname.as_bytes()[..cname.len().min(255)];
    let chunk_len = 4 + 2 + cname.len() + 1;
    let padded = chunk_len.div_ceil(4) * 4;
    out.push(0x81);
    out.push(202);
    out.extend_from_slice(&((padded / 4) as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1);
    out.push(cname.len() as u8);
    out.extend_from_slice(cname);
    out.extend(std::iter::repeat_n(0u8, padded - chunk_len + 1));
}

/// Round-trip time from a report block received at NTP time `now_ntp` (§6.4.1), or `None` when
/// the block does not refer to one of our SRs.
pub fn round_trip(block: &ReportBlock, now_ntp: u64) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let a = ntp_short(now_ntp);
    let rtt = a
        .wrapping_sub(block.last_sr)
        .wrapping_sub(block.delay_since_last_sr);
    if rtt > 0x8000_0000 {
        return None; // clock confusion: negative
    }
    Some(Duration::from_micros(rtt as u64 * 1_000_000 / 65536))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sr_with_block_round_trips_and_gives_rtt() {
        let t0 = Duration::from_secs(1_700_000_000);
        let sr_ntp = ntp_from_unix(t0);
        let mut buf = Vec::new();
        let info = SenderInfo {
            ntp: sr_ntp,
            rtp_timestamp: 160,
            packets: 50,
            octets: 8000,
        };
        build(0x1234, Some(info), &[], "voxgate@127.0.0.1", &mut buf);
        assert_eq!(buf.len() % 4, 0);
        let c = parse(&buf).unwrap();
        assert_eq!(c.ssrc, Some(0x1234));
        assert_eq!(c.sender_info, Some(info));

        // The peer answers 30 ms later with DLSR = 30 ms, received 80 ms after our SR: RTT 50 ms.
        let block = ReportBlock {
            ssrc: 0x1234,
            fraction_lost: 12,
            cumulative_lost: 7,
            highest_seq: 70000,
            jitter: 80,
            last_sr: ntp_short(sr_ntp),
            delay_since_last_sr: 65536 * 30 / 1000,
        };
        let mut rr = Vec::new();
        build(0x9999, None, &[block], "peer", &mut rr);
        let c = parse(&rr).unwrap();
        assert_eq!(c.reports, vec![block]);
        let rtt = round_trip(&c.reports[0], ntp_from_unix(t0 + Duration::from_millis(80))).unwrap();
        assert!((rtt.as_secs_f64() - 0.050).abs() < 0.001, "{rtt:?}");
    }

    #[test]
    fn malformed_compounds_are_errors_not_panics() {
        assert_eq!(parse(&[0x80, 200]), Err(RtcpError::TooShort));
        assert_eq!(parse(&[0x40, 200, 0, 0]), Err(RtcpError::BadVersion));
        assert_eq!(
            parse(&[0x80, 200, 0, 9, 0, 0, 0, 0]),
            Err(RtcpError::BadLength)
        );
        assert_eq!(
            parse(&[0x80, 200, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::TooShort)
        );
        let mut buf = Vec::new();
        build(1, None, &[ReportBlock::default(); 2], "x", &mut buf);
        for n in 0..buf.len() {
            let _ = parse(&buf[..n]);
        }
    }
}
