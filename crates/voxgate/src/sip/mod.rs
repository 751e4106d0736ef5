//! The SIP user agent (layer L4 "net"): `rsipstack` does transactions, dialogs and digest auth;
//! this module is the adapter that keeps its types away from the call core.
//!
//! - [`SipService`] owns the endpoint (UDP, and TCP on the same port), registers to trunks,
//!   answers out-of-dialog requests and routes inbound INVITEs to a handler (`[[sip.numbers]]`):
//!   a waiting `/call/sip` client, or a webhook after which the application connects to
//!   `/call/sip?id=<callId>`.
//! - [`call::SipLeg`] is one call's dialog and RTP leg: a leg of the call core
//!   ([`voxgate_call::Leg`]); [`SipDialer`] places calls for the core.
//! - [`media`] is the RTP/RTCP task.

pub mod call;
pub mod guard;
pub mod media;
pub mod registrar;
pub mod stream;
pub mod timer;

use crate::auth::{Principal, LOCAL_USER};
use crate::config::{SipConfig, SipTrunk};
use async_trait::async_trait;
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Method, StatusCode};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transaction::Transaction;
use rsipstack::transport::{udp::UdpConnection, TransportLayer};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use voxgate_call::{now_ms, CallHandle, DialError, DialOptions, Dialer, Leg, LegPort, PendingLeg};
use voxgate_rtp::sdp::{Direction, LocalMedia, PayloadFormat, SrtpPolicy};

/// A trunk's health as `/health` reports it.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrunkStatus {
    /// `up` (the last OPTIONS got any final response), `down` (no response), or `unknown`.
    pub options: String,
    /// Status code of the last OPTIONS answer.
    pub options_code: Option<u16>,
    /// `registered`, `failed`, or absent when the trunk does not register.
    pub registration: Option<String>,
    /// Epoch ms of the last change.
    pub updated_at: i64,
}

/// An inbound call waiting for `accept` (or `hangup`).
pub struct IncomingCall {
    /// voxgate's id for the call (the `/call/sip?id=` a webhook handler connects with).
    pub id: String,
    pub caller: String,
    pub callee: String,
    /// The INVITE's SDP offer; `None` for a late offer (we offer in the 200 OK).
    pub offer: Option<String>,
    /// The user the called number belongs to (`[[sip.numbers]] user`; `local` when unset).
    pub owner: String,
    /// Where the INVITE came from.
    pub source: Option<IpAddr>,
    /// The INVITE's `X-` headers (call context from carriers and PBXs), name → value, in order.
    pub headers: Vec<(String, String)>,
    pub(crate) dialog: InviteDialog,
    pub(crate) states: DialogStateReceiver,
}

impl std::fmt::Debug for IncomingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingCall")
            .field("id", &self.id)
            .field("caller", &self.caller)
            .field("callee", &self.callee)
            .finish()
    }
}

/// The running SIP user agent.
pub struct SipService {
    pub(crate) cfg: SipConfig,
    pub(crate) endpoint: EndpointInnerRef,
    pub(crate) dialogs: Arc<DialogLayer>,
    /// Bound SIP address (UDP; TCP on the same port when enabled).
    pub local_addr: SocketAddr,
    /// SIP over TLS address, when configured.
    pub tls_addr: Option<SocketAddr>,
    /// IP our RTP sockets bind to.
    pub(crate) rtp_ip: IpAddr,
    /// IP written in SDP and Contact.
    pub(crate) public_ip: IpAddr,
    pending: Mutex<HashMap<String, IncomingCall>>,
    /// Trunk name → what the last OPTIONS keepalive and REGISTER found.
    trunk_status: Mutex<HashMap<String, TrunkStatus>>,
    /// Networks whose out-of-dialog requests are accepted (`sip.allow` and the trunks).
    allow: Vec<ipnet::IpNet>,
    /// `/call/sip` clients waiting for an inbound call: (call id, who connected, call).
    waiting: Mutex<VecDeque<(String, Principal, CallHandle)>>,
    /// Take calls to numbers they own before `[[sip.numbers]]` is consulted (bots, seed 003),
    /// asked in order.
    routers: Mutex<Vec<Arc<dyn InboundRouter>>>,
    http: reqwest::Client,
    cancel: CancellationToken,
    /// BYEs and CANCELs still waiting for the far end's answer.
    tasks: TaskTracker,
    /// `[[sip.users]]` and their registrations, when any are configured.
    pub(crate) registrar: Option<registrar::Registrar>,
    /// Inbound calls whose caller requires reliable provisional responses (RFC 3262): Call-ID →
    /// (RSeq of the reliable provisional being sent, `true` once its PRACK came).
    #[allow(clippy::type_complexity)]
    pub(crate) pracks: Mutex<HashMap<String, (u32, tokio::sync::watch::Sender<bool>)>>,
    /// Answered calls by SIP Call-ID, for an INVITE with `Replaces` (RFC 3891).
    pub(crate) replaceable: Mutex<HashMap<String, std::sync::Weak<call::SipCall>>>,
}

/// Takes inbound calls to numbers it owns (a bot's number), before `[[sip.numbers]]`.
#[async_trait]
pub trait InboundRouter: Send + Sync {
    /// Whether `callee` is one of its numbers.
    async fn owns(&self, callee: &str) -> bool;
    /// Whether a call to `callee` fits its owner's quotas; `Err(seconds)` refuses it with 486
    /// and `Retry-After` before any dialog exists.
    async fn admit(&self, _callee: &str) -> Result<(), u64> {
        Ok(())
    }
    /// Takes the call (answers or refuses it).
    async fn take(&self, callee: &str, leg: Box<dyn PendingLeg>);
}

/// The address a request came from: the top Via's `received` (which the transport layer adds
/// whenever the sent-by differs from the packet's source, RFC 3261 §18.2.1), else its sent-by.
pub fn source_ip(req: &rsipstack::sip::Request) -> Option<IpAddr> {
    use rsipstack::sip::{HeadersExt, ToTypedHeader};
    let via: rsipstack::sip::typed::Via = req.top_via_header().ok()?.typed().ok()?;
    for p in &via.params {
        if let rsipstack::sip::uri::Param::Received(r) = p {
            if let Ok(ip) = r.parse() {
                return Some(ip);
            }
        }
    }
    match via.uri.host_with_port.host {
        rsipstack::sip::uri::Host::IpAddr(ip) => Some(ip),
        rsipstack::sip::uri::Host::Domain(_) => None,
    }
}

fn user_of(uri: &rsipstack::sip::Uri) -> String {
    uri.user().unwrap_or_default().to_string()
}

/// What voxgate reads from an inbound INVITE before routing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteSummary {
    /// From user (the caller's number), empty if absent.
    pub caller: String,
    /// Request-URI user, else To user (the called number).
    pub callee: String,
    /// SDP offer; `None` for a late offer (empty body).
    pub offer: Option<String>,
}

impl InviteSummary {
    pub fn of(req: &rsipstack::sip::Request) -> Self {
        let caller = req
            .from_header()
            .ok()
            .and_then(|h| h.uri().ok())
            .map(|u| user_of(&u))
            .unwrap_or_default();
        let ruri = user_of(&req.uri);
        let callee = if ruri.is_empty() {
            req.to_header()
                .ok()
                .and_then(|h| h.uri().ok())
                .map(|u| user_of(&u))
                .unwrap_or_default()
        } else {
            ruri
        };
        let ctype = header_values(req, "Content-Type").into_iter().next();
        let offer = sdp_of(ctype.as_deref(), &req.body).ok().flatten();
        InviteSummary {
            caller,
            callee,
            offer,
        }
    }
}

/// The SDP in a request body (RFC 3261 §7.4): the body of an `application/sdp` request (or of
/// one without `Content-Type`, as lenient peers send), or the first `application/sdp` part of a
/// `multipart/*` body (RFC 5621 §3, RFC 2046 §5.1); `Ok(None)` for an empty body.
///
/// # Errors
/// The media type found, when the body has no SDP.
pub fn sdp_of(content_type: Option<&str>, body: &[u8]) -> Result<Option<String>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let Some(ct) = content_type else {
        return Ok(Some(String::from_utf8_lossy(body).into_owned()));
    };
    let mt = media_type(ct);
    if mt == "application/sdp" {
        return Ok(Some(String::from_utf8_lossy(body).into_owned()));
    }
    if !mt.starts_with("multipart/") {
        return Err(mt);
    }
    let boundary = ct
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("{mt} without a boundary"))?;
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    // Parts lie between delimiter lines; the CRLF before a delimiter belongs to it.
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break; // the close delimiter
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let part = part.strip_suffix("\r\n").unwrap_or(part);
        let (head, content) = match part.split_once("\r\n\r\n") {
            Some(hc) => hc,
            None if part.starts_with("\r\n") => ("", &part[2..]),
            None => continue,
        };
        // A part without Content-Type is text/plain (RFC 2046 §5.1.1).
        let is_sdp = head.split("\r\n").any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case("Content-Type") && media_type(v) == "application/sdp"
            })
        });
        if is_sdp {
            return Ok(Some(content.to_string()));
        }
    }
    Err(format!("{mt} without an application/sdp part"))
}

/// Whether we can answer an offer: `Err((400, why))` for an unparsable SDP, `Err((488, why))` when
/// no stream or codec is usable (RFC 3261 §21.4.26).
pub fn check_offer(offer: &str, local: &LocalMedia) -> Result<(), (StatusCode, String)> {
    match voxgate_rtp::sdp::answer(offer, local) {
        Ok(_) => Ok(()),
        Err(e @ voxgate_rtp::sdp::SdpError::Parse(_)) => {
            Err((StatusCode::BadRequest, e.to_string()))
        }
        Err(e) => Err((StatusCode::NotAcceptableHere, e.to_string())),
    }
}

/// The SIP adapter's parsing entry, for fuzzing and tests: one datagram as the network would
/// deliver it → the parsed message and, for an INVITE, what routing reads of it plus the answer
/// status its offer would get against the default codecs.
///
/// # Errors
/// The parser's message for bytes that are not a SIP message.
pub fn inspect_datagram(data: &[u8]) -> Result<Option<(InviteSummary, u16)>, String> {
    let msg = rsipstack::sip::SipMessage::try_from(data).map_err(|e| e.to_string())?;
    let rsipstack::sip::SipMessage::Request(req) = msg else {
        return Ok(None);
    };
    if req.method != Method::Invite {
        return Ok(None);
    }
    let summary = InviteSummary::of(&req);
    let local = LocalMedia {
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        port: 9,
        formats: payload_formats(&SipConfig::default().codecs),
        telephone_events: vec![(8000, 101), (48000, 110)],
        ptime_ms: 20,
        direction: Direction::SendRecv,
        session_id: 1,
        session_version: 1,
        srtp_policy: SrtpPolicy::Optional,
        srtp: voxgate_rtp::srtp::SdesKey::generate(
            voxgate_rtp::srtp::CryptoSuite::AesCm128HmacSha1_80,
        )
        .ok(),
    };
    let status = match &summary.offer {
        Some(o) => check_offer(o, &local)
            .map(|_| 200)
            .unwrap_or_else(|(c, _)| c.code()),
        None => 200,
    };
    Ok(Some((summary, status)))
}

/// The codec entries of our SDP for the configured names.
pub fn payload_formats(names: &[String]) -> Vec<PayloadFormat> {
    names
        .iter()
        .filter_map(|n| match n.as_str() {
            "pcmu" => Some(PayloadFormat::new(0, "PCMU", 8000, 1, None)),
            "pcma" => Some(PayloadFormat::new(8, "PCMA", 8000, 1, None)),
            "g722" => Some(PayloadFormat::new(9, "G722", 8000, 1, None)),
            "opus" => Some(PayloadFormat::new(
                111,
                "opus",
                48000,
                2,
                Some("minptime=10;useinbandfec=1"),
            )),
            _ => None,
        })
        .collect()
}

/// How long an in-dialog request that matches no dialog waits for one to appear before 481: a
/// dialog we dialled is keyed with the far end's tag only once its 2xx has been processed, and a
/// far end may send its re-INVITE or UPDATE immediately after that 2xx.
const DIALOG_SETTLE: Duration = Duration::from_millis(500);
/// How long an in-dialog request that overtook the ACK of our 200 waits for it.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// The methods voxgate answers (RFC 3261 §20.5 `Allow`): INFO (DTMF), UPDATE, NOTIFY (our
/// REFER's progress) and REFER (a transfer the far end asks for) only within a dialog; REGISTER as well when `[[sip.users]]` exist
/// ([`ALLOW_REGISTER`]).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY, REFER";
/// [`ALLOW`] with REGISTER, for a server with `[[sip.users]]`.
pub const ALLOW_REGISTER: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY, REFER, REGISTER";
/// The option tags voxgate supports (RFC 3261 §20.37): session timers (RFC 4028) and reliable
/// provisional responses (RFC 3262); a `Require` naming any other option gets 420.
pub const SUPPORTED: &[&str] = &["timer", "100rel", "replaces"];

fn allow() -> rsipstack::sip::Header {
    rsipstack::sip::Header::Other("Allow".into(), ALLOW.into())
}

fn allow_out_of_dialog(registrar: bool) -> rsipstack::sip::Header {
    let v = if registrar { ALLOW_REGISTER } else { ALLOW };
    rsipstack::sip::Header::Other("Allow".into(), v.into())
}

/// What an OPTIONS answer says about voxgate (RFC 3261 §11.2).
fn capabilities() -> Vec<rsipstack::sip::Header> {
    capabilities_with(false)
}

fn capabilities_with(registrar: bool) -> Vec<rsipstack::sip::Header> {
    use rsipstack::sip::Header;
    vec![
        allow_out_of_dialog(registrar),
        Header::Other("Accept".into(), "application/sdp, multipart/mixed".into()),
        Header::Other("Accept-Encoding".into(), "identity".into()),
        Header::Other("Accept-Language".into(), "en".into()),
        Header::Other("Supported".into(), SUPPORTED.join(", ")),
    ]
}

/// A `Replaces` header value (RFC 3891 §6.1: `call-id;to-tag=..;from-tag=..`, other parameters
/// such as `early-only` ignored) → (Call-ID, to-tag, from-tag); `None` without both tags.
pub fn parse_replaces(value: &str) -> Option<(String, String, String)> {
    let mut parts = value.split(';');
    let call_id = parts.next()?.trim().to_string();
    let (mut to_tag, mut from_tag) = (None, None);
    for p in parts {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "to-tag" => to_tag = Some(v.trim().to_string()),
            "from-tag" => from_tag = Some(v.trim().to_string()),
            _ => {}
        }
    }
    Some((call_id, to_tag?, from_tag?)).filter(|(c, _, _)| !c.is_empty())
}

/// A trunk's `host[:port]` with its transport parameter (`;transport=tcp|tls`; nothing for UDP).
fn trunk_target(t: &SipTrunk) -> String {
    match t.transport.as_str() {
        "tcp" | "tls" => format!("{};transport={}", t.host, t.transport),
        _ => t.host.clone(),
    }
}

/// The comma-separated values of every `name` header of `req`, trimmed, in order.
fn header_values(req: &rsipstack::sip::Request, name: &str) -> Vec<String> {
    req.headers
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .flat_map(|h| {
            h.value()
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A request's `X-` headers, name → value, in order (RFC 3261 §7.3: extension headers; many
/// carriers and PBXs pass call context this way).
pub fn x_headers_of(req: &rsipstack::sip::Request) -> Vec<(String, String)> {
    req.headers
        .iter()
        .filter(|h| h.name().len() > 2 && h.name()[..2].eq_ignore_ascii_case("x-"))
        .map(|h| (h.name().to_string(), h.value().trim().to_string()))
        .collect()
}

/// The media type of a `Content-Type` or `Accept` value, lower case, without parameters.
fn media_type(v: &str) -> String {
    v.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// RFC 3261 §8.2.1-§8.2.3 checks on a request `rsipstack` parsed: an answer when the request
/// cannot be served, `None` to go on. 405 (with `Allow`) for a method voxgate does not serve
/// there; 420 (with `Unsupported`) for a `Require` option it lacks; for an INVITE, 415 (with
/// `Accept` or `Accept-Encoding`) for a body other than identity-encoded `application/sdp`, and 406
/// when its `Accept` rules out SDP answers. ACK and CANCEL are never refused here.
fn precheck(
    req: &rsipstack::sip::Request,
    in_dialog: bool,
    registrar: bool,
) -> Option<(StatusCode, Vec<rsipstack::sip::Header>)> {
    use rsipstack::sip::Header;
    if matches!(req.method, Method::Ack | Method::Cancel) {
        return None;
    }
    let served = if in_dialog {
        matches!(
            req.method,
            Method::Invite
                | Method::Bye
                | Method::Options
                | Method::Info
                | Method::Update
                | Method::Notify
                | Method::Refer
                | Method::PRack
        )
    } else {
        matches!(req.method, Method::Invite | Method::Options | Method::Bye)
            || (registrar && req.method == Method::Register)
    };
    if !served {
        let allow = if in_dialog {
            allow()
        } else {
            allow_out_of_dialog(registrar)
        };
        return Some((StatusCode::MethodNotAllowed, vec![allow]));
    }
    let unsupported: Vec<String> = header_values(req, "Require")
        .into_iter()
        .filter(|o| !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(o)))
        .collect();
    if !unsupported.is_empty() {
        return Some((
            StatusCode::BadExtension,
            vec![Header::Other("Unsupported".into(), unsupported.join(", "))],
        ));
    }
    if matches!(req.method, Method::Invite | Method::Update) && !req.body.is_empty() {
        let ctype = header_values(req, "Content-Type").into_iter().next();
        if let Err(found) = sdp_of(ctype.as_deref(), &req.body) {
            tracing::info!("refusing a {} body: {found}", req.method);
            return Some((
                StatusCode::UnsupportedMediaType,
                vec![Header::Other(
                    "Accept".into(),
                    "application/sdp, multipart/mixed".into(),
                )],
            ));
        }
        let encodings = header_values(req, "Content-Encoding");
        if encodings
            .iter()
            .any(|e| !e.eq_ignore_ascii_case("identity"))
        {
            return Some((
                StatusCode::UnsupportedMediaType,
                vec![Header::Other("Accept-Encoding".into(), "identity".into())],
            ));
        }
    }
    if req.method == Method::Invite {
        let accept = header_values(req, "Accept");
        let sdp_ok = accept.is_empty()
            || accept.iter().any(|a| {
                matches!(
                    media_type(a).as_str(),
                    "application/sdp" | "application/*" | "*/*"
                )
            });
        if !sdp_ok {
            return Some((
                StatusCode::NotAcceptable,
                vec![Header::Other("Accept".into(), "application/sdp".into())],
            ));
        }
    }
    None
}

impl SipService {
    /// Binds the SIP socket(s), starts the endpoint, trunk registrations and the inbound router.
    ///
    /// # Errors
    /// When the SIP address cannot be bound.
    /// Starts SIP: `users` is the store of SIP device accounts (`voxgate sip-users`), besides
    /// `[[sip.users]]`.
    pub async fn start(
        cfg: SipConfig,
        http: reqwest::Client,
        users: Option<Arc<dyn crate::store::SipUserStore>>,
    ) -> anyhow::Result<Arc<SipService>> {
        let listen: SocketAddr = cfg.listen.parse()?;
        let cancel = CancellationToken::new();
        let transport = TransportLayer::new(cancel.clone());
        // Every datagram passes `guard` first: malformed requests get their 4xx/5xx there.
        let socket = guard::GuardedUdp::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding SIP UDP {listen}: {e}"))?;
        let udp = UdpConnection::from_socket(Arc::new(socket), None, Some(cancel.child_token()))
            .await
            .map_err(|e| anyhow::anyhow!("SIP UDP {listen}: {e}"))?;
        let local_addr: SocketAddr = udp
            .get_addr()
            .addr
            .clone()
            .try_into()
            .map_err(|e| anyhow::anyhow!("SIP address: {e:?}"))?;
        transport.add_transport(udp.into());
        // TCP is accepted by `stream` (the guard runs there too), on the UDP address.
        let mut tcp = None;
        if cfg.tcp {
            match tokio::net::TcpListener::bind(local_addr).await {
                Ok(l) => tcp = Some(l),
                Err(e) => tracing::warn!("SIP over TCP disabled: cannot bind {local_addr}: {e}"),
            }
        }
        let mut tls_addr = None;
        if let (Some(l), Some(c), Some(k)) = (&cfg.tls_listen, &cfg.tls_cert, &cfg.tls_key) {
            let addr: SocketAddr = l.parse()?;
            let cert =
                std::fs::read(c).map_err(|e| anyhow::anyhow!("reading {}: {e}", c.display()))?;
            let key =
                std::fs::read(k).map_err(|e| anyhow::anyhow!("reading {}: {e}", k.display()))?;
            let tls_cfg = rsipstack::transport::tls::TlsConfig {
                cert: Some(cert),
                key: Some(key),
                ..Default::default()
            };
            let tls = rsipstack::transport::tls::TlsListenerConnection::new(addr, None, tls_cfg)
                .await
                .map_err(|e| anyhow::anyhow!("SIP TLS on {addr}: {e}"))?;
            transport.add_transport(tls.into());
            tls_addr = Some(addr);
        }
        // Dialling out over TLS: the far end's certificate must chain to these CAs.
        let ca_path = cfg
            .tls_ca
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
        match std::fs::read(&ca_path) {
            Ok(ca) => transport.set_tls_config(rsipstack::transport::tls::TlsConfig {
                ca_certs: Some(ca),
                ..Default::default()
            }),
            Err(e) if cfg.tls_ca.is_some() => {
                return Err(anyhow::anyhow!(
                    "sip.tls_ca: reading {}: {e}",
                    ca_path.display()
                ))
            }
            Err(_) => tracing::info!(
                "no CA store at {}: dialling out over TLS will fail until sip.tls_ca is set",
                ca_path.display()
            ),
        }
        let endpoint = rsipstack::EndpointBuilder::new()
            .with_cancel_token(cancel.clone())
            .with_transport_layer(transport)
            .with_user_agent(concat!("voxgate/", env!("CARGO_PKG_VERSION")))
            .build();
        let incoming = endpoint
            .incoming_transactions()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let inner = endpoint.inner.clone();
        if let Some(l) = tcp {
            stream::serve(l, inner.clone(), cancel.child_token());
        }
        let dialogs = Arc::new(DialogLayer::new(inner.clone()));
        let rtp_ip: IpAddr = match &cfg.rtp_address {
            Some(a) => a.parse()?,
            None => local_addr.ip(),
        };
        let public_ip: IpAddr = match &cfg.public_address {
            Some(a) => a.parse()?,
            None => rtp_ip,
        };
        // Who may send out-of-dialog requests: `sip.allow` and every trunk's host.
        let mut allow: Vec<ipnet::IpNet> = cfg
            .allow
            .iter()
            .filter_map(|a| crate::config::parse_net(a))
            .collect();
        for t in &cfg.trunks {
            if let Ok(a) = t.host.parse::<SocketAddr>() {
                allow.push(ipnet::IpNet::from(a.ip()));
                continue;
            }
            if let Ok(ip) = t.host.trim_matches(['[', ']']).parse::<IpAddr>() {
                allow.push(ipnet::IpNet::from(ip));
                continue;
            }
            let (name, port) = match t.host.rsplit_once(':') {
                Some((n, p)) if p.parse::<u16>().is_ok() => {
                    (n.to_string(), p.parse().unwrap_or(5060))
                }
                _ => (t.host.clone(), 5060),
            };
            let found = tokio::net::lookup_host(format!("{name}:{port}"))
                .await
                .map(|a| a.map(|a| ipnet::IpNet::from(a.ip())).collect::<Vec<_>>());
            match found {
                Ok(nets) => allow.extend(nets),
                Err(e) => tracing::warn!(
                    trunk = t.name,
                    "cannot resolve {}: {e}; its requests are refused until it is in sip.allow",
                    t.host
                ),
            }
        }
        let (cfg_users, cfg_realm, cfg_algorithms) = (
            cfg.users.clone(),
            cfg.realm.clone(),
            cfg.digest_algorithms.clone(),
        );
        let svc = Arc::new(SipService {
            cfg,
            allow,
            endpoint: inner,
            dialogs,
            local_addr,
            tls_addr,
            rtp_ip,
            public_ip,
            pending: Mutex::new(HashMap::new()),
            trunk_status: Mutex::new(HashMap::new()),
            waiting: Mutex::new(VecDeque::new()),
            routers: Mutex::new(Vec::new()),
            http,
            cancel: cancel.clone(),
            tasks: TaskTracker::new(),
            pracks: Mutex::new(HashMap::new()),
            replaceable: Mutex::new(HashMap::new()),
            registrar: (!cfg_users.is_empty() || users.is_some()).then(|| {
                registrar::Registrar::new(
                    &cfg_realm,
                    &cfg_algorithms,
                    cfg_users
                        .iter()
                        .map(|u| (u.username.clone(), u.password.clone())),
                    users,
                )
            }),
        });
        tokio::spawn(async move {
            endpoint.serve().await;
            tracing::debug!("SIP endpoint stopped");
        });
        tokio::spawn(svc.clone().route_incoming(incoming));
        for t in svc.cfg.trunks.iter().filter(|t| t.register) {
            tokio::spawn(svc.clone().register_loop(t.clone()));
        }
        for t in svc.cfg.trunks.iter().filter(|t| t.keepalive_secs > 0) {
            tokio::spawn(svc.clone().keepalive_loop(t.clone()));
        }
        Ok(svc)
    }

    /// Waits up to `grace` for BYEs and CANCELs in flight, then stops the endpoint (server
    /// shutdown).
    pub async fn stop(&self, grace: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        self.cancel.cancel();
    }

    /// Runs SIP work that must finish even after its call has ended (a BYE's transaction).
    pub(crate) fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(f);
    }

    /// Sets who takes calls to numbers outside `[[sip.numbers]]` first (the bots).
    pub fn add_router(&self, router: Arc<dyn InboundRouter>) {
        self.routers.lock().expect("lock").push(router);
    }

    /// Our Contact URI.
    pub(crate) fn contact(&self, user: &str) -> rsipstack::sip::Uri {
        let user = if user.is_empty() { "voxgate" } else { user };
        let s = format!(
            "sip:{user}@{}",
            SocketAddr::new(self.public_ip, self.local_addr.port())
        );
        s.as_str().try_into().unwrap_or_default()
    }

    /// Our media description for a new offer or answer on `port`.
    pub(crate) fn local_media(&self, port: u16, prefer: Option<&str>) -> LocalMedia {
        let mut formats = payload_formats(&self.cfg.codecs);
        if let Some(p) = prefer {
            if let Some(i) = formats.iter().position(|f| f.name.eq_ignore_ascii_case(p)) {
                let f = formats.remove(i);
                formats.insert(0, f);
            }
        }
        // telephone-event at each codec clock rate (RFC 4733 §7.1.1): 8 kHz, and 48 kHz for Opus.
        let mut telephone_events = vec![(8000, 101)];
        if formats.iter().any(|f| f.clock_rate == 48000) {
            telephone_events.push((48000, 110));
        }
        let srtp_policy = match self.cfg.srtp.as_str() {
            "off" => SrtpPolicy::Off,
            "required" => SrtpPolicy::Required,
            _ => SrtpPolicy::Optional,
        };
        // A fresh SDES key per session (RFC 4568 §6.1: never reused across sessions).
        let srtp = (srtp_policy != SrtpPolicy::Off)
            .then(|| {
                voxgate_rtp::srtp::SdesKey::generate(
                    voxgate_rtp::srtp::CryptoSuite::AesCm128HmacSha1_80,
                )
            })
            .and_then(|k| k.map_err(|e| tracing::error!("no SRTP key: {e}")).ok());
        LocalMedia {
            address: self.public_ip,
            port,
            formats,
            telephone_events,
            ptime_ms: self.cfg.ptime_ms,
            direction: Direction::SendRecv,
            session_id: (uuid::Uuid::new_v4().as_u128() as u64) >> 1,
            session_version: 1,
            srtp_policy,
            srtp,
        }
    }

    pub(crate) fn media_settings(&self) -> media::MediaSettings {
        media::MediaSettings {
            jitter_min: Duration::from_millis(self.cfg.jitter_min_ms as u64),
            jitter_max: Duration::from_millis(self.cfg.jitter_max_ms as u64),
        }
    }

    /// A `/call/sip` client that has not placed a call waits for inbound calls.
    pub fn add_waiting(&self, id: &str, who: &Principal, call: CallHandle) {
        self.waiting
            .lock()
            .expect("lock")
            .push_back((id.to_string(), who.clone(), call));
    }

    /// The client placed a call or left.
    pub fn remove_waiting(&self, id: &str) {
        self.waiting
            .lock()
            .expect("lock")
            .retain(|(w, _, _)| w != id);
    }

    /// A webhook-announced call that `/call/sip?id=` connects to, if `who` may take it (the
    /// number's owner or an admin).
    pub fn take_pending(self: &Arc<Self>, id: &str, who: &Principal) -> Option<call::IncomingSip> {
        let mut pending = self.pending.lock().expect("lock");
        if !pending.get(id).is_some_and(|c| who.owns(Some(&c.owner))) {
            return None;
        }
        let c = pending.remove(id)?;
        Some(call::IncomingSip::new(self.clone(), c))
    }

    /// The longest-waiting `/call/sip` client that may take a call owned by `owner`.
    fn next_waiting(&self, owner: &str) -> Option<(String, CallHandle)> {
        let mut w = self.waiting.lock().expect("lock");
        let i = w.iter().position(|(_, p, _)| p.owns(Some(owner)))?;
        w.remove(i).map(|(id, _, h)| (id, h))
    }

    /// The trunk for a callee (a number), if any.
    pub(crate) fn trunk(&self) -> Option<&SipTrunk> {
        self.cfg.trunks.first()
    }

    /// Every trunk's status, by name (for `/health`).
    pub fn trunk_status(&self) -> HashMap<String, TrunkStatus> {
        self.trunk_status.lock().expect("lock").clone()
    }

    fn set_status(&self, trunk: &str, f: impl FnOnce(&mut TrunkStatus)) {
        let mut m = self.trunk_status.lock().expect("lock");
        let st = m.entry(trunk.to_string()).or_insert_with(|| TrunkStatus {
            options: "unknown".into(),
            ..Default::default()
        });
        f(st);
        st.updated_at = now_ms();
    }

    /// One out-of-dialog OPTIONS to `host`; the final status code, or why there was none.
    async fn options_ping(&self, host: &str) -> Result<u16, String> {
        use rsipstack::transaction::key::{TransactionKey, TransactionRole};
        let uri: rsipstack::sip::Uri = format!("sip:{host}")
            .as_str()
            .try_into()
            .map_err(|e| format!("bad host: {e}"))?;
        let via = self
            .endpoint
            .get_via(None, None)
            .map_err(|e| e.to_string())?;
        let from = rsipstack::sip::typed::From {
            display_name: None,
            uri: self.contact("voxgate"),
            params: vec![],
        }
        .with_tag(rsipstack::transaction::make_tag());
        let to = rsipstack::sip::typed::To {
            display_name: None,
            uri: uri.clone(),
            params: vec![],
        };
        let req = self
            .endpoint
            .make_request(Method::Options, uri, via, from, to, 1, None);
        let key = TransactionKey::from_request(&req, TransactionRole::Client)
            .map_err(|e| e.to_string())?;
        let mut tx = Transaction::new_client(key, req, self.endpoint.clone(), None);
        tx.send().await.map_err(|e| e.to_string())?;
        while let Some(msg) = tx.receive().await {
            if let rsipstack::sip::SipMessage::Response(r) = msg {
                if r.status_code.kind() != rsipstack::sip::StatusCodeKind::Provisional {
                    return Ok(r.status_code.code());
                }
            }
        }
        Err("no response (transaction timed out)".into())
    }

    async fn keepalive_loop(self: Arc<Self>, trunk: SipTrunk) {
        let every = Duration::from_secs(trunk.keepalive_secs);
        let target = trunk_target(&trunk);
        loop {
            let r = tokio::select! {
                r = self.options_ping(&target) => r,
                _ = self.cancel.cancelled() => return,
            };
            let was = self
                .trunk_status()
                .get(&trunk.name)
                .map(|s| s.options.clone());
            match r {
                Ok(code) => {
                    if was.as_deref() != Some("up") {
                        tracing::info!(trunk = trunk.name, code, "trunk answers OPTIONS: up");
                    }
                    self.set_status(&trunk.name, |s| {
                        s.options = "up".into();
                        s.options_code = Some(code);
                    });
                }
                Err(e) => {
                    if was.as_deref() != Some("down") {
                        tracing::warn!(
                            trunk = trunk.name,
                            "trunk does not answer OPTIONS: down ({e})"
                        );
                    }
                    self.set_status(&trunk.name, |s| {
                        s.options = "down".into();
                        s.options_code = None;
                    });
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    async fn register_loop(self: Arc<Self>, trunk: SipTrunk) {
        let cred = rsipstack::dialog::authenticate::Credential {
            username: trunk.username.clone().unwrap_or_default(),
            password: trunk.password.clone().unwrap_or_default(),
            realm: trunk.realm.clone(),
            auth_username: None,
        };
        let server: rsipstack::sip::Uri = match format!("sip:{}", trunk_target(&trunk))
            .as_str()
            .try_into()
        {
            Ok(u) => u,
            Err(e) => {
                return tracing::error!(trunk = trunk.name, "bad trunk host `{}`: {e}", trunk.host)
            }
        };
        let mut reg =
            rsipstack::dialog::registration::Registration::new(self.endpoint.clone(), Some(cred));
        let mut backoff = Duration::from_secs(5);
        loop {
            let wait = match reg
                .register(server.clone(), Some(trunk.register_expires))
                .await
            {
                Ok(resp)
                    if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful =>
                {
                    let expires = reg.expires().max(60);
                    tracing::info!(trunk = trunk.name, expires, "registered");
                    self.set_status(&trunk.name, |s| s.registration = Some("registered".into()));
                    backoff = Duration::from_secs(5);
                    Duration::from_secs(expires as u64 * 4 / 5)
                }
                Ok(resp) => {
                    tracing::warn!(trunk = trunk.name, status = %resp.status_code, "registration refused; retrying in {backoff:?}");
                    self.set_status(&trunk.name, |s| s.registration = Some("failed".into()));
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                    backoff
                }
                Err(e) => {
                    tracing::warn!(
                        trunk = trunk.name,
                        "registration failed: {e}; retrying in {backoff:?}"
                    );
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                    backoff
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    async fn route_incoming(
        self: Arc<Self>,
        mut incoming: rsipstack::transaction::TransactionReceiver,
    ) {
        while let Some(tx) = incoming.recv().await {
            let svc = self.clone();
            tokio::spawn(async move { svc.on_transaction(tx).await });
        }
    }

    async fn on_transaction(self: Arc<Self>, mut tx: Transaction) {
        // RFC 3261 §8.2.1-§8.2.3: method, extensions, body type, in and out of dialog.
        let in_dialog = tx
            .original
            .to_header()
            .ok()
            .and_then(|t| t.tag().ok().flatten())
            .is_some();
        let registrar = match &self.registrar {
            Some(r) => r.active().await,
            None => false,
        };
        if let Some((code, headers)) = precheck(&tx.original, in_dialog, registrar) {
            tracing::info!(
                method = %tx.original.method,
                code = u16::from(code.clone()),
                "SIP request refused"
            );
            let _ = tx.reply_with(code, headers, None).await;
            return;
        }
        if in_dialog {
            // In-dialog request: the dialog handles BYE, re-INVITE, UPDATE, INFO, OPTIONS, REFER.
            let mut found = self.dialogs.match_dialog(&tx);
            if tx.original.method == Method::PRack {
                // RFC 3262 §3: the PRACK of our reliable 180 lets the 2xx go.
                if let Ok(id) = tx.original.call_id_header() {
                    if let Some((_, w)) = self.pracks.lock().expect("lock").get(id.value()) {
                        let _ = w.send(true);
                    }
                }
            }
            if found.is_none() && tx.original.method != Method::Ack {
                // The far end may send a request right after its 2xx, before our dialog is
                // re-keyed with its tag (issue 10: re-INVITE/UPDATE answered 481): look again
                // for up to DIALOG_SETTLE before answering 481.
                let deadline = tokio::time::Instant::now() + DIALOG_SETTLE;
                while found.is_none() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    found = self.dialogs.match_dialog(&tx);
                }
            }
            match found {
                Some(rsipstack::dialog::dialog::Dialog::Invite(mut d)) => {
                    // Early: no final answer sent yet. A BYE that overtakes the ACK of our 200
                    // (state WaitAck) ends a confirmed call, not a ringing one.
                    let early = d.state().can_cancel();
                    if tx.original.method == Method::Bye
                        && early
                        && d.role() == rsipstack::transaction::key::TransactionRole::Server
                    {
                        // RFC 3261 §15.1.2: a BYE on an early dialog ends the call; the pending
                        // INVITE gets 487 and the BYE 200.
                        tracing::info!("BYE on an early dialog: 487 to the INVITE");
                        let _ = d.reject(Some(StatusCode::RequestTerminated), None);
                        let _ = tx.reply(StatusCode::OK).await;
                        return;
                    }
                    // A request that overtakes the ACK of our 200 (a REFER or UPDATE sent right
                    // after the ACK) would be dropped unanswered by rsipstack in WaitAck: wait for
                    // the ACK (bounded); without it, 500 + Retry-After (RFC 3261 §14.2).
                    let waits_for_ack = !matches!(
                        tx.original.method,
                        Method::Ack | Method::Bye | Method::Cancel | Method::PRack
                    ) && d.role()
                        == rsipstack::transaction::key::TransactionRole::Server;
                    if waits_for_ack {
                        let deadline = tokio::time::Instant::now() + ACK_WAIT;
                        while matches!(d.state(), DialogState::WaitAck(..))
                            && tokio::time::Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if matches!(d.state(), DialogState::WaitAck(..)) {
                            tracing::info!(method = %tx.original.method, "in-dialog request before our 200's ACK: 500");
                            let retry = rsipstack::sip::Header::RetryAfter("1".into());
                            let _ = tx
                                .reply_with(StatusCode::ServerInternalError, vec![retry], None)
                                .await;
                            return;
                        }
                    }
                    if let Err(e) = d.handle(&mut tx).await {
                        tracing::debug!("in-dialog {}: {e}", tx.original.method);
                    }
                    if tx.original.method == Method::Refer {
                        // Our answer is on the wire: now the REFER's first NOTIFY (a NOTIFY
                        // ahead of the 202 confuses strict peers).
                        let call = tx.original.call_id_header().ok().and_then(|id| {
                            self.replaceable
                                .lock()
                                .expect("lock")
                                .get(id.value())
                                .and_then(|w| w.upgrade())
                        });
                        if let Some(c) = call {
                            c.refer_accepted();
                        }
                    }
                }
                _ => {
                    if tx.original.method != Method::Ack {
                        let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
                    }
                }
            }
            return;
        }
        let source = source_ip(&tx.original);
        let allowed = source.is_some_and(|ip| self.allow.iter().any(|n| n.contains(&ip)));
        // `[[sip.users]]`: REGISTER always, and INVITEs from outside `sip.allow`, need digest
        // credentials (RFC 3261 §22.2); nothing is kept for a request that has none.
        let mut user = None;
        let mut tenant = None;
        if let Some(reg) = self.registrar.as_ref().filter(|_| registrar) {
            let method = tx.original.method;
            if method == Method::Register || (method == Method::Invite && !allowed) {
                match reg.authenticate(&tx.original).await {
                    registrar::Auth::User(u, t) => {
                        user = Some(u);
                        tenant = t;
                    }
                    registrar::Auth::Challenge(h) => {
                        tracing::debug!(%method, ?source, "SIP request without credentials: 401");
                        let _ = tx.reply_with(StatusCode::Unauthorized, h, None).await;
                        return;
                    }
                    registrar::Auth::Forbidden(why) => {
                        tracing::info!(%method, ?source, why, "SIP digest authentication failed: 403");
                        let _ = tx.reply(StatusCode::Forbidden).await;
                        return;
                    }
                }
            }
            if method == Method::Register {
                let u = user.unwrap_or_default();
                let (code, headers) = reg.register(&tx.original, &u);
                tracing::info!(user = u, code, "REGISTER");
                let _ = tx.reply_with(StatusCode::from(code), headers, None).await;
                return;
            }
        }
        if user.is_none() && !allowed {
            // Not from a trunk or `sip.allow`: refused before anything is kept (no dialog, no
            // webhook). ACKs get no answer.
            tracing::info!(
                method = %tx.original.method,
                source = ?source,
                "out-of-dialog request from outside sip.allow: 403"
            );
            if tx.original.method != Method::Ack {
                let _ = tx.reply(StatusCode::Forbidden).await;
            }
            return;
        }
        match tx.original.method {
            Method::Invite => self.on_invite(tx, tenant).await,
            Method::Options => {
                let _ = tx
                    .reply_with(StatusCode::OK, capabilities_with(registrar), None)
                    .await;
            }
            Method::Ack => {}
            Method::Bye | Method::Cancel => {
                let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
            }
            _ => {
                // `precheck` refused the others.
                let _ = tx
                    .reply_with(StatusCode::MethodNotAllowed, vec![allow()], None)
                    .await;
            }
        }
    }

    /// RFC 3262 §3: a caller that requires 100rel gets its provisional responses reliably —
    /// `Require: 100rel`, `RSeq: rseq`, retransmitted after T1, 2·T1, ... (500 ms doubling)
    /// until the PRACK comes or 64·T1 (32 s) pass; then the INVITE is refused with 504 (no
    /// PRACK). Without `body` it is the 180; with one (our SDP answer, early media) the 183. The
    /// 2xx, and a later reliable provisional, wait for the PRACK
    /// ([`SipService::prack_received`]).
    pub(crate) fn provisional_reliably(
        self: &Arc<Self>,
        dialog: &InviteDialog,
        rseq: u32,
        body: Option<Vec<u8>>,
    ) {
        let id = dialog
            .initial_request()
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default();
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        self.pracks
            .lock()
            .expect("lock")
            .insert(id.clone(), (rseq, tx));
        let d = dialog.clone();
        let svc = self.clone();
        self.spawn(async move {
            let mut headers = vec![
                rsipstack::sip::Header::Require("100rel".into()),
                rsipstack::sip::Header::Other("RSeq".into(), rseq.to_string()),
            ];
            if body.is_some() {
                headers.push(rsipstack::sip::Header::ContentType(
                    "application/sdp".into(),
                ));
            }
            let mut wait = Duration::from_millis(500);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(32);
            // Bounded: at most 7 retransmissions before the deadline.
            loop {
                let _ = d.ringing(Some(headers.clone()), body.clone());
                let pracked = tokio::time::timeout(wait, rx.wait_for(|p| *p)).await;
                if pracked.is_ok() || !d.state().can_cancel() {
                    break;
                }
                if tokio::time::Instant::now() + wait > deadline {
                    tracing::info!(
                        call_id = id,
                        rseq,
                        "no PRACK for a reliable provisional: 504"
                    );
                    let _ = d.reject(Some(StatusCode::ServerTimeOut), Some("no PRACK".into()));
                    break;
                }
                wait *= 2;
            }
            // A 2xx waiting in `prack_received` holds its own receiver; a later provisional
            // has its own entry.
            let mut pracks = svc.pracks.lock().expect("lock");
            if pracks.get(&id).is_some_and(|(r, _)| *r == rseq) {
                pracks.remove(&id);
            }
        });
    }

    /// The answered call a `Replaces` value (`call-id;to-tag=..;from-tag=..`, RFC 3891 §6.1)
    /// names: its Call-ID and both tags must match one of our dialogs.
    fn replaced_call(&self, value: &str) -> Option<Arc<call::SipCall>> {
        let (call_id, to_tag, from_tag) = parse_replaces(value)?;
        let mut map = self.replaceable.lock().expect("lock");
        map.retain(|_, w| w.strong_count() > 0);
        let c = map.get(&call_id)?.upgrade()?;
        c.has_tags(&to_tag, &from_tag).then_some(c)
    }

    /// Waits (up to 32 s) for the PRACK of a reliable 180 to call `call_id` while one is being
    /// sent; `false` when it never came.
    pub(crate) async fn prack_received(&self, call_id: &str) -> bool {
        let rx = self
            .pracks
            .lock()
            .expect("lock")
            .get(call_id)
            .map(|(_, w)| w.subscribe());
        let Some(mut rx) = rx else {
            return true;
        };
        tokio::time::timeout(Duration::from_secs(32), rx.wait_for(|p| *p))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// An INVITE outside a dialog; `tenant`: the owner of the store account that authenticated
    /// it (its calls belong to that tenant rather than the called number's).
    /// The server dialog of an INVITE outside a dialog; `None` after answering 400 when
    /// rsipstack cannot make one.
    async fn server_dialog(
        &self,
        tx: &mut Transaction,
        callee: &str,
    ) -> Option<(InviteDialog, DialogStateReceiver)> {
        let (state_tx, states) = self.dialogs.new_dialog_state_channel();
        match self.dialogs.get_or_create_server_invite(
            tx,
            state_tx,
            None,
            Some(self.contact(callee)),
        ) {
            Ok(d) => Some((d, states)),
            Err(e) => {
                tracing::debug!("cannot create dialog: {e}");
                let _ = tx.reply(StatusCode::BadRequest).await;
                None
            }
        }
    }

    async fn on_invite(self: Arc<Self>, mut tx: Transaction, tenant: Option<String>) {
        let InviteSummary {
            caller,
            callee,
            offer,
        } = InviteSummary::of(&tx.original);
        if let Some(o) = &offer {
            // Refuse what we could never answer before anyone is bothered.
            if let Err((code, e)) = check_offer(o, &self.local_media(9, None)) {
                tracing::info!(caller, callee, "refusing INVITE: {e}");
                let warning =
                    rsipstack::sip::Header::Warning(format!("399 voxgate \"{e}\"").into());
                let _ = tx.reply_with(code, vec![warning], None).await;
                return;
            }
        }
        // RFC 4028 §8.1: a session interval below our Min-SE is refused before any call state.
        if let Err(min_se) = timer::uas(&tx.original, self.cfg.min_se_secs) {
            tracing::info!(caller, callee, min_se, "Session-Expires below Min-SE: 422");
            let h = rsipstack::sip::Header::MinSE(min_se.to_string().into());
            let _ = tx.reply_with(StatusCode::from(422), vec![h], None).await;
            return;
        }
        // RFC 3891: an INVITE that replaces one of our answered dialogs (attended transfer, call
        // pickup) takes its place in that call, answered at once; 481 when there is none.
        if let Some(rep) = header_values(&tx.original, "Replaces").into_iter().next() {
            let Some(old) = self.replaced_call(&rep) else {
                tracing::info!(
                    caller,
                    callee,
                    replaces = rep,
                    "Replaces matches no answered call: 481"
                );
                let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
                return;
            };
            let Some((dialog, states)) = self.server_dialog(&mut tx, &callee).await else {
                return;
            };
            let call = IncomingCall {
                id: String::new(),
                caller,
                callee,
                offer,
                owner: LOCAL_USER.to_string(),
                source: source_ip(&tx.original),
                headers: x_headers_of(&tx.original),
                dialog: dialog.clone(),
                states,
            };
            let mut d = dialog.clone();
            tokio::spawn(async move {
                if let Err(e) = d.handle(&mut tx).await {
                    tracing::debug!("INVITE transaction: {e}");
                }
            });
            call::replace(self.clone(), old, call);
            return;
        }
        let routers = self.routers.lock().expect("lock").clone();
        let mut router = None;
        for r in routers {
            if r.owns(&callee).await {
                router = Some(r);
                break;
            }
        }
        let bot = router.is_some();
        if let Some(r) = &router {
            if let Err(secs) = r.admit(&callee).await {
                tracing::info!(caller, callee, "over the owner's quota: 486");
                let retry = rsipstack::sip::Header::RetryAfter(secs.max(1).to_string().into());
                let _ = tx.reply_with(StatusCode::BusyHere, vec![retry], None).await;
                return;
            }
        }
        let route = self
            .cfg
            .numbers
            .iter()
            .find(|n| n.number == callee)
            .or_else(|| self.cfg.numbers.iter().find(|n| n.number == "*"))
            .cloned();
        if route.is_none() && !bot {
            tracing::info!(caller, callee, "no [[sip.numbers]] entry: 404");
            let _ = tx.reply(StatusCode::NotFound).await;
            return;
        }
        let Some((dialog, states)) = self.server_dialog(&mut tx, &callee).await else {
            return;
        };
        let id = uuid::Uuid::new_v4().to_string();
        tracing::info!(call = %id, caller, callee, late_offer = offer.is_none(), "incoming call");
        let owner = tenant
            .or_else(|| route.as_ref().and_then(|r| r.user.clone()))
            .unwrap_or_else(|| LOCAL_USER.to_string());
        let x_headers = x_headers_of(&tx.original);
        let call = IncomingCall {
            id: id.clone(),
            caller: caller.clone(),
            callee: callee.clone(),
            offer: offer.clone(),
            owner: owner.clone(),
            source: source_ip(&tx.original),
            headers: x_headers.clone(),
            dialog: dialog.clone(),
            states,
        };
        let mut d = dialog.clone();
        // The INVITE server transaction lives in this task until ACK or CANCEL.
        tokio::spawn(async move {
            if let Err(e) = d.handle(&mut tx).await {
                tracing::debug!("INVITE transaction: {e}");
            }
        });
        if header_values(&dialog.initial_request(), "Require")
            .iter()
            .any(|o| o.eq_ignore_ascii_case("100rel"))
        {
            self.provisional_reliably(&dialog, 1, None);
        } else {
            let _ = dialog.ringing(None, None);
        }
        let ring = Duration::from_secs(self.cfg.ring_timeout_secs);
        if let (true, Some(r)) = (bot, router) {
            r.take(
                &callee,
                Box::new(call::IncomingSip::new(self.clone(), call)),
            )
            .await;
            return;
        }
        match route.and_then(|r| r.webhook) {
            Some(url) => {
                {
                    let mut pending = self.pending.lock().expect("lock");
                    if pending.len() >= self.cfg.max_pending {
                        drop(pending);
                        tracing::warn!(call = %id, "{} inbound calls already wait for a client: 503", self.cfg.max_pending);
                        let _ = call.dialog.reject(
                            Some(StatusCode::ServiceUnavailable),
                            Some("too many calls waiting".into()),
                        );
                        self.dialogs.remove_dialog(&call.dialog.id());
                        return;
                    }
                    pending.insert(id.clone(), call);
                }
                let headers: serde_json::Map<String, serde_json::Value> = x_headers
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                let body = serde_json::json!({
                    "event": "incoming", "callId": id, "caller": caller, "callee": callee, "sdp": offer,
                    "headers": headers, "timestamp": now_ms(), "url": format!("/call/sip?id={id}"),
                });
                let ok = match self
                    .http
                    .post(&url)
                    .timeout(Duration::from_secs(5))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => true,
                    Ok(r) => {
                        tracing::warn!(call = %id, "webhook {url} answered {}", r.status());
                        false
                    }
                    Err(e) => {
                        tracing::warn!(call = %id, "webhook {url} failed: {e}");
                        false
                    }
                };
                if !ok {
                    if let Some(c) = self.pending.lock().expect("lock").remove(&id) {
                        let _ = c.dialog.reject(
                            Some(StatusCode::ServiceUnavailable),
                            Some("webhook failed".into()),
                        );
                        self.dialogs.remove_dialog(&c.dialog.id());
                    }
                    return;
                }
                // Nobody connected in time: 480.
                let svc = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(ring).await;
                    if let Some(c) = svc.pending.lock().expect("lock").remove(&id) {
                        tracing::info!(call = %id, "no client took the call in {ring:?}: 480");
                        let _ = c.dialog.reject(
                            Some(StatusCode::TemporarilyUnavailable),
                            Some("no answer".into()),
                        );
                        svc.dialogs.remove_dialog(&c.dialog.id());
                    }
                });
            }
            None => {
                let mut leg: Box<dyn PendingLeg> =
                    Box::new(call::IncomingSip::new(self.clone(), call));
                loop {
                    let next = self.next_waiting(&owner);
                    let Some((client, handle)) = next else {
                        tracing::info!(call = %id, "no /call/sip client is waiting: 480");
                        leg.refuse("no_answer");
                        break;
                    };
                    match handle.attach(leg).await {
                        Ok(()) => {
                            tracing::debug!(call = %id, client, "handed to a waiting /call/sip client");
                            break;
                        }
                        // That client is gone: the next one.
                        Err(back) => leg = back,
                    }
                }
            }
        }
    }
}

/// Places calls for the call core through this user agent.
pub struct SipDialer(pub Arc<SipService>);

#[async_trait]
impl Dialer for SipDialer {
    async fn dial(
        &self,
        call_id: &str,
        opts: &DialOptions,
        port: LegPort,
    ) -> Result<Box<dyn Leg>, DialError> {
        let leg = call::dial(self.0.clone(), call_id, opts, port).await?;
        Ok(Box::new(leg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(body: &str) -> String {
        format!(
            "INVITE sip:1000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\nFrom: <sip:5551234@127.0.0.1>;tag=a\r\n\
             To: <sip:1000@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// RFC 5621 / RFC 2046 §5.1: the SDP part of a multipart body; other bodies are refused.
    #[test]
    fn sdp_of_finds_the_sdp_part_of_a_multipart_body() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let body = format!(
            "preamble\r\n--unique-boundary-1\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
             --unique-boundary-1\r\nContent-Type: application/sdp ; charset=utf-8\r\nContent-Disposition: session\r\n\r\n{sdp}\r\n\
             --unique-boundary-1\r\nContent-Type: application/resource-lists+xml\r\n\r\n<x/>\r\n--unique-boundary-1--\r\n"
        );
        let ct = "multipart/mixed;boundary=\"unique-boundary-1\"";
        assert_eq!(sdp_of(Some(ct), body.as_bytes()), Ok(Some(sdp.to_string())));
        let no_sdp = body.replace("application/sdp", "text/html");
        assert!(sdp_of(Some(ct), no_sdp.as_bytes())
            .unwrap_err()
            .contains("without an application/sdp part"));
        assert!(
            sdp_of(Some("multipart/mixed"), body.as_bytes()).is_err(),
            "no boundary"
        );
        assert_eq!(
            sdp_of(Some("application/SDP"), sdp.as_bytes()),
            Ok(Some(sdp.into()))
        );
        assert_eq!(sdp_of(None, sdp.as_bytes()), Ok(Some(sdp.into())));
        assert_eq!(sdp_of(Some("text/plain"), b"hi"), Err("text/plain".into()));
        assert_eq!(sdp_of(Some("text/plain"), b"\r\n"), Ok(None));
    }

    #[test]
    fn inspect_datagram_reads_invites_and_classifies_offers() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n";
        let (s, status) = inspect_datagram(invite(sdp).as_bytes()).unwrap().unwrap();
        assert_eq!(
            (s.caller.as_str(), s.callee.as_str(), status),
            ("5551234", "1000", 200)
        );
        assert_eq!(
            inspect_datagram(invite("").as_bytes())
                .unwrap()
                .unwrap()
                .0
                .offer,
            None,
            "late offer"
        );
        assert_eq!(
            inspect_datagram(invite(&sdp.replace("AVP 8", "AVP 18")).as_bytes())
                .unwrap()
                .unwrap()
                .1,
            488
        );
        assert_eq!(
            inspect_datagram(invite("not sdp at all").as_bytes())
                .unwrap()
                .unwrap()
                .1,
            400
        );
        // A response is not routed.
        let response = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\nFrom: <sip:a@127.0.0.1>;tag=a\r\n\
                        To: <sip:b@127.0.0.1>;tag=b\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(inspect_datagram(response.as_bytes()), Ok(None));
        // An OPTIONS request is parsed, not routed.
        let options = invite("")
            .replace("INVITE sip", "OPTIONS sip")
            .replace("1 INVITE", "1 OPTIONS");
        assert_eq!(inspect_datagram(options.as_bytes()), Ok(None));
        // Bytes that are not SIP are an error, not a panic.
        for garbage in [&b""[..], b"\xff\xfe", b"INVITE", b"hello world\r\n\r\n"] {
            assert!(inspect_datagram(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn status_and_reason_mapping_round_trips() {
        use call::{reason_for_status, status_for_reason};
        assert_eq!(reason_for_status(486), "busy");
        assert_eq!(status_for_reason("busy").code(), 486);
        assert_eq!(reason_for_status(480), "no_answer");
        assert_eq!(status_for_reason("no_answer").code(), 480);
        assert_eq!(reason_for_status(603), "declined");
        assert_eq!(status_for_reason("anything").code(), 603);
        assert_eq!(reason_for_status(488), "codec_mismatch");
        assert_eq!(reason_for_status(500), "failed");
    }
}
