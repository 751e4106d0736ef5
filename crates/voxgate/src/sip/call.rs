//! One call's SIP side as a leg of the call core: the dialog (outbound INVITE or inbound
//! INVITE), its in-dialog requests (re-INVITE/UPDATE hold, INFO DTMF, OPTIONS, NOTIFY, BYE) and
//! the RTP leg ([`super::media`]). rsipstack types stay in this module; the core sees
//! [`LegEvent`]s and plain values.
//!
//! Nothing here makes the call's task wait: answering (which may wait up to 5 s for a late
//! offer's ACK), REFER, and the BYE or CANCEL at the end run on the leg's own tasks.
//!
//! SIP status → `hangup` reason (RFC 3261 §21): 486/600 `busy`, 408/480/487 `no_answer`,
//! 603 `declined`, 404/484/604 `not_found`, 488/606 `codec_mismatch`, other 4xx–6xx `failed`.
//! `hangup` reason → SIP status when refusing an inbound call: `busy` 486, `no_answer` 480,
//! anything else 603 Decline.

use super::media::{self, AudioSink, MediaControl, MediaHandle, RtpSockets};
use super::timer::SessionTimer;
use super::{IncomingCall, SipService};
use async_trait::async_trait;
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::task::JoinHandle;
use voxgate_call::{
    DialError, DialOptions, Leg, LegCaps, LegCommand, LegEvent, LegInfo, LegPort, LegReply,
    LegReport, PendingLeg,
};
use voxgate_media::codec::Codec;
use voxgate_media::resample::StreamResampler;
use voxgate_media::{AudioFrame, SampleRate};
use voxgate_rtp::sdp::{self, LocalMedia, Negotiated, SdpError};

/// The SDP encoding name of a codec the client asked to prefer (`None`: no preference).
fn sdp_name(codec: Option<Codec>) -> Option<&'static str> {
    match codec? {
        Codec::Pcmu => Some("PCMU"),
        Codec::Pcma => Some("PCMA"),
        Codec::G722 => Some("G722"),
        Codec::Opus => Some("opus"),
        Codec::Pcm(_) => None,
    }
}

/// Maps a final SIP status to a `hangup` reason.
pub fn reason_for_status(code: u16) -> &'static str {
    match code {
        486 | 600 => "busy",
        408 | 480 | 487 => "no_answer",
        603 => "declined",
        404 | 484 | 604 => "not_found",
        488 | 606 => "codec_mismatch",
        _ => "failed",
    }
}

/// Maps a `hangup` reason to the status that refuses an inbound call.
pub fn status_for_reason(reason: &str) -> StatusCode {
    match reason {
        "busy" => StatusCode::BusyHere,
        "no_answer" => StatusCode::TemporarilyUnavailable,
        _ => StatusCode::Decline,
    }
}

/// The seed-002 codec name of a negotiated SDP codec (stored with the call).
fn codec_label(neg: &Negotiated) -> String {
    media::codec_for(&neg.codec.name, neg.codec.clock_rate)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| neg.codec.name.to_ascii_lowercase())
}

/// State shared with the in-dialog request handler.
struct Shared {
    local: LocalMedia,
    negotiated: Option<Negotiated>,
    control: Option<tokio::sync::mpsc::Sender<MediaControl>>,
}

/// Everything about one call's SIP side that its tasks share.
pub(crate) struct SipCall {
    svc: Arc<SipService>,
    dialog: InviteDialog,
    outbound: bool,
    offer: Option<String>,
    port: LegPort,
    call_id: String,
    shared: Arc<Mutex<Shared>>,
    sockets: Mutex<Option<RtpSockets>>,
    media: Mutex<Option<MediaHandle>>,
    sink: OnceLock<AudioSink>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    answered: AtomicBool,
    /// Early media is up (our 183 carried this SDP answer; the negotiated codec's name): the
    /// 200 repeats the answer.
    early: Mutex<Option<(String, String)>>,
    /// The dialog is over without us: the far end ended it, or a final answer went out.
    ended: AtomicBool,
    /// The far end's signalling address: RTP from it may be latched as well as RTP from the
    /// SDP's address (symmetric RTP behind NAT), from nowhere else.
    peer_ip: Option<std::net::IpAddr>,
    /// The dialog's session timer (RFC 4028), once negotiated.
    timer: Mutex<Option<SessionTimer>>,
    /// When the far end last refreshed the session (re-INVITE or UPDATE), or it began.
    refreshed: Mutex<std::time::Instant>,
    /// While this is the call to a REFER's target and it has not answered: its events go to
    /// the transfer's task instead of the call.
    attempt: Mutex<Option<tokio::sync::mpsc::Sender<LegEvent>>>,
    /// A REFER from the far end waiting for the application: (target, Referred-By, the
    /// `Replaces` to put on the INVITE).
    #[allow(clippy::type_complexity)]
    refer: Mutex<Option<(String, Option<String>, Option<String>)>>,
    /// The call to the target of a REFER we accepted, while it rings.
    transferee: Mutex<Option<Arc<SipCall>>>,
    /// How the leg switches to a transfer target once it answers.
    swap: Arc<Swap>,
    /// A transfer target took this dialog's place: its end no longer ends the call.
    replaced: AtomicBool,
    /// A REFER was just accepted (202): its first NOTIFY and `transfer` event are due.
    refer_new: AtomicBool,
}

/// The leg's switch to a transfer target (a REFER received, RFC 3515): the transfer's task
/// puts the answered call in `next`, the leg takes it on its next use.
#[derive(Default)]
pub(crate) struct Swap {
    ready: AtomicBool,
    next: Mutex<Option<Arc<SipCall>>>,
}

/// The IP of a URI's host (resolved when it is a name; port 5060 unless given).
async fn host_ip(uri: &rsipstack::sip::Uri) -> Option<std::net::IpAddr> {
    let hp = uri.host_with_port.to_string();
    if let Ok(a) = hp.parse::<std::net::SocketAddr>() {
        return Some(a.ip());
    }
    if let Ok(ip) = hp.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Some(ip);
    }
    let q = if hp.contains(':') {
        hp
    } else {
        format!("{hp}:5060")
    };
    tokio::net::lookup_host(q)
        .await
        .ok()?
        .next()
        .map(|a| a.ip())
}

fn sdp_header() -> Header {
    Header::ContentType("application/sdp".into())
}

fn caps() -> LegCaps {
    LegCaps {
        rfc4733: true,
        transfer: true,
        playout_marks: false,
    }
}

/// An inbound SIP call waiting for a call to take it (a waiting `/call/sip` client, the
/// `/call/sip?id=` a webhook announced, a bot's number).
pub struct IncomingSip {
    svc: Arc<SipService>,
    call: IncomingCall,
    info: LegInfo,
}

impl IncomingSip {
    pub fn new(svc: Arc<SipService>, call: IncomingCall) -> Self {
        let info = LegInfo {
            kind: "sip",
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            offer: call.offer.clone(),
            ringing: true,
            caps: caps(),
            headers: call.headers.clone(),
        };
        IncomingSip { svc, call, info }
    }
}

impl PendingLeg for IncomingSip {
    fn info(&self) -> &LegInfo {
        &self.info
    }

    fn into_leg(self: Box<Self>, port: LegPort) -> Box<dyn Leg> {
        let IncomingSip { svc, call, info } = *self;
        let IncomingCall {
            id,
            offer,
            dialog,
            states,
            source,
            ..
        } = call;
        let local = svc.local_media(0, None);
        let c = Arc::new(SipCall {
            peer_ip: source,
            svc,
            dialog,
            outbound: false,
            offer,
            port,
            call_id: id,
            shared: Arc::new(Mutex::new(Shared {
                local,
                negotiated: None,
                control: None,
            })),
            sockets: Mutex::new(None),
            media: Mutex::new(None),
            sink: OnceLock::new(),
            tasks: Mutex::new(Vec::new()),
            answered: AtomicBool::new(false),
            early: Mutex::new(None),
            ended: AtomicBool::new(false),
            timer: Mutex::new(None),
            refreshed: Mutex::new(std::time::Instant::now()),
            attempt: Mutex::new(None),
            refer: Mutex::new(None),
            transferee: Mutex::new(None),
            swap: Arc::new(Swap::default()),
            replaced: AtomicBool::new(false),
            refer_new: AtomicBool::new(false),
        });
        // Not accepted in time: the caller gets 480 (`hangup` reason `no_answer`).
        c.start_ring_timer();
        c.watch(states);
        Box::new(SipLeg::new(info, c))
    }

    fn refuse(self: Box<Self>, reason: &str) {
        let text = match reason {
            "busy" => "client busy",
            "no_answer" => "no client waiting",
            other => other,
        };
        tracing::info!(call = %self.call.id, reason, "refusing inbound call");
        let _ = self
            .call
            .dialog
            .reject(Some(status_for_reason(reason)), Some(text.to_string()));
        self.svc.dialogs.remove_dialog(&self.call.dialog.id());
    }
}

/// Places a call: `callee` is a `sip:` URI, or a number sent through the first trunk.
///
/// # Errors
/// [`DialError`] (sender `sip`, code 400): no callee, a number without a trunk, a bad URI, no
/// free RTP port.
pub async fn dial(
    svc: Arc<SipService>,
    call_id: &str,
    o: &DialOptions,
    port: LegPort,
) -> Result<SipLeg, DialError> {
    let (c, info) = place(svc, call_id, o, port, Arc::new(Swap::default()), None).await?;
    Ok(SipLeg::new(info, c))
}

/// Sends the INVITE of [`dial`]; `attempt`: the events of a transfer target go there until it
/// answers, `swap` is the leg's.
async fn place(
    svc: Arc<SipService>,
    call_id: &str,
    o: &DialOptions,
    port: LegPort,
    swap: Arc<Swap>,
    attempt: Option<tokio::sync::mpsc::Sender<LegEvent>>,
) -> Result<(Arc<SipCall>, LegInfo), DialError> {
    let err = |message: String| DialError {
        sender: "sip",
        message,
        code: Some(400),
    };
    let callee = o
        .callee
        .clone()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            err("`invite` on /call/sip needs `option.callee` (a number or a sip: URI)".into())
        })?;
    let registered = svc.registrar.as_ref().and_then(|r| r.contact_of(&callee));
    let (target, trunk) = if callee.starts_with("sip:") || callee.starts_with("sips:") {
        (callee.clone(), None)
    } else if let Some(contact) = registered {
        // A `[[sip.users]]` device registered with us: dial where it registered from.
        (contact, None)
    } else {
        let t = svc.trunk().ok_or_else(|| err(format!("callee `{callee}` is a number but no [[sip.trunks]] is configured; use a sip: URI")))?.clone();
        let mut number = callee.clone();
        if let Some(p) = &t.strip_prefix {
            if let Some(rest) = number.strip_prefix(p.as_str()) {
                number = rest.to_string();
            }
        }
        if let Some(p) = &t.add_prefix {
            number = format!("{p}{number}");
        }
        let transport = match t.transport.as_str() {
            "tcp" => ";transport=tcp",
            "tls" => ";transport=tls",
            _ => "",
        };
        (format!("sip:{number}@{}{transport}", t.host), Some(t))
    };
    let caller = o
        .caller
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| trunk.as_ref().and_then(|t| t.caller_id.clone()))
        .unwrap_or_else(|| "voxgate".into());
    let callee_uri: rsipstack::sip::Uri = target
        .as_str()
        .try_into()
        .map_err(|e| err(format!("bad callee URI `{target}`: {e}")))?;
    let from_host = trunk
        .as_ref()
        .map(|t| t.host.clone())
        .unwrap_or_else(|| svc.local_addr.to_string());
    let caller_uri: rsipstack::sip::Uri =
        format!("sip:{caller}@{from_host}")
            .as_str()
            .try_into()
            .map_err(|e| err(format!("bad caller `{caller}`: {e}")))?;
    let sockets = media::bind_pair(svc.rtp_ip, svc.cfg.rtp_port_min, svc.cfg.rtp_port_max)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut local = svc.local_media(sockets.port, sdp_name(o.codec));
    if trunk.as_ref().is_some_and(|t| t.srtp) && local.srtp.is_some() {
        // `srtp = true` on the trunk: RTP/SAVP with our SDES key.
        local.srtp_policy = voxgate_rtp::sdp::SrtpPolicy::Required;
    }
    let offer = sdp::build_offer(&local);
    let credential = trunk.as_ref().and_then(|t| {
        Some(rsipstack::dialog::authenticate::Credential {
            username: t.username.clone()?,
            password: t.password.clone()?,
            realm: t.realm.clone(),
            auth_username: None,
        })
    });
    let opt_callee = callee_uri.clone();
    let opt = InviteOption {
        caller: caller_uri,
        callee: callee_uri,
        content_type: Some("application/sdp".into()),
        offer: Some(offer.clone().into_bytes()),
        contact: svc.contact(&caller),
        credential,
        // RFC 3262: `Supported: 100rel`; a reliable 18x is PRACKed by the dialog layer.
        support_prack: true,
        headers: Some(
            super::timer::uac_request_headers(svc.cfg.session_expires_secs, svc.cfg.min_se_secs)
                .into_iter()
                .chain(
                    o.headers
                        .iter()
                        .map(|(k, v)| rsipstack::sip::Header::Other(k.clone(), v.clone())),
                )
                .collect(),
        ),
        ..Default::default()
    };
    let (state_tx, states) = svc.dialogs.new_dialog_state_channel();
    let (dialog, result) = svc
        .dialogs
        .do_invite_async(opt, state_tx)
        .map_err(|e| err(format!("INVITE failed: {e}")))?;
    tracing::info!(call = %call_id, target, "dialing");
    let peer_ip = host_ip(&opt_callee).await;
    let c = Arc::new(SipCall {
        peer_ip,
        svc: svc.clone(),
        dialog,
        outbound: true,
        offer: Some(offer),
        port: port.clone(),
        call_id: call_id.to_string(),
        shared: Arc::new(Mutex::new(Shared {
            local,
            negotiated: None,
            control: None,
        })),
        sockets: Mutex::new(Some(sockets)),
        media: Mutex::new(None),
        sink: OnceLock::new(),
        tasks: Mutex::new(Vec::new()),
        answered: AtomicBool::new(false),
        early: Mutex::new(None),
        ended: AtomicBool::new(false),
        timer: Mutex::new(None),
        refreshed: Mutex::new(std::time::Instant::now()),
        attempt: Mutex::new(attempt),
        refer: Mutex::new(None),
        transferee: Mutex::new(None),
        swap: swap.clone(),
        replaced: AtomicBool::new(false),
        refer_new: AtomicBool::new(false),
    });
    let cc = c.clone();
    c.push_task(tokio::spawn(async move {
        let events = match result.await {
            Ok(Ok((_, Some(resp))))
                if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful
                    && resp
                        .headers
                        .iter()
                        .any(|h| h.name().eq_ignore_ascii_case(super::guard::NO_CONTACT_MARK)) =>
            {
                // RFC 3261 §12.1.2 / §13.2.2.4: a 2xx without Contact leaves no remote target:
                // it was ACKed (the guard lent it the To URI); the call ends with BYE.
                tracing::warn!(call = %cc.call_id, "the far end answered without a Contact: BYE");
                vec![
                    LegEvent::Error {
                        sender: "sip".into(),
                        message: "the far end answered without a Contact header (RFC 3261 §12.1.2); the call was ended with BYE".into(),
                        code: Some(502),
                    },
                    LegEvent::Ended {
                        reason: "failed".into(),
                        initiator: "system".into(),
                    },
                ]
            }
            Ok(Ok((_, Some(resp))))
                if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful =>
            {
                let sdp = String::from_utf8_lossy(&resp.body).to_string();
                if let Some(t) = super::timer::uac(&resp) {
                    cc.start_session_timer(t);
                }
                match cc.on_answered(&sdp) {
                    Ok(codec) => {
                        cc.register_replaceable();
                        vec![LegEvent::Answered {
                            sdp: Some(sdp),
                            codec,
                        }]
                    }
                    Err((code, e)) => vec![
                        LegEvent::Error {
                            sender: "sip".into(),
                            message: format!("unusable SDP answer: {e}"),
                            code: Some(code),
                        },
                        LegEvent::Ended {
                            reason: "codec_mismatch".into(),
                            initiator: "system".into(),
                        },
                    ],
                }
            }
            other => {
                let (code, reason) = match other {
                    Ok(Ok((_, Some(resp)))) => {
                        (resp.status_code.code(), resp.status_code.to_string())
                    }
                    Ok(Ok((_, None))) => (408, "no final response".to_string()),
                    Ok(Err(e)) => (503, e.to_string()),
                    Err(e) => (500, e.to_string()),
                };
                cc.ended.store(true, Ordering::SeqCst);
                vec![
                    LegEvent::Error {
                        sender: "sip".into(),
                        message: format!("call failed: {reason}"),
                        code: Some(code),
                    },
                    LegEvent::Ended {
                        reason: reason_for_status(code).into(),
                        initiator: "callee".into(),
                    },
                ]
            }
        };
        for e in events {
            let _ = cc.report(e).await;
        }
    }));
    c.start_ring_timer();
    c.watch(states);
    let info = LegInfo {
        kind: "sip",
        caller,
        callee,
        offer: None,
        ringing: false,
        caps: caps(),
        headers: Vec::new(),
    };
    Ok((c, info))
}

impl SipCall {
    /// Reports to the call (or to the transfer's task while this is an unanswered transfer
    /// target); nothing once a transfer target replaced this dialog.
    async fn report(&self, ev: LegEvent) -> Result<(), voxgate_call::CallGone> {
        let attempt = self.attempt.lock().ok().and_then(|a| a.clone());
        match attempt {
            Some(tx) => tx.send(ev).await.map_err(|_| voxgate_call::CallGone),
            None if self.replaced.load(Ordering::SeqCst) => Ok(()),
            None => self.port.event(ev).await,
        }
    }

    /// NOTIFY of a REFER's progress (RFC 3515 §2.4.5): a `message/sipfrag` status line.
    async fn notify_sipfrag(&self, code: u16, subscription_state: &str) {
        let reason = StatusCode::from(code).text().to_string();
        let headers = vec![
            Header::Event("refer".into()),
            Header::SubscriptionState(subscription_state.into()),
            Header::ContentType("message/sipfrag;version=2.0".into()),
        ];
        let body = format!("SIP/2.0 {code} {reason}\r\n").into_bytes();
        if let Err(e) = self.dialog.notify(Some(headers), Some(body)).await {
            tracing::debug!(call = %self.call_id, "NOTIFY of the REFER: {e}");
        }
    }

    /// A REFER from the far end (RFC 3515 §2.4.2): 202, the first NOTIFY (100 Trying), and a
    /// `transfer` event for the application. Refused with 400 (no usable Refer-To), 501 (an
    /// attended transfer's `Replaces`, not supported) or 491 (a transfer already under way).
    async fn on_refer(
        self: &Arc<Self>,
        req: &rsipstack::sip::Request,
    ) -> (StatusCode, Option<String>) {
        let refer_to = super::header_values(req, "Refer-To")
            .into_iter()
            .chain(super::header_values(req, "r"))
            .next();
        let Some(uri) = refer_to.map(|v| super::guard::addr_uri(&v).to_string()) else {
            return (StatusCode::BadRequest, Some("Missing Refer-To".into()));
        };
        let lower = uri.to_ascii_lowercase();
        if !(lower.starts_with("sip:") || lower.starts_with("sips:") || lower.starts_with("tel:")) {
            return (
                StatusCode::BadRequest,
                Some("Refer-To is not a SIP URI".into()),
            );
        }
        let busy = self.refer.lock().map(|r| r.is_some()).unwrap_or(true)
            || self.transferee.lock().map(|t| t.is_some()).unwrap_or(true);
        if busy {
            return (StatusCode::RequestPending, None);
        }
        // Header parameters (`?Replaces=...`, RFC 3891 §5 attended transfer) go on the INVITE to
        // the target; the target is the URI without them.
        let (target, uri_headers) = match uri.split_once('?') {
            Some((t, h)) => (t.to_string(), Some(h.to_string())),
            None => (uri.clone(), None),
        };
        let replaces = uri_headers.as_deref().and_then(uri_header_replaces);
        let referred_by = super::header_values(req, "Referred-By")
            .into_iter()
            .chain(super::header_values(req, "b"))
            .next()
            .map(|v| super::guard::addr_uri(&v).to_string());
        if let Ok(mut r) = self.refer.lock() {
            *r = Some((target.clone(), referred_by.clone(), replaces));
        }
        tracing::info!(call = %self.call_id, %target, "REFER received");
        self.refer_new.store(true, Ordering::SeqCst);
        (StatusCode::Accepted, None)
    }

    /// After the 202 to a REFER: the first NOTIFY (100 Trying, RFC 3515 §2.4.4) and the
    /// `transfer` event (`requested`) for the application.
    pub(crate) fn refer_accepted(self: &Arc<Self>) {
        if !self.refer_new.swap(false, Ordering::SeqCst) {
            return;
        }
        let pending = self.refer.lock().ok().and_then(|r| r.clone());
        let Some((target, referred_by, _)) = pending else {
            return;
        };
        let c = self.clone();
        self.push_task(tokio::spawn(async move {
            c.notify_sipfrag(100, "active;expires=60").await;
            let _ = c
                .report(LegEvent::Transfer {
                    target,
                    state: "requested".into(),
                    referred_by,
                    code: None,
                })
                .await;
        }));
    }

    /// The application's answer to a REFER: refused → NOTIFY 603; accepted → the target is
    /// called (From: us, `Referred-By` passed on, RFC 3892), its progress NOTIFYed; when it
    /// answers the leg switches to it and the transferor gets NOTIFY 200 and BYE; when it
    /// fails the transferor gets the target's status and the call goes on with it.
    fn transfer_reply(self: &Arc<Self>, accept: bool) -> Result<(), String> {
        let (target, referred_by, replaces) =
            self.refer.lock().ok().and_then(|mut r| r.take()).ok_or(
                "no transfer was asked for: wait for a `transfer` event with state `requested`",
            )?;
        let c = self.clone();
        let (t, rb) = (target.clone(), referred_by.clone());
        let event = move |state: &str, code: Option<u16>| LegEvent::Transfer {
            target: t.clone(),
            state: state.into(),
            referred_by: rb.clone(),
            code,
        };
        if !accept {
            self.push_task(tokio::spawn(async move {
                c.notify_sipfrag(603, "terminated;reason=rejected").await;
                let _ = c.report(event("rejected", Some(603))).await;
            }));
            return Ok(());
        }
        self.push_task(tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let mut headers = Vec::new();
            if let Some(rb) = &referred_by {
                headers.push(("Referred-By".to_string(), format!("<{rb}>")));
            }
            if let Some(r) = &replaces {
                headers.push(("Replaces".to_string(), r.clone()));
            }
            // `tel:` targets are numbers for the trunk.
            let callee = target.strip_prefix("tel:").unwrap_or(&target).to_string();
            let o = DialOptions {
                callee: Some(callee),
                headers,
                ..Default::default()
            };
            let new = match place(
                c.svc.clone(),
                &c.call_id,
                &o,
                c.port.clone(),
                c.swap.clone(),
                Some(tx),
            )
            .await
            {
                Ok((n, _)) => n,
                Err(e) => {
                    let code = e.code.unwrap_or(500);
                    tracing::info!(call = %c.call_id, %target, "transfer failed: {}", e.message);
                    c.notify_sipfrag(code, "terminated;reason=noresource").await;
                    let _ = c.report(event("failed", Some(code))).await;
                    return;
                }
            };
            if let Ok(mut t) = c.transferee.lock() {
                *t = Some(new.clone());
            }
            let mut failure = None;
            // Bounded by the target's ring timeout (`sip.ring_timeout_secs`).
            while let Some(ev) = rx.recv().await {
                match ev {
                    LegEvent::Ringing { .. } => {
                        c.notify_sipfrag(180, "active;expires=60").await;
                        let _ = c.report(event("ringing", None)).await;
                    }
                    LegEvent::Answered { .. } => {
                        // The target answered: it becomes the leg; the transferor is done.
                        if let Ok(mut t) = c.transferee.lock() {
                            *t = None;
                        }
                        c.hand_over(&new);
                        tracing::info!(call = %c.call_id, %target, "transfer completed");
                        c.notify_sipfrag(200, "terminated;reason=noresource").await;
                        let _ = new.report(event("completed", Some(200))).await;
                        c.end_dialog().await;
                        return;
                    }
                    LegEvent::Error { code, .. } => failure = failure.or(code),
                    LegEvent::Ended { reason, .. } => {
                        let code = failure.unwrap_or(match reason.as_str() {
                            "busy" => 486,
                            "no_answer" => 480,
                            "declined" => 603,
                            "not_found" => 404,
                            _ => 500,
                        });
                        if !new.ended.swap(true, Ordering::SeqCst) {
                            // Still ringing (our ring timeout): CANCEL it.
                            let _ = new.dialog.hangup().await;
                        }
                        new.abort_tasks();
                        if let Ok(mut t) = c.transferee.lock() {
                            *t = None;
                        }
                        tracing::info!(call = %c.call_id, %target, code, "transfer failed");
                        c.notify_sipfrag(code, "terminated;reason=noresource").await;
                        let _ = c.report(event("failed", Some(code))).await;
                        return;
                    }
                    _ => {}
                }
            }
        }));
        Ok(())
    }

    /// Whether this call's dialog has these two tags (RFC 3891 §3: the Replaces header's
    /// to-tag and from-tag, as the sender saw them).
    pub(crate) fn has_tags(&self, a: &str, b: &str) -> bool {
        let id = self.dialog.id();
        (id.local_tag == a && id.remote_tag == b) || (id.local_tag == b && id.remote_tag == a)
    }

    /// Answered: an INVITE with `Replaces` may now name this call.
    fn register_replaceable(self: &Arc<Self>) {
        if let Ok(mut m) = self.svc.replaceable.lock() {
            m.insert(self.sip_call_id(), Arc::downgrade(self));
        }
    }

    fn unregister_replaceable(&self) {
        if let Ok(mut m) = self.svc.replaceable.lock() {
            let id = self.sip_call_id();
            if m.get(&id).is_some_and(|w| std::ptr::eq(w.as_ptr(), self)) {
                m.remove(&id);
            }
        }
    }

    /// `new` (answered) takes this dialog's place in the call: the leg switches to it, this
    /// dialog's media stops and its end no longer ends the call.
    fn hand_over(&self, new: &Arc<SipCall>) {
        if let Ok(mut a) = new.attempt.lock() {
            *a = None;
        }
        self.replaced.store(true, Ordering::SeqCst);
        self.unregister_replaceable();
        let old_media = self.media.lock().ok().and_then(|mut m| m.take());
        if let Ok(mut next) = self.swap.next.lock() {
            *next = Some(new.clone());
        }
        self.swap.ready.store(true, Ordering::SeqCst);
        if let Some(m) = old_media {
            m.task.abort();
        }
    }

    /// BYE (or CANCEL) for this dialog, unless it is over already.
    async fn end_dialog(&self) {
        if !self.ended.swap(true, Ordering::SeqCst) {
            let r = if self.outbound {
                self.dialog.hangup().await
            } else {
                self.dialog.bye().await
            };
            if let Err(e) = r {
                tracing::debug!(call = %self.call_id, "ending the replaced dialog: {e}");
            }
        }
    }

    fn abort_tasks(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }

    /// Headers of our 2xx to the initial INVITE: Content-Type and, when the caller asked for a
    /// session timer, the one we grant (RFC 4028 §9; too short an interval was refused with 422
    /// before the call was set up).
    fn answer_headers(&self) -> Vec<Header> {
        let mut headers = vec![sdp_header()];
        let req = self.dialog.initial_request();
        if let Ok(Some((t, more))) = super::timer::uas(&req, self.svc.cfg.min_se_secs) {
            if let Ok(mut slot) = self.timer.lock() {
                *slot = Some(t);
            }
            headers.extend(more);
        }
        headers
    }

    /// Runs the dialog's session timer (RFC 4028 §10): as refresher, an UPDATE (a re-INVITE
    /// with our SDP if the far end refuses UPDATE) every half interval; otherwise BYE when the
    /// far end has not refreshed for [`SessionTimer::expires_after`]. Either way a failure ends
    /// the call with an `error` (408) and `hangup` (`failed`, `system`).
    fn start_session_timer(self: &Arc<Self>, t: SessionTimer) {
        if let Ok(mut slot) = self.timer.lock() {
            *slot = Some(t);
        }
        if let Ok(mut r) = self.refreshed.lock() {
            *r = std::time::Instant::now();
        }
        tracing::debug!(call = %self.call_id, interval = t.interval, we_refresh = t.we_refresh, "session timer");
        let c = self.clone();
        // Bounded by the call: the task is aborted when the leg closes.
        self.push_task(tokio::spawn(async move {
            loop {
                if t.we_refresh {
                    tokio::time::sleep(t.refresh_every()).await;
                    if c.ended.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Err(why) = c.refresh(&t).await {
                        c.session_failed(format!("session refresh failed: {why}"))
                            .await;
                        return;
                    }
                } else {
                    let since = c.refreshed.lock().map(|r| r.elapsed()).unwrap_or_default();
                    let left = t.expires_after().saturating_sub(since);
                    if left.is_zero() {
                        c.session_failed(format!(
                            "session expired: no refresh within {} s (RFC 4028 §10)",
                            t.expires_after().as_secs()
                        ))
                        .await;
                        return;
                    }
                    tokio::time::sleep(left).await;
                    if c.ended.load(Ordering::SeqCst) {
                        return;
                    }
                }
            }
        }));
    }

    /// One refresh: UPDATE without a body; on 405/501, a re-INVITE with our current SDP.
    async fn refresh(&self, t: &SessionTimer) -> Result<(), String> {
        let headers = vec![t.header(), Header::Supported("timer".into())];
        let resp = self
            .dialog
            .update(Some(headers.clone()), None)
            .await
            .map_err(|e| e.to_string())?;
        let code = resp.as_ref().map(|r| u16::from(r.status_code.clone()));
        let resp = match code {
            Some(405 | 501) => {
                let local = self.shared.lock().map_err(|_| "lock")?.local.clone();
                let mut h = headers;
                h.push(sdp_header());
                self.dialog
                    .reinvite(Some(h), Some(sdp::build_offer(&local).into_bytes()))
                    .await
                    .map_err(|e| e.to_string())?
            }
            _ => resp,
        };
        match resp {
            Some(r) if r.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful => Ok(()),
            Some(r) => Err(format!("the far end answered {}", r.status_code)),
            None => Err("no answer".into()),
        }
    }

    /// An inbound call that cannot go on: refused with `code` unless a final answer already
    /// went out (a no-op then), reported as `error` and `hangup` (reason from the status).
    async fn refuse(&self, code: u16, message: String) {
        let _ = self.dialog.reject(Some(StatusCode::from(code)), None);
        self.ended.store(true, Ordering::SeqCst);
        let _ = self
            .report(LegEvent::Error {
                sender: "sip".into(),
                message,
                code: Some(code),
            })
            .await;
        let _ = self
            .report(LegEvent::Ended {
                reason: reason_for_status(code).into(),
                initiator: "system".into(),
            })
            .await;
    }

    async fn session_failed(&self, message: String) {
        tracing::warn!(call = %self.call_id, "{message}");
        let _ = self
            .report(LegEvent::Error {
                sender: "sip".into(),
                message,
                code: Some(408),
            })
            .await;
        let _ = self
            .report(LegEvent::Ended {
                reason: "failed".into(),
                initiator: "system".into(),
            })
            .await;
    }

    fn push_task(&self, t: JoinHandle<()>) {
        if let Ok(mut v) = self.tasks.lock() {
            v.push(t);
        }
    }

    /// After `sip.ring_timeout_secs` an unanswered call ends with `no_answer` (inbound: 480;
    /// outbound: CANCEL).
    fn start_ring_timer(self: &Arc<Self>) {
        let c = self.clone();
        let ring = std::time::Duration::from_secs(self.svc.cfg.ring_timeout_secs);
        self.push_task(tokio::spawn(async move {
            tokio::time::sleep(ring).await;
            if !c.answered.load(Ordering::SeqCst) && !c.ended.load(Ordering::SeqCst) {
                let _ = c
                    .report(LegEvent::Ended {
                        reason: "no_answer".into(),
                        initiator: "system".into(),
                    })
                    .await;
            }
        }));
    }

    /// Sends DTMF keys as RFC 4733 events.
    fn send_dtmf(&self, keys: &str, duration_ms: u32) -> Result<(), String> {
        let media = self.media.lock().map_err(|_| "media lock")?;
        let m = media.as_ref().ok_or("the call is not answered")?;
        if self
            .shared
            .lock()
            .map_err(|_| "lock")?
            .negotiated
            .as_ref()
            .and_then(|n| n.telephone_event)
            .is_none()
        {
            return Err("the far end did not offer telephone-event (RFC 4733)".into());
        }
        m.control
            .try_send(MediaControl::Dtmf(keys.into(), duration_ms))
            .map_err(|_| "DTMF queue full".to_string())
    }

    fn sip_call_id(&self) -> String {
        self.dialog
            .initial_request()
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default()
    }

    /// Early media (RFC 3261 §13.3.1.1, RFC 3960 §3.1): answers the INVITE's offer in a 183
    /// Session Progress and starts the RTP leg, so that bot audio reaches the caller before the
    /// 200. Reliable (RFC 3262, RSeq 2, after the 180's PRACK) when the caller requires 100rel.
    /// Returns the negotiated codec's name.
    ///
    /// # Errors
    /// `(SIP status, message)`: 488 when no codec is common (the INVITE is refused with it),
    /// 504 when the caller never PRACKed our reliable 180, 503 without a free RTP port.
    async fn early_media(&self, prefer: Option<Codec>) -> Result<String, (u16, String)> {
        let offer = self.offer.clone().unwrap_or_default();
        let call_id = self.sip_call_id();
        if !self.svc.prack_received(&call_id).await {
            return Err((
                504,
                "the caller never sent the PRACK for our reliable 180".into(),
            ));
        }
        let sockets = media::bind_pair(
            self.svc.rtp_ip,
            self.svc.cfg.rtp_port_min,
            self.svc.cfg.rtp_port_max,
        )
        .await
        .map_err(|e| (503, e.to_string()))?;
        let local = self.svc.local_media(sockets.port, sdp_name(prefer));
        let (answer, neg) = sdp::answer(&offer, &local).map_err(|e| {
            let code = if matches!(e, SdpError::Parse(_)) {
                400
            } else {
                488
            };
            let _ = self
                .dialog
                .reject(Some(StatusCode::from(code)), Some(e.to_string()));
            (code, e.to_string())
        })?;
        let codec = self.start_media(sockets, neg, local)?;
        if let Ok(mut e) = self.early.lock() {
            *e = Some((answer.clone(), codec.clone()));
        }
        let reliable = super::header_values(&self.dialog.initial_request(), "Require")
            .iter()
            .any(|o| o.eq_ignore_ascii_case("100rel"));
        tracing::info!(call = %self.call_id, reliable, "early media: 183 Session Progress");
        if reliable {
            self.svc
                .provisional_reliably(&self.dialog, 2, Some(answer.into_bytes()));
        } else {
            self.dialog
                .ringing(Some(vec![sdp_header()]), Some(answer.into_bytes()))
                .map_err(|e| (500, e.to_string()))?;
        }
        Ok(codec)
    }

    /// Answers an inbound call; returns our SDP and the negotiated codec's name. After early
    /// media the 200 repeats the 183's answer and the RTP leg goes on.
    ///
    /// # Errors
    /// `(SIP status, message)`: 488 when no codec is common, 400 for an unusable late-offer ACK,
    /// 504 when a reliable provisional response was never PRACKed.
    async fn accept(&self, prefer: Option<Codec>) -> Result<(String, String), (u16, String)> {
        // RFC 3262 §3: no 2xx before the PRACK of a reliable 18x.
        let call_id = self.sip_call_id();
        if !self.svc.prack_received(&call_id).await {
            return Err((
                504,
                "the caller never sent the PRACK for our reliable provisional response".into(),
            ));
        }
        let early = self.early.lock().ok().and_then(|e| e.clone());
        if let Some((answer, codec)) = early {
            self.dialog
                .accept(
                    Some(self.answer_headers()),
                    Some(answer.clone().into_bytes()),
                )
                .map_err(|e| (500, e.to_string()))?;
            self.answered.store(true, Ordering::SeqCst);
            return Ok((answer, codec));
        }
        let sockets = media::bind_pair(
            self.svc.rtp_ip,
            self.svc.cfg.rtp_port_min,
            self.svc.cfg.rtp_port_max,
        )
        .await
        .map_err(|e| (503, e.to_string()))?;
        let local = self.svc.local_media(sockets.port, sdp_name(prefer));
        let dialog = &self.dialog;
        if let Some(offer) = self.offer.clone() {
            let (answer, neg) = sdp::answer(&offer, &local).map_err(|e| {
                let code = if matches!(e, SdpError::Parse(_)) {
                    400
                } else {
                    488
                };
                let _ = dialog.reject(Some(StatusCode::from(code)), Some(e.to_string()));
                (code, e.to_string())
            })?;
            let codec = self.start_media(sockets, neg, local)?;
            dialog
                .accept(
                    Some(self.answer_headers()),
                    Some(answer.clone().into_bytes()),
                )
                .map_err(|e| (500, e.to_string()))?;
            self.answered.store(true, Ordering::SeqCst);
            return Ok((answer, codec));
        }
        // Late offer (RFC 3261 §13.2.1): our offer goes in the 200 OK, the answer in the ACK.
        let body = sdp::build_offer(&local);
        dialog
            .accept(Some(self.answer_headers()), Some(body.clone().into_bytes()))
            .map_err(|e| (500, e.to_string()))?;
        let mut ack_sdp = None;
        for _ in 0..100 {
            if let Some(ack) = dialog.last_remote_ack() {
                ack_sdp = Some(String::from_utf8_lossy(&ack.body).to_string());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let ack_sdp = ack_sdp.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            (
                400,
                "late-offer call: the ACK carried no SDP answer within 5 s".to_string(),
            )
        })?;
        let neg = sdp::read_answer(&ack_sdp, &local).map_err(|e| (488, e.to_string()))?;
        let codec = self.start_media(sockets, neg, local)?;
        self.answered.store(true, Ordering::SeqCst);
        Ok((body, codec))
    }

    /// The far end answered our INVITE: start media. Returns the negotiated codec's name.
    ///
    /// # Errors
    /// `(status, message)` when the answer is unusable (the call then ends with BYE).
    fn on_answered(&self, answer: &str) -> Result<String, (u16, String)> {
        let local = self
            .shared
            .lock()
            .map_err(|_| (500, "lock".to_string()))?
            .local
            .clone();
        let neg = sdp::read_answer(answer, &local).map_err(|e| (488, e.to_string()))?;
        let sockets = self
            .sockets
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .ok_or((500, "RTP sockets already in use".to_string()))?;
        self.answered.store(true, Ordering::SeqCst);
        self.start_media(sockets, neg, local)
    }

    fn start_media(
        &self,
        sockets: RtpSockets,
        neg: Negotiated,
        local: LocalMedia,
    ) -> Result<String, (u16, String)> {
        tracing::info!(call = %self.call_id, codec = neg.codec.name, remote = %neg.remote_rtp, ptime = neg.ptime_ms, "media up");
        let m = media::spawn(
            sockets,
            neg.clone(),
            self.peer_ip,
            self.svc.media_settings(),
            self.port.clone(),
            self.call_id.clone(),
        )
        .map_err(|e| (488, e))?;
        let codec = codec_label(&neg);
        if let Ok(mut sh) = self.shared.lock() {
            sh.local = local;
            sh.negotiated = Some(neg);
            sh.control = Some(m.control.clone());
        }
        let _ = self.sink.set(m.audio.clone());
        if let Ok(mut media) = self.media.lock() {
            *media = Some(m);
        }
        Ok(codec)
    }

    /// Answers in-dialog requests and reports the dialog's progress to the call.
    fn watch(self: &Arc<Self>, mut states: DialogStateReceiver) {
        let c = self.clone();
        self.push_task(tokio::spawn(async move {
            // A reliable 18x is sent again until its PRACK: one `ringing` per change.
            let mut ringing = None;
            while let Some(st) = states.recv().await {
                match st {
                    DialogState::Early(_, resp) => {
                        let early_media = !resp.body.is_empty();
                        if ringing != Some(early_media) {
                            ringing = Some(early_media);
                            let _ = c.report(LegEvent::Ringing { early_media }).await;
                        }
                    }
                    DialogState::Updated(_, req, handle) => {
                        // re-INVITE or UPDATE from the far end (hold/resume, new address).
                        let ctype = super::header_values(&req, "Content-Type")
                            .into_iter()
                            .next();
                        let offer = super::sdp_of(ctype.as_deref(), &req.body)
                            .ok()
                            .flatten()
                            .unwrap_or_default();
                        let (status, body) = reoffer(&c.shared, &offer, &c.call_id);
                        let mut headers = body.as_ref().map(|_| vec![sdp_header()]);
                        let timer = c.timer.lock().ok().and_then(|t| *t);
                        if let (Some(t), true) = (timer, status == StatusCode::OK) {
                            // RFC 4028 §9/§10: a refresh; the answer restates the session.
                            if let Ok(mut r) = c.refreshed.lock() {
                                *r = std::time::Instant::now();
                            }
                            headers
                                .get_or_insert_with(Vec::new)
                                .extend(super::timer::refresh_answer(&req, &t));
                        }
                        let _ = handle
                            .respond(status, headers, body.map(String::into_bytes))
                            .await;
                    }
                    DialogState::Info(_, req, handle) => {
                        // application/dtmf-relay: "Signal=5\r\nDuration=160".
                        let body = String::from_utf8_lossy(&req.body).to_string();
                        let digit = body.lines().find_map(|l| {
                            l.trim()
                                .strip_prefix("Signal=")
                                .and_then(|s| s.trim().chars().next())
                        });
                        let _ = handle.reply(StatusCode::OK).await;
                        if let Some(digit) = digit.filter(|d| "0123456789*#ABCDabcd".contains(*d)) {
                            let _ = c.report(LegEvent::Dtmf(digit.to_ascii_uppercase())).await;
                        }
                    }
                    DialogState::Options(_, _, handle) => {
                        let _ = handle
                            .respond(StatusCode::OK, Some(super::capabilities()), None)
                            .await;
                    }
                    DialogState::Notify(_, req, handle) => {
                        // Progress of our REFER (RFC 3515 §2.4.5): a message/sipfrag status line.
                        let _ = handle.reply(StatusCode::OK).await;
                        if let Some((code, reason)) = refer_progress(&req) {
                            let ev = match code {
                                200..=299 => Some(LegEvent::Transferred),
                                300.. => Some(LegEvent::Error {
                                    sender: "sip".into(),
                                    message: format!("transfer failed: {reason}"),
                                    code: Some(code),
                                }),
                                _ => None,
                            };
                            if let Some(ev) = ev {
                                let _ = c.report(ev).await;
                            }
                        }
                    }
                    DialogState::Refer(_, req, handle) => {
                        let (status, reason) = c.on_refer(&req).await;
                        // RFC 3261 §20.43: why, in a Warning (399: miscellaneous).
                        let headers = reason.map(|r| {
                            vec![Header::Other(
                                "Warning".into(),
                                format!("399 voxgate \"{r}\""),
                            )]
                        });
                        // The first NOTIFY follows once the 202 is out
                        // (`SipService::on_transaction` calls `refer_accepted`).
                        let _ = handle.respond(status, headers, None).await;
                    }
                    DialogState::Message(_, _, handle) | DialogState::Publish(_, _, handle) => {
                        // Known methods voxgate does not serve in a dialog (RFC 3261 §8.2.1);
                        // `precheck` answers them first, this is the backstop.
                        let _ = handle
                            .respond(
                                StatusCode::MethodNotAllowed,
                                Some(vec![super::allow()]),
                                None,
                            )
                            .await;
                    }
                    DialogState::Terminated(id, reason) => {
                        c.svc.dialogs.remove_dialog(&id);
                        let was_ended = c.ended.swap(true, Ordering::SeqCst);
                        let reason = match reason {
                            // Declined without our doing: the caller's BYE on the early dialog
                            // (`SipService::on_transaction`), i.e. it gave up while ringing.
                            TerminatedReason::UasDecline if !was_ended && !c.outbound => {
                                "cancelled".to_string()
                            }
                            TerminatedReason::UacBye | TerminatedReason::UasBye => {
                                "bye".to_string()
                            }
                            TerminatedReason::UacCancel => "cancelled".to_string(),
                            TerminatedReason::Timeout => "timeout".to_string(),
                            TerminatedReason::UacBusy | TerminatedReason::UasBusy => {
                                "busy".to_string()
                            }
                            TerminatedReason::UasDecline => "declined".to_string(),
                            TerminatedReason::ProxyAuthRequired => "auth_failed".to_string(),
                            TerminatedReason::ProxyError(code)
                            | TerminatedReason::UacOther(code)
                            | TerminatedReason::UasOther(code) => {
                                reason_for_status(code.code()).to_string()
                            }
                        };
                        let initiator = if c.outbound { "callee" } else { "caller" };
                        let _ = c
                            .report(LegEvent::Ended {
                                reason,
                                initiator: initiator.into(),
                            })
                            .await;
                        break;
                    }
                    _ => {}
                }
            }
        }));
    }

    /// Blind transfer (RFC 3515): REFER with `Refer-To: target`; the outcome comes back as
    /// [`LegEvent::Transferred`] or an `error`.
    fn refer(self: &Arc<Self>, target: &str) -> Result<(), String> {
        let uri = if target.starts_with("sip:") || target.starts_with("sips:") {
            target.to_string()
        } else {
            let host = self.svc.trunk().map(|t| t.host.clone()).ok_or_else(|| {
                format!(
                    "`{target}` is a number but no [[sip.trunks]] is configured; use a sip: URI"
                )
            })?;
            format!("sip:{target}@{host}")
        };
        let uri: rsipstack::sip::Uri = uri
            .as_str()
            .try_into()
            .map_err(|e| format!("bad transfer target `{target}`: {e}"))?;
        let c = self.clone();
        self.push_task(tokio::spawn(async move {
            tracing::info!(call = %c.call_id, %uri, "REFER");
            let failure = match c.dialog.refer(uri, None, None).await {
                Ok(Some(resp))
                    if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful =>
                {
                    None
                }
                Ok(Some(resp)) => Some((resp.status_code.code(), resp.status_code.to_string())),
                Ok(None) => Some((408, "no answer to REFER".to_string())),
                Err(e) => Some((500, e.to_string())),
            };
            if let Some((code, reason)) = failure {
                let _ = c
                    .report(LegEvent::Error {
                        sender: "sip".into(),
                        message: format!("transfer failed: {reason}"),
                        code: Some(code),
                    })
                    .await;
            }
        }));
        Ok(())
    }
}

/// One call's SIP dialog and RTP leg, as the call core sees it.
pub struct SipLeg {
    info: LegInfo,
    call: Arc<SipCall>,
    swap: Arc<Swap>,
    /// 16 kHz → the codec's rate, created with the media.
    resampler: Option<StreamResampler>,
    pcm: Vec<i16>,
}

impl SipLeg {
    /// Switches to a transfer target that answered ([`Swap`]).
    fn take_swap(&mut self) {
        if self.swap.ready.swap(false, Ordering::SeqCst) {
            if let Some(next) = self.swap.next.lock().ok().and_then(|mut n| n.take()) {
                self.call = next;
                self.resampler = None;
            }
        }
    }

    fn new(info: LegInfo, call: Arc<SipCall>) -> Self {
        SipLeg {
            info,
            swap: call.swap.clone(),
            call,
            resampler: None,
            pcm: Vec::with_capacity(960),
        }
    }
}

#[async_trait]
impl Leg for SipLeg {
    fn info(&self) -> &LegInfo {
        &self.info
    }

    fn send_audio(&mut self, frame: &AudioFrame) -> bool {
        self.take_swap();
        let Some(sink) = self.call.sink.get() else {
            return false;
        };
        let rs = self.resampler.get_or_insert_with(|| {
            StreamResampler::new(SampleRate::HZ_16000, sink.rate()).expect("supported rates")
        });
        self.pcm.clear();
        rs.process(&frame.samples, &mut self.pcm);
        self.pcm.is_empty() || sink.send_samples(&self.pcm)
    }

    fn command(&mut self, cmd: LegCommand) -> LegReply {
        self.take_swap();
        match cmd {
            LegCommand::TransferReply { accept } => match self.call.transfer_reply(accept) {
                Ok(()) => LegReply::Done,
                Err(message) => LegReply::Refused {
                    sender: "command",
                    code: 400,
                    message,
                },
            },
            LegCommand::Answer { codec } => {
                if self.call.outbound || self.call.answered.load(Ordering::SeqCst) {
                    return LegReply::Refused {
                        sender: "command",
                        code: 400,
                        message: "`accept` needs an inbound call that is still ringing".into(),
                    };
                }
                let c = self.call.clone();
                self.call.push_task(tokio::spawn(async move {
                    match c.accept(codec).await {
                        Ok((sdp, codec)) => {
                            c.register_replaceable();
                            let timer = c.timer.lock().ok().and_then(|t| *t);
                            if let Some(t) = timer {
                                c.start_session_timer(t);
                            }
                            let _ = c
                                .report(LegEvent::Answered {
                                    sdp: Some(sdp),
                                    codec,
                                })
                                .await;
                        }
                        Err((code, e)) => c.refuse(code, format!("cannot answer: {e}")).await,
                    }
                }));
                LegReply::Pending
            }
            LegCommand::EarlyMedia { codec } => {
                let refuse = |message: &str| LegReply::Refused {
                    sender: "command",
                    code: 400,
                    message: message.into(),
                };
                if self.call.outbound || self.call.answered.load(Ordering::SeqCst) {
                    return refuse("early media needs an inbound call that is still ringing");
                }
                if self
                    .call
                    .offer
                    .as_deref()
                    .is_none_or(|o| o.trim().is_empty())
                {
                    // A late-offer INVITE would need our offer in a reliable 183 and the answer
                    // in the PRACK (RFC 3262 §5); not supported.
                    return refuse("early media needs an SDP offer in the INVITE; this caller sent none (late offer): `accept` it instead");
                }
                if self.call.early.lock().is_ok_and(|e| e.is_some()) {
                    return refuse("early media is already on");
                }
                let c = self.call.clone();
                self.call.push_task(tokio::spawn(async move {
                    if let Err((code, e)) = c.early_media(codec).await {
                        c.refuse(code, format!("cannot start early media: {e}"))
                            .await;
                    }
                }));
                LegReply::Pending
            }
            LegCommand::Clear | LegCommand::Mark(_) => LegReply::Done,
            LegCommand::SendDtmf { keys, duration_ms } => {
                match self.call.send_dtmf(&keys, duration_ms) {
                    Ok(()) => LegReply::Done,
                    Err(message) => LegReply::Refused {
                        sender: "dtmf",
                        code: 400,
                        message,
                    },
                }
            }
            LegCommand::Transfer(target) => match self.call.refer(&target) {
                Ok(()) => LegReply::Pending,
                Err(message) => LegReply::Refused {
                    sender: "sip",
                    code: 400,
                    message,
                },
            },
        }
    }

    /// Ends our side (BYE, CANCEL, or a final refusal for an unanswered inbound call; the BYE's
    /// answer is awaited in the background), stops the RTP leg and returns its quality figures.
    async fn close(
        self: Box<Self>,
        reason: &str,
        headers: &[(String, String)],
    ) -> Option<LegReport> {
        let mut this = self;
        this.take_swap();
        let c = this.call;
        c.unregister_replaceable();
        // A transfer target still ringing: CANCEL it.
        let ringing = c.transferee.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = ringing {
            if !t.ended.swap(true, Ordering::SeqCst) {
                let d = t.dialog.clone();
                c.svc.spawn(async move {
                    let _ = d.hangup().await;
                });
            }
            t.abort_tasks();
        }
        let answered = c.answered.load(Ordering::SeqCst);
        if !c.ended.swap(true, Ordering::SeqCst) {
            if !c.outbound && !answered {
                let _ = c
                    .dialog
                    .reject(Some(status_for_reason(reason)), Some(reason.to_string()));
                c.svc.dialogs.remove_dialog(&c.dialog.id());
            } else {
                let d = c.dialog.clone();
                let svc = c.svc.clone();
                let outbound = c.outbound;
                let call = c.call_id.clone();
                // The application's X- headers (validated by the adapter), RFC 3261 §7.3.
                let extra: Option<Vec<Header>> = (!headers.is_empty()).then(|| {
                    headers
                        .iter()
                        .map(|(k, v)| Header::Other(k.clone(), v.clone()))
                        .collect()
                });
                c.svc.spawn(async move {
                    // CANCEL while ringing, BYE once answered.
                    let r = if outbound {
                        d.hangup_with_headers(extra).await
                    } else {
                        d.bye_with_headers(extra).await
                    };
                    if let Err(e) = r {
                        tracing::debug!(%call, "ending dialog: {e}");
                    }
                    svc.dialogs.remove_dialog(&d.id());
                });
            }
        }
        let media = c.media.lock().ok().and_then(|mut m| m.take());
        let quality = match media {
            Some(m) => {
                drop(m.audio);
                drop(m.control);
                if let Ok(mut sh) = c.shared.lock() {
                    sh.control = None;
                }
                m.task.await.ok()
            }
            None => None,
        };
        if let Ok(mut tasks) = c.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        quality.map(|q| LegReport {
            key: "rtp".into(),
            data: serde_json::to_value(&q).unwrap_or_default(),
        })
    }
}

/// The status of a REFER's NOTIFY (`Event: refer`, body `message/sipfrag` whose first line is a
/// status line, RFC 3515 §2.4.5): `(code, reason phrase)`.
fn refer_progress(req: &rsipstack::sip::Request) -> Option<(u16, String)> {
    let event = super::header_values(req, "Event").into_iter().next();
    // RFC 3515 §2.4.4: Event `refer`; a lenient peer may leave out the Event header (then the
    // sipfrag status line says what it is) or the Content-Type.
    let is_refer = match &event {
        Some(e) => e.to_ascii_lowercase().starts_with("refer"),
        None => true,
    };
    if !is_refer {
        return None;
    }
    let body = String::from_utf8_lossy(&req.body);
    let line = body.lines().map(str::trim).find(|l| {
        l.get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("SIP/2.0 "))
    })?;
    let mut parts = line.splitn(3, ' ').skip(1);
    let code = parts.next()?.trim().parse::<u16>().ok()?;
    if !(100..700).contains(&code) {
        return None;
    }
    Some((code, parts.next().unwrap_or_default().trim().to_string()))
}

/// Answers a re-INVITE/UPDATE offer with our current port and the mirrored direction; 488 when
/// the codec would change to one we cannot use, 200 without body for an offerless request.
fn reoffer(shared: &Arc<Mutex<Shared>>, offer: &str, track: &str) -> (StatusCode, Option<String>) {
    let mut sh = shared.lock().expect("lock");
    sh.local.session_version += 1;
    if offer.trim().is_empty() {
        return (StatusCode::OK, Some(sdp::build_offer(&sh.local)));
    }
    let mut local = sh.local.clone();
    if let Some(cur) = &sh.negotiated {
        // Keep our current codec first so that an unchanged offer keeps it.
        local.formats.retain(|f| f.same_codec(&cur.codec));
    }
    match sdp::answer(offer, &local) {
        Ok((answer, neg)) => {
            tracing::info!(call = %track, direction = neg.direction.as_str(), "re-INVITE/UPDATE answered");
            if let Some(c) = &sh.control {
                let _ = c.try_send(MediaControl::Update(neg.clone()));
            }
            sh.negotiated = Some(neg);
            (StatusCode::OK, Some(answer))
        }
        Err(SdpError::Parse(_)) => (StatusCode::BadRequest, None),
        Err(e) => {
            tracing::info!(call = %track, "re-INVITE refused: {e}");
            (StatusCode::NotAcceptableHere, None)
        }
    }
}

/// The `Replaces` header parameter of a Refer-To URI's headers (`Replaces=...&...`, escaped as
/// RFC 3261 §19.1.1 says), unescaped.
pub fn uri_header_replaces(headers: &str) -> Option<String> {
    headers.split('&').find_map(|h| {
        let (k, v) = h.split_once('=')?;
        k.eq_ignore_ascii_case("Replaces").then(|| unescape(v))
    })
}

/// `%HH` escapes of a URI component, decoded (invalid escapes kept as they are).
fn unescape(v: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An INVITE with `Replaces` (RFC 3891 §3) matched `old`, an answered call: the new dialog is
/// answered at once with our SDP, takes `old`'s place in the call (`transfer` event, state
/// `replaced`, `target` = the new caller), and `old` gets BYE. If it cannot be answered (no
/// common codec: 488), `old` goes on.
pub(crate) fn replace(svc: Arc<SipService>, old: Arc<SipCall>, call: IncomingCall) {
    let IncomingCall {
        caller,
        offer,
        dialog,
        states,
        source,
        ..
    } = call;
    let local = svc.local_media(0, None);
    let new = Arc::new(SipCall {
        peer_ip: source,
        svc: svc.clone(),
        dialog,
        outbound: false,
        offer,
        port: old.port.clone(),
        call_id: old.call_id.clone(),
        shared: Arc::new(Mutex::new(Shared {
            local,
            negotiated: None,
            control: None,
        })),
        sockets: Mutex::new(None),
        media: Mutex::new(None),
        sink: OnceLock::new(),
        tasks: Mutex::new(Vec::new()),
        answered: AtomicBool::new(false),
        early: Mutex::new(None),
        ended: AtomicBool::new(false),
        timer: Mutex::new(None),
        refreshed: Mutex::new(std::time::Instant::now()),
        // Until it is answered, nothing of the new dialog reaches the call.
        attempt: Mutex::new(None),
        refer: Mutex::new(None),
        transferee: Mutex::new(None),
        swap: old.swap.clone(),
        replaced: AtomicBool::new(true),
        refer_new: AtomicBool::new(false),
    });
    new.watch(states);
    svc.spawn(async move {
        tracing::info!(call = %old.call_id, caller, "INVITE with Replaces: taking over the call");
        match new.accept(None).await {
            Ok(_) => {
                new.replaced.store(false, Ordering::SeqCst);
                new.register_replaceable();
                let timer = new.timer.lock().ok().and_then(|t| *t);
                if let Some(t) = timer {
                    new.start_session_timer(t);
                }
                old.hand_over(&new);
                let _ = new
                    .report(LegEvent::Transfer {
                        target: caller,
                        state: "replaced".into(),
                        referred_by: None,
                        code: Some(200),
                    })
                    .await;
                old.end_dialog().await;
            }
            Err((code, e)) => {
                tracing::info!(call = %old.call_id, code, "cannot answer the INVITE with Replaces: {e}");
                let _ = new.dialog.reject(Some(StatusCode::from(code)), None);
                new.ended.store(true, Ordering::SeqCst);
                new.abort_tasks();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notify(event: &str, body: &str) -> rsipstack::sip::Request {
        let text = format!(
            "NOTIFY sip:voxgate@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKn\r\nFrom: <sip:a@127.0.0.1>;tag=a\r\n\
             To: <sip:v@127.0.0.1>;tag=b\r\nCall-ID: c\r\nCSeq: 2 NOTIFY\r\nEvent: {event}\r\nSubscription-State: terminated\r\n\
             Content-Type: message/sipfrag;version=2.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match rsipstack::sip::SipMessage::try_from(text.as_str()).unwrap() {
            rsipstack::sip::SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn refer_to_headers_give_the_replaces_to_send() {
        assert_eq!(
            uri_header_replaces(
                "Replaces=12345%40192.168.118.3%3Bto-tag%3D12345%3Bfrom-tag%3D5FFE-3994"
            ),
            Some("12345@192.168.118.3;to-tag=12345;from-tag=5FFE-3994".into())
        );
        assert_eq!(
            uri_header_replaces("X-Foo=1&replaces=a%3bto-tag%3d1"),
            Some("a;to-tag=1".into())
        );
        assert_eq!(uri_header_replaces("X-Foo=1"), None);
        assert_eq!(unescape("%4"), "%4");
        assert_eq!(unescape("%zz%41é%"), "%zzAé%");
    }

    #[test]
    fn refer_progress_reads_the_sipfrag_status_line() {
        assert_eq!(
            refer_progress(&notify("refer", "SIP/2.0 200 OK\r\n")),
            Some((200, "OK".into()))
        );
        assert_eq!(
            refer_progress(&notify("refer;id=7", "SIP/2.0 486 Busy Here")),
            Some((486, "Busy Here".into()))
        );
        assert_eq!(
            refer_progress(&notify("refer", "SIP/2.0 100 Trying\r\n")),
            Some((100, "Trying".into()))
        );
        assert_eq!(
            refer_progress(&notify("presence", "SIP/2.0 200 OK")),
            None,
            "another event package"
        );
        assert_eq!(refer_progress(&notify("refer", "garbage")), None);
        // Lenient peers (issue 10 point 4): no reason phrase, lower case, no Event header.
        assert_eq!(
            refer_progress(&notify("refer", "SIP/2.0 200")),
            Some((200, String::new()))
        );
        assert_eq!(
            refer_progress(&notify("refer", "sip/2.0 603 declined\r\n")),
            Some((603, "declined".into()))
        );
        let no_event = notify("refer", "SIP/2.0 200 OK");
        let mut no_event = no_event;
        no_event
            .headers
            .retain(|h| !h.name().eq_ignore_ascii_case("Event"));
        assert_eq!(refer_progress(&no_event), Some((200, "OK".into())));
        assert_eq!(refer_progress(&notify("refer", "SIP/2.0 999 What")), None);
    }
}
