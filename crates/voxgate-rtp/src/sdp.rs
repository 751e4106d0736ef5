//! SDP offer/answer for one audio stream over plain RTP (RFC 3264 on RFC 4566/8866 descriptions,
//! parsed and written with `sdp-types`).
//!
//! - The answerer picks the first payload format of the offer that it supports (the offerer's
//!   order, RFC 3264 §6.1), keeps the offerer's payload type numbers, adds telephone-event at the
//!   chosen codec's RTP clock rate when offered (RFC 4733 §7.1.1), and answers other or
//!   unusable media lines with port 0 (§6).
//! - Direction is mirrored: sendonly ↔ recvonly, inactive stays inactive (§6.1); a connection
//!   address of 0.0.0.0 is the old (RFC 2543) way to say "hold" and is treated as inactive.
//! - ptime (ms) is honoured when within 10–60, else 20.
//! - SRTP with SDES keys (RFC 4568): an `RTP/SAVP` (or `RTP/SAVPF`) stream is answered with the
//!   first `a=crypto` line whose suite we implement, under its tag, with our own key; a best-effort
//!   `a=crypto` on `RTP/AVP` is honoured the same way. [`SrtpPolicy`] says whether plain RTP is
//!   acceptable and whether our offers use `RTP/SAVP`.

use crate::srtp::{CryptoSuite, SdesKey, SrtpError};
use std::net::{IpAddr, SocketAddr};

/// Why an SDP cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Parse(String),
    #[error("SDP has no RTP/AVP audio stream")]
    NoAudio,
    #[error("SDP has no usable connection address for the audio stream")]
    NoAddress,
    #[error("no codec in common: offered {0}")]
    NoCommonCodec(String),
    /// SRTP is needed by one side and impossible or refused by the other (SIP 488).
    #[error("SRTP: {0}")]
    Srtp(String),
}

/// Whether a call's RTP is encrypted (SRTP, RFC 3711, with SDES keys, RFC 4568).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SrtpPolicy {
    /// Plain RTP only: `RTP/SAVP` offers are refused.
    Off,
    /// SRTP when the offer asks for it, plain RTP otherwise; our offers are plain.
    #[default]
    Optional,
    /// SRTP only: our offers are `RTP/SAVP`, plain offers are refused.
    Required,
}

/// The SRTP keys of a negotiated stream: ours (what we send with) and the far end's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrtpKeys {
    pub local: SdesKey,
    pub remote: SdesKey,
}

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The answer's direction for an offer's.
    pub fn reverse(self) -> Self {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether we send media in this direction (ours).
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether we receive media in this direction (ours).
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// One payload format: `a=rtpmap:<pt> <name>/<clock_rate>[/<channels>]` plus `a=fmtp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadFormat {
    pub pt: u8,
    /// Encoding name as written in SDP (compared case-insensitively).
    pub name: String,
    /// RTP clock rate, Hz (8000 for G.722 although it samples at 16 kHz, RFC 3551 §4.5.2).
    pub clock_rate: u32,
    pub channels: u8,
    pub fmtp: Option<String>,
}

impl PayloadFormat {
    pub fn new(pt: u8, name: &str, clock_rate: u32, channels: u8, fmtp: Option<&str>) -> Self {
        PayloadFormat {
            pt,
            name: name.into(),
            clock_rate,
            channels,
            fmtp: fmtp.map(str::to_string),
        }
    }

    /// Same codec (name, clock rate, channels), whatever the payload type number.
    pub fn same_codec(&self, other: &PayloadFormat) -> bool {
        self.name.eq_ignore_ascii_case(&other.name)
            && self.clock_rate == other.clock_rate
            && self.channels.max(1) == other.channels.max(1)
    }

    pub fn is_telephone_event(&self) -> bool {
        self.name.eq_ignore_ascii_case("telephone-event")
    }

    /// The static payload types of RFC 3551 Table 4 that voxgate knows.
    fn from_static(pt: u8) -> Option<PayloadFormat> {
        match pt {
            0 => Some(PayloadFormat::new(0, "PCMU", 8000, 1, None)),
            8 => Some(PayloadFormat::new(8, "PCMA", 8000, 1, None)),
            9 => Some(PayloadFormat::new(9, "G722", 8000, 1, None)),
            _ => None,
        }
    }
}

/// The audio stream of a remote description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteAudio {
    /// Where to send RTP (port 0 = stream rejected/disabled).
    pub rtp: SocketAddr,
    /// Where to send RTCP (`a=rtcp`, else RTP port + 1; the RTP address with `a=rtcp-mux`).
    pub rtcp: SocketAddr,
    pub rtcp_mux: bool,
    /// Payload formats in the sender's order of preference.
    pub formats: Vec<PayloadFormat>,
    pub ptime_ms: Option<u32>,
    /// Direction as the remote wrote it (its view).
    pub direction: Direction,
    /// Index of the audio m-line in the description.
    pub index: usize,
    /// The transport protocol (`RTP/AVP`, `RTP/SAVP`, ...).
    pub proto: String,
    /// The `a=crypto` values of the stream (RFC 4568), in the sender's order of preference.
    pub crypto: Vec<String>,
}

impl RemoteAudio {
    /// `RTP/SAVP` or `RTP/SAVPF`: the sender requires SRTP.
    pub fn secure_profile(&self) -> bool {
        self.proto.to_ascii_uppercase().contains("SAVP")
    }
}

/// What we offer or answer with.
#[derive(Clone, Debug)]
pub struct LocalMedia {
    /// Address written in `c=` and `o=`.
    pub address: IpAddr,
    /// RTP port (RTCP on port + 1).
    pub port: u16,
    /// Codecs we can use, in our order of preference; payload types are used when we offer.
    pub formats: Vec<PayloadFormat>,
    /// Offer telephone-event at each distinct clock rate of `formats`, with these payload types
    /// (`(clock_rate, pt)`).
    pub telephone_events: Vec<(u32, u8)>,
    pub ptime_ms: u32,
    pub direction: Direction,
    /// `o=` session id and version (bump the version for every new offer/answer in a dialog).
    pub session_id: u64,
    pub session_version: u64,
    pub srtp_policy: SrtpPolicy,
    /// Our SRTP key for this session (used when SRTP is negotiated; offered with
    /// [`SrtpPolicy::Required`]); `None`: no SRTP.
    pub srtp: Option<SdesKey>,
}

/// The result of a negotiation: how to run the RTP stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub remote_rtp: SocketAddr,
    pub remote_rtcp: SocketAddr,
    /// The codec both sides send, with the payload type to put on the wire.
    pub codec: PayloadFormat,
    /// telephone-event payload type, when both support it at the codec's clock rate.
    pub telephone_event: Option<u8>,
    pub ptime_ms: u32,
    /// Our direction.
    pub direction: Direction,
    /// SRTP keys when the stream is encrypted.
    pub srtp: Option<SrtpKeys>,
}

fn parse_session(sdp: &str) -> Result<sdp_types::Session, SdpError> {
    sdp_types::Session::parse(sdp.as_bytes()).map_err(|e| SdpError::Parse(e.to_string()))
}

/// The address of a `c=` line: `IN IP4` or `IN IP6` and a literal address (RFC 4566 §5.7);
/// `None` for any other network or address type, or a host name.
fn conn_ip(c: &sdp_types::Connection) -> Option<IpAddr> {
    let ip: IpAddr = c
        .connection_address
        .split('/')
        .next()?
        .trim()
        .parse()
        .ok()?;
    let family_ok = matches!(
        (&c.addrtype, ip),
        (sdp_types::AddrType::Ip4, IpAddr::V4(_)) | (sdp_types::AddrType::Ip6, IpAddr::V6(_))
    );
    (c.nettype == sdp_types::NetType::In && family_ok).then_some(ip)
}

fn direction_of(attrs: &[sdp_types::Attribute]) -> Option<Direction> {
    attrs.iter().find_map(|a| match a.attribute.as_str() {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    })
}

fn is_rtp_audio(m: &sdp_types::Media) -> bool {
    m.media == "audio"
        && ["RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"]
            .iter()
            .any(|p| m.proto.eq_ignore_ascii_case(p))
}

fn formats_of(m: &sdp_types::Media) -> Vec<PayloadFormat> {
    let mut out = Vec::new();
    for fmt in m.fmt.split_whitespace() {
        let Ok(pt) = fmt.parse::<u8>() else { continue };
        if pt > 127 {
            continue;
        }
        let rtpmap = m
            .attributes
            .iter()
            .filter(|a| a.attribute == "rtpmap")
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| {
                let (p, rest) = v.split_once(' ')?;
                (p.trim().parse::<u8>().ok()? == pt).then_some(rest.trim())
            });
        let fmtp = m
            .attributes
            .iter()
            .filter(|a| a.attribute == "fmtp")
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| {
                let (p, rest) = v.split_once(' ')?;
                (p.trim().parse::<u8>().ok()? == pt).then(|| rest.trim().to_string())
            });
        let f = match rtpmap {
            Some(map) => {
                let mut parts = map.split('/');
                let name = parts.next().unwrap_or_default().to_string();
                let Some(Ok(clock_rate)) = parts.next().map(|r| r.trim().parse::<u32>()) else {
                    continue;
                };
                let channels = parts
                    .next()
                    .and_then(|c| c.trim().parse().ok())
                    .unwrap_or(1);
                PayloadFormat {
                    pt,
                    name,
                    clock_rate,
                    channels,
                    fmtp,
                }
            }
            None => match PayloadFormat::from_static(pt) {
                Some(mut f) => {
                    f.fmtp = fmtp;
                    f
                }
                None => continue,
            },
        };
        out.push(f);
    }
    out
}

/// Finds and reads the first plain-RTP audio stream of a description that is in use (port ≠ 0),
/// or the first one when all are rejected.
pub fn parse_audio(sdp: &str) -> Result<RemoteAudio, SdpError> {
    let s = parse_session(sdp)?;
    // The first audio stream in use; a rejected one (port 0) only when there is no other.
    let audio = || s.medias.iter().enumerate().filter(|(_, m)| is_rtp_audio(m));
    let (index, m) = audio()
        .find(|(_, m)| m.port != 0)
        .or_else(|| audio().next())
        .ok_or(SdpError::NoAudio)?;
    audio_at(&s, index, m)
}

/// The audio stream `m` (at `index` among the session's media) of session `s`.
fn audio_at(
    s: &sdp_types::Session,
    index: usize,
    m: &sdp_types::Media,
) -> Result<RemoteAudio, SdpError> {
    let conn = m
        .connections
        .first()
        .or(s.connection.as_ref())
        .ok_or(SdpError::NoAddress)?;
    let ip = conn_ip(conn).ok_or(SdpError::NoAddress)?;
    let rtcp_mux = m.attributes.iter().any(|a| a.attribute == "rtcp-mux");
    let rtcp_port = m
        .attributes
        .iter()
        .find(|a| a.attribute == "rtcp")
        .and_then(|a| a.value.as_deref())
        .and_then(|v| v.split_whitespace().next()?.parse::<u16>().ok());
    let rtcp = if rtcp_mux {
        SocketAddr::new(ip, m.port)
    } else {
        SocketAddr::new(ip, rtcp_port.unwrap_or(m.port.wrapping_add(1)))
    };
    let mut direction = direction_of(&m.attributes)
        .or_else(|| direction_of(&s.attributes))
        .unwrap_or_default();
    if ip.is_unspecified() && direction != Direction::Inactive {
        // RFC 2543 hold: c=0.0.0.0.
        direction = Direction::Inactive;
    }
    let ptime_ms = m
        .attributes
        .iter()
        .find(|a| a.attribute == "ptime")
        .and_then(|a| a.value.as_deref())
        .and_then(|v| v.trim().parse().ok());
    Ok(RemoteAudio {
        rtp: SocketAddr::new(ip, m.port),
        rtcp,
        rtcp_mux,
        formats: formats_of(m),
        ptime_ms,
        direction,
        index,
        proto: m.proto.clone(),
        crypto: m
            .attributes
            .iter()
            .filter(|a| a.attribute == "crypto")
            .filter_map(|a| a.value.clone())
            .collect(),
    })
}

/// The SRTP keys for answering `remote` under `local`'s policy: `Ok(None)` for plain RTP,
/// `Ok(Some((tag, keys)))` for SRTP with the offer's first usable `a=crypto` line.
///
/// # Errors
/// [`SdpError::Srtp`]: SRTP required by one side and refused or impossible on the other.
fn answer_srtp(
    remote: &RemoteAudio,
    local: &LocalMedia,
) -> Result<Option<(u32, SrtpKeys)>, SdpError> {
    let wants = remote.secure_profile() || !remote.crypto.is_empty();
    let ours = local
        .srtp
        .as_ref()
        .filter(|_| local.srtp_policy != SrtpPolicy::Off);
    let Some(ours) = ours.filter(|_| wants) else {
        if remote.secure_profile() {
            return Err(SdpError::Srtp(format!(
                "the offer requires SRTP ({}) and SRTP is off here (sip.srtp = \"off\")",
                remote.proto
            )));
        }
        if local.srtp_policy == SrtpPolicy::Required {
            return Err(SdpError::Srtp(
                "plain RTP offered and SRTP is required here (sip.srtp = \"required\")".into(),
            ));
        }
        return Ok(None);
    };
    let mut why = None;
    for value in &remote.crypto {
        match SdesKey::parse_attribute(value) {
            Ok((tag, remote_key)) => {
                let local_key = SdesKey {
                    suite: remote_key.suite,
                    ..ours.clone()
                };
                return Ok(Some((
                    tag,
                    SrtpKeys {
                        local: local_key,
                        remote: remote_key,
                    },
                )));
            }
            Err(e) => {
                why.get_or_insert(e);
            }
        }
    }
    let why = match why {
        Some(SrtpError::Suite(_)) | None if remote.crypto.is_empty() => {
            "no a=crypto line (SDES keys, RFC 4568); DTLS-SRTP is not supported".to_string()
        }
        Some(SrtpError::Suite(_)) => format!(
            "no crypto suite in common: offered {}; supported {}, {}",
            remote
                .crypto
                .iter()
                .filter_map(|c| c.split_whitespace().nth(1))
                .collect::<Vec<_>>()
                .join(", "),
            CryptoSuite::AesCm128HmacSha1_80.name(),
            CryptoSuite::AesCm128HmacSha1_32.name()
        ),
        Some(e) => e.to_string(),
        None => "no usable a=crypto line".to_string(),
    };
    if remote.secure_profile() || local.srtp_policy == SrtpPolicy::Required {
        Err(SdpError::Srtp(why))
    } else {
        // Best-effort SRTP on RTP/AVP that we cannot read: plain RTP.
        Ok(None)
    }
}

fn clamp_ptime(p: Option<u32>, default: u32) -> u32 {
    match p {
        Some(p) if (10..=60).contains(&p) => p,
        _ => default,
    }
}

fn origin(local: &LocalMedia) -> sdp_types::Origin {
    sdp_types::Origin {
        username: Some("voxgate".into()),
        sess_id: local.session_id.to_string(),
        sess_version: local.session_version,
        nettype: sdp_types::NetType::In,
        addrtype: if local.address.is_ipv4() {
            sdp_types::AddrType::Ip4
        } else {
            sdp_types::AddrType::Ip6
        },
        unicast_address: local.address.to_string(),
    }
}

fn audio_media(
    local: &LocalMedia,
    formats: &[PayloadFormat],
    ptime: u32,
    direction: Direction,
    proto: &str,
    crypto: Option<String>,
) -> sdp_types::Media {
    let fmt = formats
        .iter()
        .map(|f| f.pt.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut attributes = Vec::new();
    for f in formats {
        let map = if f.channels > 1 {
            format!("{} {}/{}/{}", f.pt, f.name, f.clock_rate, f.channels)
        } else {
            format!("{} {}/{}", f.pt, f.name, f.clock_rate)
        };
        attributes.push(sdp_types::Attribute::with_value("rtpmap", map));
        if let Some(p) = &f.fmtp {
            attributes.push(sdp_types::Attribute::with_value(
                "fmtp",
                format!("{} {}", f.pt, p),
            ));
        }
    }
    attributes.push(sdp_types::Attribute::with_value("ptime", ptime));
    attributes.push(sdp_types::Attribute::new(direction.as_str()));
    if let Some(c) = crypto {
        attributes.push(sdp_types::Attribute::with_value("crypto", c));
    }
    sdp_types::Media {
        media: "audio".into(),
        port: local.port,
        num_ports: None,
        proto: proto.into(),
        fmt,
        media_title: None,
        connections: Vec::new(),
        bandwidths: Vec::new(),
        key: None,
        attributes,
    }
}

fn session(local: &LocalMedia, medias: Vec<sdp_types::Media>) -> String {
    let mut s = sdp_types::Session::new(origin(local), "voxgate");
    s.connection = Some(sdp_types::Connection::from_ip_addr(local.address));
    s.times = vec![sdp_types::Time::new(0, 0)];
    s.medias = medias;
    s.to_string()
}

/// Our offer (for an outbound INVITE, or a late-offer INVITE's 200 OK).
pub fn build_offer(local: &LocalMedia) -> String {
    let mut formats = local.formats.clone();
    for &(rate, pt) in &local.telephone_events {
        formats.push(PayloadFormat::new(
            pt,
            "telephone-event",
            rate,
            1,
            Some("0-16"),
        ));
    }
    let srtp = local
        .srtp
        .as_ref()
        .filter(|_| local.srtp_policy == SrtpPolicy::Required);
    let proto = if srtp.is_some() {
        "RTP/SAVP"
    } else {
        "RTP/AVP"
    };
    session(
        local,
        vec![audio_media(
            local,
            &formats,
            local.ptime_ms,
            local.direction,
            proto,
            srtp.map(|k| k.attribute(OFFER_CRYPTO_TAG)),
        )],
    )
}

/// The tag of the one `a=crypto` line of our offers.
const OFFER_CRYPTO_TAG: u32 = 1;

/// The remote's first payload format (its order of preference) that we can code.
fn first_common_codec(remote: &RemoteAudio, local: &LocalMedia) -> Result<PayloadFormat, SdpError> {
    remote
        .formats
        .iter()
        .find(|f| !f.is_telephone_event() && local.formats.iter().any(|l| l.same_codec(f)))
        .cloned()
        .ok_or_else(|| {
            SdpError::NoCommonCodec(
                remote
                    .formats
                    .iter()
                    .map(|f| format!("{}/{}", f.name, f.clock_rate))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

/// Answers a remote offer: returns the answer SDP and the negotiated stream, or
/// [`SdpError::NoCommonCodec`] (SIP 488) / a parse error (SIP 400).
pub fn answer(offer: &str, local: &LocalMedia) -> Result<(String, Negotiated), SdpError> {
    let s = parse_session(offer)?;
    // The first audio stream we can use (RFC 3264 §6: the others are rejected with port 0); when
    // none, the first one's reason.
    let mut first_err = None;
    let mut chosen = None;
    for (i, m) in s.medias.iter().enumerate() {
        if !is_rtp_audio(m) || m.port == 0 {
            continue;
        }
        let usable = audio_at(&s, i, m).and_then(|r| {
            let c = first_common_codec(&r, local)?;
            let k = answer_srtp(&r, local)?;
            Ok((r, (c, k)))
        });
        match usable {
            Ok(rc) => {
                chosen = Some(rc);
                break;
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let (remote, (codec, srtp)) = match chosen {
        Some(rc) => rc,
        None => return Err(first_err.unwrap_or(SdpError::NoAudio)),
    };
    let telephone_event = if local.telephone_events.is_empty() {
        None
    } else {
        remote
            .formats
            .iter()
            .find(|f| f.is_telephone_event() && f.clock_rate == codec.clock_rate)
            .cloned()
    };
    let ptime = clamp_ptime(remote.ptime_ms, local.ptime_ms);
    let direction = if local.direction == Direction::SendRecv {
        remote.direction.reverse()
    } else {
        local.direction
    };
    let mut answer_formats = vec![codec.clone()];
    if let Some(te) = &telephone_event {
        answer_formats.push(te.clone());
    }
    let medias = s
        .medias
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if i == remote.index {
                // The offer's profile (SAVP, or best-effort SRTP on AVP), our key under its tag.
                let proto = match &srtp {
                    Some(_) => remote.proto.as_str(),
                    None if remote.proto.eq_ignore_ascii_case("RTP/AVPF") => "RTP/AVPF",
                    None => "RTP/AVP",
                };
                let crypto = srtp.as_ref().map(|(tag, k)| k.local.attribute(*tag));
                audio_media(local, &answer_formats, ptime, direction, proto, crypto)
            } else {
                // Rejected stream: same media, proto and formats, port 0 (RFC 3264 §6).
                sdp_types::Media {
                    media: m.media.clone(),
                    port: 0,
                    num_ports: None,
                    proto: m.proto.clone(),
                    fmt: m.fmt.clone(),
                    media_title: None,
                    connections: Vec::new(),
                    bandwidths: Vec::new(),
                    key: None,
                    attributes: Vec::new(),
                }
            }
        })
        .collect();
    let neg = Negotiated {
        remote_rtp: remote.rtp,
        remote_rtcp: remote.rtcp,
        codec,
        telephone_event: telephone_event.map(|t| t.pt),
        ptime_ms: ptime,
        direction,
        srtp: srtp.map(|(_, k)| k),
    };
    Ok((session(local, medias), neg))
}

/// Reads the answer to our offer.
pub fn read_answer(answer: &str, local: &LocalMedia) -> Result<Negotiated, SdpError> {
    let remote = parse_audio(answer)?;
    if remote.rtp.port() == 0 {
        return Err(SdpError::NoCommonCodec(
            "the answer rejected the audio stream (port 0)".into(),
        ));
    }
    let codec = first_common_codec(&remote, local)?;
    let srtp = answer_keys(&remote, local)?;
    let telephone_event = remote
        .formats
        .iter()
        .find(|f| f.is_telephone_event() && f.clock_rate == codec.clock_rate)
        .map(|f| f.pt);
    let direction = if local.direction == Direction::SendRecv {
        remote.direction.reverse()
    } else {
        local.direction
    };
    Ok(Negotiated {
        remote_rtp: remote.rtp,
        remote_rtcp: remote.rtcp,
        codec,
        telephone_event,
        ptime_ms: clamp_ptime(remote.ptime_ms, local.ptime_ms),
        direction,
        srtp,
    })
}

/// The SRTP keys of an answer to our offer: the far end's key under our tag when we offered
/// `RTP/SAVP`.
///
/// # Errors
/// [`SdpError::Srtp`]: we offered SRTP and the answer has no usable key for our tag.
fn answer_keys(remote: &RemoteAudio, local: &LocalMedia) -> Result<Option<SrtpKeys>, SdpError> {
    let Some(ours) = local
        .srtp
        .as_ref()
        .filter(|_| local.srtp_policy == SrtpPolicy::Required)
    else {
        return Ok(None);
    };
    for value in &remote.crypto {
        if let Ok((tag, remote_key)) = SdesKey::parse_attribute(value) {
            if tag == OFFER_CRYPTO_TAG && remote_key.suite == ours.suite {
                return Ok(Some(SrtpKeys {
                    local: ours.clone(),
                    remote: remote_key,
                }));
            }
        }
    }
    Err(SdpError::Srtp(
        "we offered RTP/SAVP and the answer carries no usable a=crypto key for it".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalMedia {
        LocalMedia {
            address: "127.0.0.1".parse().unwrap(),
            port: 40000,
            formats: vec![
                PayloadFormat::new(9, "G722", 8000, 1, None),
                PayloadFormat::new(0, "PCMU", 8000, 1, None),
                PayloadFormat::new(8, "PCMA", 8000, 1, None),
                PayloadFormat::new(111, "opus", 48000, 2, Some("minptime=10;useinbandfec=1")),
            ],
            telephone_events: vec![(8000, 101), (48000, 110)],
            ptime_ms: 20,
            direction: Direction::SendRecv,
            srtp_policy: SrtpPolicy::Optional,
            srtp: None,
            session_id: 1,
            session_version: 1,
        }
    }

    const LINPHONE: &str = "v=0\r\no=bob 123 456 IN IP4 127.0.0.1\r\ns=Talk\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 7078 RTP/AVP 96 97 98 0 8 101 99 100\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\n\
a=rtpmap:97 speex/16000\r\na=rtpmap:98 speex/8000\r\na=rtpmap:101 telephone-event/48000\r\n\
a=rtpmap:99 telephone-event/16000\r\na=rtpmap:100 telephone-event/8000\r\n\
m=video 9078 RTP/AVP 102\r\na=rtpmap:102 VP8/90000\r\n";

    #[test]
    fn answer_takes_the_offerers_first_common_codec_and_matching_telephone_event() {
        let (sdp, n) = answer(LINPHONE, &local()).unwrap();
        assert_eq!(n.codec.name, "opus");
        assert_eq!(n.codec.pt, 96, "offerer's payload type");
        assert_eq!(
            n.telephone_event,
            Some(101),
            "telephone-event at 48 kHz for Opus"
        );
        assert_eq!(n.remote_rtp, "127.0.0.1:7078".parse().unwrap());
        assert_eq!(n.remote_rtcp, "127.0.0.1:7079".parse().unwrap());
        assert!(sdp.contains("m=audio 40000 RTP/AVP 96 101\r\n"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:96 opus/48000/2\r\n"), "{sdp}");
        assert!(
            sdp.contains("m=video 0 RTP/AVP 102\r\n"),
            "rejected stream keeps its line with port 0: {sdp}"
        );
        assert!(sdp.contains("a=sendrecv"));
        // Our answer is itself a valid description.
        let back = parse_audio(&sdp).unwrap();
        assert_eq!(back.formats.len(), 2);
    }

    /// RFC 3264 §6 / issue 10: with several audio streams, the first one we can use is answered
    /// and every other stream gets port 0, in order.
    #[test]
    fn the_first_usable_of_several_audio_streams_is_answered() {
        let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 5000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n\
m=audio 0 RTP/AVP 0\r\n\
m=video 5002 RTP/AVP 31\r\n\
m=audio 5004 RTP/AVP 8\r\n\
m=audio 5006 RTP/AVP 0\r\n";
        let (sdp, n) = answer(offer, &local()).unwrap();
        assert_eq!((n.codec.name.as_str(), n.remote_rtp.port()), ("PCMA", 5004));
        let m: Vec<&str> = sdp.lines().filter(|l| l.starts_with("m=")).collect();
        // Our answer reads back as the stream in use, not a rejected one before it.
        assert_eq!(parse_audio(&sdp).unwrap().rtp.port(), 40000);
        assert_eq!(
            m,
            [
                "m=audio 0 RTP/AVP 18",
                "m=audio 0 RTP/AVP 0",
                "m=video 0 RTP/AVP 31",
                "m=audio 40000 RTP/AVP 8",
                "m=audio 0 RTP/AVP 0"
            ],
            "{sdp}"
        );
        // The fuzzer's find (sdp_offer, issue 10): a video stream and a garbled audio stream
        // before the usable one; our answer must read back with the chosen codec.
        let fuzzed = "v=0\r\no=- 1 1 IN AP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=video 5002 RTP/AVP 31\r\nm=audio 5000 RTP/AVP 1TP/AVP 31\r\nm=audio 5000 RTP/AVP 1T P/AVP 1IN8 0 1 1";
        if let Ok((sdp, n)) = answer(fuzzed, &local()) {
            let back = parse_audio(&sdp).unwrap();
            assert!(back.formats.iter().any(|f| f.pt == n.codec.pt), "{sdp}");
        }
        // None usable: the first stream's reason.
        let g729 = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 18\r\n";
        assert!(matches!(
            answer(g729, &local()),
            Err(SdpError::NoCommonCodec(_))
        ));
    }

    /// RFC 4566 §5.7: a `c=` line with a network or address type other than IN IP4/IP6 (or an
    /// address that does not match its type) leaves the stream without an address.
    #[test]
    fn unknown_network_or_address_types_are_not_used() {
        for c in [
            "c=ATM NSAP 47.0091.8100.0000.0060.3e64.fd01.0060.3e64.fd01.00",
            "c=IN IP6 192.0.2.1",
            "c=IN IP4 host.example.com",
            "c=XX IP4 192.0.2.1",
        ] {
            let offer = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n{c}\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n");
            assert!(
                matches!(
                    answer(&offer, &local()),
                    Err(SdpError::NoAddress) | Err(SdpError::Parse(_))
                ),
                "{c}"
            );
        }
    }

    #[test]
    fn static_payload_types_without_rtpmap_and_telephone_event_rate() {
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8 0 101\r\nc=IN IP4 127.0.0.2\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:30\r\na=sendonly\r\n";
        let (sdp, n) = answer(offer, &local()).unwrap();
        assert_eq!((n.codec.name.as_str(), n.codec.pt), ("PCMA", 8));
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.ptime_ms, 30);
        assert_eq!(n.direction, Direction::RecvOnly, "hold: we only receive");
        assert_eq!(
            n.remote_rtp,
            "127.0.0.2:5000".parse().unwrap(),
            "media-level c= wins"
        );
        assert!(sdp.contains("a=recvonly"));
        assert!(sdp.contains("a=ptime:30"));
    }

    fn srtp_local(policy: SrtpPolicy) -> LocalMedia {
        LocalMedia {
            srtp_policy: policy,
            srtp: Some(SdesKey::generate(CryptoSuite::AesCm128HmacSha1_80).unwrap()),
            ..local()
        }
    }

    const KEY: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";

    #[test]
    fn sdes_offers_are_answered_with_our_key_under_their_tag() {
        let offer = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0 101\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=crypto:3 F8_128_HMAC_SHA1_80 inline:{KEY}\r\n\
             a=crypto:4 AES_CM_128_HMAC_SHA1_32 inline:{KEY}|2^31\r\n"
        );
        let local = srtp_local(SrtpPolicy::Optional);
        let (sdp, neg) = answer(&offer, &local).unwrap();
        assert!(sdp.contains("m=audio 40000 RTP/SAVP 0 101"), "{sdp}");
        let line = sdp.lines().find(|l| l.starts_with("a=crypto:")).unwrap();
        let (tag, ours) = SdesKey::parse_attribute(&line["a=crypto:".len()..]).unwrap();
        assert_eq!(tag, 4);
        assert_eq!(ours.suite, CryptoSuite::AesCm128HmacSha1_32);
        assert_eq!(ours.key, local.srtp.as_ref().unwrap().key);
        let keys = neg.srtp.unwrap();
        assert_eq!(keys.local, ours);
        assert_eq!(
            keys.remote,
            SdesKey::parse_attribute(&format!("4 AES_CM_128_HMAC_SHA1_32 inline:{KEY}"))
                .unwrap()
                .1
        );

        // Best-effort SRTP (a=crypto on RTP/AVP, baresip's `mediaenc=srtp`): SRTP on RTP/AVP.
        let be = offer.replace("RTP/SAVP", "RTP/AVP");
        let (sdp, neg) = answer(&be, &local).unwrap();
        assert!(
            sdp.contains("RTP/AVP 0 101") && sdp.contains("a=crypto:4 "),
            "{sdp}"
        );
        assert!(neg.srtp.is_some());
        // ... and plain RTP when SRTP is off.
        let (sdp, neg) = answer(&be, &srtp_local(SrtpPolicy::Off)).unwrap();
        assert!(!sdp.contains("a=crypto") && neg.srtp.is_none(), "{sdp}");
        // SAVP with SRTP off, SAVP without a suite we have, plain RTP when SRTP is required.
        for (offer, policy, why) in [
            (offer.clone(), SrtpPolicy::Off, "off"),
            (
                offer.replace(
                    "a=crypto:4 AES_CM_128_HMAC_SHA1_32",
                    "a=crypto:4 AEAD_AES_256_GCM",
                ),
                SrtpPolicy::Optional,
                "no crypto suite in common",
            ),
            (
                offer
                    .replace("RTP/SAVP", "RTP/AVP")
                    .lines()
                    .filter(|l| !l.starts_with("a=crypto"))
                    .collect::<Vec<_>>()
                    .join("\r\n")
                    + "\r\n",
                SrtpPolicy::Required,
                "required",
            ),
            (
                offer
                    .lines()
                    .filter(|l| !l.starts_with("a=crypto"))
                    .collect::<Vec<_>>()
                    .join("\r\n")
                    + "\r\n",
                SrtpPolicy::Optional,
                "DTLS-SRTP",
            ),
        ] {
            match answer(&offer, &srtp_local(policy)) {
                Err(SdpError::Srtp(e)) => assert!(e.contains(why), "{e}"),
                other => panic!("{policy:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn our_srtp_offer_and_the_answer_to_it() {
        let local = srtp_local(SrtpPolicy::Required);
        let offer = build_offer(&local);
        assert!(offer.contains("m=audio 40000 RTP/SAVP "), "{offer}");
        assert!(
            offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{offer}"
        );
        let ans = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/SAVP 0\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"
        );
        let neg = read_answer(&ans, &local).unwrap();
        assert_eq!(neg.srtp.unwrap().local, local.srtp.clone().unwrap());
        let wrong_tag = ans.replace("a=crypto:1 ", "a=crypto:2 ");
        assert!(matches!(
            read_answer(&wrong_tag, &local),
            Err(SdpError::Srtp(_))
        ));
        let plain = ans.replace("RTP/SAVP", "RTP/AVP").replace(
            &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"),
            "",
        );
        assert!(matches!(
            read_answer(&plain, &local),
            Err(SdpError::Srtp(_))
        ));
        // Optional: our offers stay plain.
        assert!(build_offer(&srtp_local(SrtpPolicy::Optional)).contains("RTP/AVP"));
    }

    #[test]
    fn unsupported_codecs_and_bad_descriptions() {
        let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 18 3\r\n";
        assert!(matches!(
            answer(offer, &local()),
            Err(SdpError::NoCommonCodec(_))
        ));
        let srtp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n";
        assert!(matches!(
            answer(srtp, &local()).unwrap_err(),
            SdpError::Srtp(_)
        ));
        let no_c = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert_eq!(answer(no_c, &local()).unwrap_err(), SdpError::NoAddress);
        for garbage in [
            "",
            "hello",
            "v=0\r\nm=audio x RTP/AVP 0\r\n",
            "v=0\r\nm=audio 5000 RTP/AVP 0 rtpmap\r\na=rtpmap:0\r\n",
        ] {
            assert!(answer(garbage, &local()).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn hold_with_zero_address_and_offer_answer_round_trip() {
        let hold = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        let (_, n) = answer(hold, &local()).unwrap();
        assert_eq!(n.direction, Direction::Inactive);
        // Our offer answered by a peer that picked PCMU.
        let offer = build_offer(&local());
        assert!(
            offer.contains("m=audio 40000 RTP/AVP 9 0 8 111 101 110\r\n"),
            "{offer}"
        );
        let mut peer = local();
        peer.port = 6000;
        peer.formats = vec![PayloadFormat::new(0, "PCMU", 8000, 1, None)];
        peer.telephone_events = vec![(8000, 101)];
        let (ans, peer_side) = answer(&offer, &peer).unwrap();
        assert_eq!(peer_side.codec.name, "PCMU");
        let ours = read_answer(&ans, &local()).unwrap();
        assert_eq!(ours.codec.pt, 0);
        assert_eq!(ours.telephone_event, Some(101));
        assert_eq!(ours.remote_rtp.port(), 6000);
    }
}
