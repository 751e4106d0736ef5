//! RTP packets (RFC 3550 §5.1): the 12-byte fixed header, CSRC list, header extension and
//! padding are parsed; we write packets without CSRCs, extension or padding.

use thiserror::Error;

/// Why a datagram is not an RTP packet we can use.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RtpError {
    #[error("RTP packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("RTP version {0} is not 2")]
    BadVersion(u8),
    #[error("RTP padding length {0} exceeds the packet")]
    BadPadding(u8),
    #[error("RTP header extension exceeds the packet")]
    BadExtension,
}

/// The RTP fixed header fields voxgate uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RtpHeader {
    /// Marker bit: first packet of a talkspurt for audio (RFC 3551 §4.1), start of an RFC 4733 event.
    pub marker: bool,
    /// Payload type, 0–127 (RFC 3551 static, or dynamic 96–127 bound by SDP `rtpmap`).
    pub payload_type: u8,
    /// Sequence number, +1 per packet, wraps at 2^16.
    pub sequence: u16,
    /// Media timestamp in the payload type's RTP clock (8000 Hz for PCMU/PCMA/G.722, 48000 for Opus).
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// A parsed packet borrowing the datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub header: RtpHeader,
    /// Payload without padding.
    pub payload: &'a [u8],
}

/// Whether a datagram on a shared port is RTCP rather than RTP (RFC 5761 §4: payload types 64–95
/// with the marker bit are RTCP packet types 192–223).
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

impl<'a> RtpPacket<'a> {
    /// Parses one datagram. Errors for anything that is not a well-formed version-2 packet.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        if buf.len() < 12 {
            return Err(RtpError::TooShort(buf.len()));
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let padding = buf[0] & 0x20 != 0;
        let extension = buf[0] & 0x10 != 0;
        let csrc_count = (buf[0] & 0x0f) as usize;
        let header = RtpHeader {
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7f,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        };
        let mut start = 12 + 4 * csrc_count;
        if start > buf.len() {
            return Err(RtpError::TooShort(buf.len()));
        }
        if extension {
            if start + 4 > buf.len() {
                return Err(RtpError::BadExtension);
            }
            let words = u16::from_be_bytes([buf[start + 2], buf[start + 3]]) as usize;
            start += 4 + 4 * words;
            if start > buf.len() {
                return Err(RtpError::BadExtension);
            }
        }
        let mut end = buf.len();
        if padding {
            let pad = buf[buf.len() - 1];
            if pad == 0 || pad as usize > end - start {
                return Err(RtpError::BadPadding(pad));
            }
            end -= pad as usize;
        }
        Ok(RtpPacket {
            header,
            payload: &buf[start..end],
        })
    }
}

impl RtpHeader {
    /// Appends the 12-byte header and `payload` to `out`.
    pub fn write(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.reserve(12 + payload.len());
        out.push(0x80);
        out.push(((self.marker as u8) << 7) | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = RtpHeader {
            marker: true,
            payload_type: 8,
            sequence: 65535,
            timestamp: 0xdead_beef,
            ssrc: 42,
        };
        let mut buf = Vec::new();
        h.write(&[1, 2, 3], &mut buf);
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.payload, &[1, 2, 3]);
        assert!(!is_rtcp(&buf));
    }

    #[test]
    fn csrc_extension_and_padding_are_skipped() {
        let mut buf = vec![0x80 | 0x20 | 0x10 | 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        buf.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        buf.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7]); // extension, one word
        buf.extend_from_slice(&[5, 6]); // payload
        buf.extend_from_slice(&[0, 0, 3]); // padding of 3
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.payload, &[5, 6]);
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(RtpError::TooShort(5)));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::BadVersion(1)));
        let mut pad = vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 200];
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::BadPadding(200)));
        pad[13] = 0;
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::BadPadding(0)));
        assert_eq!(
            RtpPacket::parse(&[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(RtpError::BadExtension)
        );
        assert!(RtpPacket::parse(&[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // Every prefix of a valid packet parses or errors, never panics.
        let mut buf = Vec::new();
        RtpHeader::default().write(&[1; 20], &mut buf);
        for n in 0..buf.len() {
            let _ = RtpPacket::parse(&buf[..n]);
        }
    }
}
