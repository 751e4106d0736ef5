//! One call's SIP side, driven by the call actor: the dialog (outbound INVITE or inbound
//! INVITE), its in-dialog requests (re-INVITE/UPDATE hold, INFO DTMF, OPTIONS, BYE) and the RTP
//! leg. rsipstack types stay in this module; the actor sees [`SipSignal`]s and plain values.
//!
//! SIP status → `hangup` reason (RFC 3261 §21): 486/600 `busy`, 408/480/487 `no_answer`,
//! 603 `declined`, 404/484/604 `not_found`, 488/606 `codec_mismatch`, other 4xx–6xx `failed`.
//! `hangup` reason → SIP status when refusing an inbound call: `busy` 486, `no_answer` 480,
//! anything else 603 Decline.

use super::media::{self, MediaControl, MediaHandle, Quality, RtpSockets};
use super::{IncomingCall, SipService};
use crate::call::actor::ActorInput;
use crate::call::{EventKind, InviteOptions};
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use voxgate_media::codec::Codec;
use voxgate_rtp::sdp::{self, LocalMedia, Negotiated, SdpError};

/// What the SIP side tells the actor.
#[derive(Debug)]
pub enum SipSignal {
    /// 180/183 for our INVITE; `early_media` when it carried SDP.
    Ringing { early_media: bool },
    /// 2xx for our INVITE with the SDP answer.
    Answered { sdp: String },
    /// The outbound call failed before answer.
    Failed { code: u16, reason: String },
    /// The far end ended the dialog (BYE, CANCEL) or it timed out.
    Ended { reason: String },
    /// The call rang for `sip.ring_timeout_secs` without an answer (ours or the far end's).
    RingTimeout,
    /// The transfer target answered (NOTIFY sipfrag 2xx after our REFER): we hang up.
    Transferred,
    /// The far end refused the REFER, or the transfer target did not answer.
    TransferFailed { code: u16, reason: String },
}

/// The SDP encoding name of a codec the client asked to prefer (`None`: no preference).
fn sdp_name(codec: Codec) -> Option<&'static str> {
    match codec {
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

/// State shared with the in-dialog request handler.
struct Shared {
    local: LocalMedia,
    negotiated: Option<Negotiated>,
    control: Option<mpsc::Sender<MediaControl>>,
}

/// One call's SIP dialog and RTP leg.
pub struct SipLeg {
    svc: Arc<SipService>,
    dialog: Option<InviteDialog>,
    outbound: bool,
    offer: Option<String>,
    sockets: Option<RtpSockets>,
    shared: Arc<Mutex<Shared>>,
    media: Option<MediaHandle>,
    tasks: Vec<JoinHandle<()>>,
    answered: bool,
    ended_remotely: bool,
    pub caller: String,
    pub callee: String,
    track_id: String,
    actor: mpsc::Sender<ActorInput>,
}

fn sdp_header() -> Header {
    Header::ContentType("application/sdp".into())
}

impl SipLeg {
    /// Places a call: `callee` is a `sip:` URI, or a number sent through the first trunk.
    ///
    /// # Errors
    /// A message for the `error` event: no trunk for a number, a bad URI, no free RTP port.
    pub async fn dial(
        svc: Arc<SipService>,
        o: &InviteOptions,
        actor: mpsc::Sender<ActorInput>,
        track_id: String,
    ) -> Result<SipLeg, String> {
        let callee = o
            .callee
            .clone()
            .filter(|c| !c.trim().is_empty())
            .ok_or("`invite` on /call/sip needs `option.callee` (a number or a sip: URI)")?;
        let (target, trunk) = if callee.starts_with("sip:") || callee.starts_with("sips:") {
            (callee.clone(), None)
        } else {
            let t = svc.trunk().ok_or_else(|| format!("callee `{callee}` is a number but no [[sip.trunks]] is configured; use a sip: URI"))?.clone();
            let mut number = callee.clone();
            if let Some(p) = &t.strip_prefix {
                if let Some(rest) = number.strip_prefix(p.as_str()) {
                    number = rest.to_string();
                }
            }
            if let Some(p) = &t.add_prefix {
                number = format!("{p}{number}");
            }
            let transport = if t.transport == "tcp" {
                ";transport=tcp"
            } else {
                ""
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
            .map_err(|e| format!("bad callee URI `{target}`: {e}"))?;
        let from_host = trunk
            .as_ref()
            .map(|t| t.host.clone())
            .unwrap_or_else(|| svc.local_addr.to_string());
        let caller_uri: rsipstack::sip::Uri = format!("sip:{caller}@{from_host}")
            .as_str()
            .try_into()
            .map_err(|e| format!("bad caller `{caller}`: {e}"))?;
        let sockets = media::bind_pair(svc.rtp_ip, svc.cfg.rtp_port_min, svc.cfg.rtp_port_max)
            .await
            .map_err(|e| e.to_string())?;
        let local = svc.local_media(sockets.port, sdp_name(o.codec));
        let offer = sdp::build_offer(&local);
        let credential = trunk.as_ref().and_then(|t| {
            Some(rsipstack::dialog::authenticate::Credential {
                username: t.username.clone()?,
                password: t.password.clone()?,
                realm: t.realm.clone(),
                auth_username: None,
            })
        });
        let opt = InviteOption {
            caller: caller_uri,
            callee: callee_uri,
            content_type: Some("application/sdp".into()),
            offer: Some(offer.clone().into_bytes()),
            contact: svc.contact(&caller),
            credential,
            ..Default::default()
        };
        let (state_tx, states) = svc.dialogs.new_dialog_state_channel();
        let (dialog, result) = svc
            .dialogs
            .do_invite_async(opt, state_tx)
            .map_err(|e| format!("INVITE failed: {e}"))?;
        tracing::info!(call = %track_id, target, "dialing");
        let shared = Arc::new(Mutex::new(Shared {
            local,
            negotiated: None,
            control: None,
        }));
        let mut leg = SipLeg {
            svc: svc.clone(),
            dialog: Some(dialog),
            outbound: true,
            offer: Some(offer),
            sockets: Some(sockets),
            shared,
            media: None,
            tasks: Vec::new(),
            answered: false,
            ended_remotely: false,
            caller,
            callee,
            track_id,
            actor: actor.clone(),
        };
        let a = actor.clone();
        leg.tasks.push(tokio::spawn(async move {
            let signal = match result.await {
                Ok(Ok((_, Some(resp))))
                    if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful =>
                {
                    SipSignal::Answered {
                        sdp: String::from_utf8_lossy(&resp.body).to_string(),
                    }
                }
                Ok(Ok((_, Some(resp)))) => SipSignal::Failed {
                    code: resp.status_code.code(),
                    reason: resp.status_code.to_string(),
                },
                Ok(Ok((_, None))) => SipSignal::Failed {
                    code: 408,
                    reason: "no final response".into(),
                },
                Ok(Err(e)) => SipSignal::Failed {
                    code: 503,
                    reason: e.to_string(),
                },
                Err(e) => SipSignal::Failed {
                    code: 500,
                    reason: e.to_string(),
                },
            };
            let _ = a.send(ActorInput::Sip(signal)).await;
        }));
        leg.start_ring_timer();
        leg.watch(states);
        Ok(leg)
    }

    /// Takes an inbound call (the actor has been handed it).
    pub fn incoming(
        svc: Arc<SipService>,
        call: IncomingCall,
        actor: mpsc::Sender<ActorInput>,
        track_id: String,
    ) -> SipLeg {
        let IncomingCall {
            caller,
            callee,
            offer,
            dialog,
            states,
            ..
        } = call;
        let local = svc.local_media(0, None);
        let mut leg = SipLeg {
            svc,
            dialog: Some(dialog),
            outbound: false,
            offer,
            sockets: None,
            shared: Arc::new(Mutex::new(Shared {
                local,
                negotiated: None,
                control: None,
            })),
            media: None,
            tasks: Vec::new(),
            answered: false,
            ended_remotely: false,
            caller,
            callee,
            track_id,
            actor,
        };
        // Not accepted in time: the caller gets 480 (`hangup` reason `no_answer`).
        leg.start_ring_timer();
        leg.watch(states);
        leg
    }

    /// After `sip.ring_timeout_secs` the actor gets [`SipSignal::RingTimeout`] (it ignores it once
    /// the call is answered).
    fn start_ring_timer(&mut self) {
        let actor = self.actor.clone();
        let ring = std::time::Duration::from_secs(self.svc.cfg.ring_timeout_secs);
        self.tasks.push(tokio::spawn(async move {
            tokio::time::sleep(ring).await;
            let _ = actor.send(ActorInput::Sip(SipSignal::RingTimeout)).await;
        }));
    }

    /// The inbound offer (for the `incoming` event).
    pub fn offer(&self) -> Option<&str> {
        self.offer.as_deref()
    }

    pub fn is_outbound(&self) -> bool {
        self.outbound
    }

    pub fn is_answered(&self) -> bool {
        self.answered
    }

    /// Where the actor sends bot audio: 16-bit LE PCM at the codec's rate.
    pub fn audio_sink(&self) -> Option<media::AudioSink> {
        self.media.as_ref().map(|m| m.audio.clone())
    }

    /// Sends DTMF keys as RFC 4733 events.
    pub fn send_dtmf(&self, keys: &str) -> Result<(), String> {
        let m = self.media.as_ref().ok_or("the call is not answered")?;
        if self
            .shared
            .lock()
            .expect("lock")
            .negotiated
            .as_ref()
            .and_then(|n| n.telephone_event)
            .is_none()
        {
            return Err("the far end did not offer telephone-event (RFC 4733)".into());
        }
        m.control
            .try_send(MediaControl::Dtmf(keys.into()))
            .map_err(|_| "DTMF queue full".to_string())
    }

    /// Answers an inbound call; returns our SDP and the sampling rate (Hz) the actor must use.
    ///
    /// # Errors
    /// `(SIP status, message)`: 488 when no codec is common.
    pub async fn accept(&mut self, prefer: Codec) -> Result<(String, u32), (u16, String)> {
        let sockets = media::bind_pair(
            self.svc.rtp_ip,
            self.svc.cfg.rtp_port_min,
            self.svc.cfg.rtp_port_max,
        )
        .await
        .map_err(|e| (503, e.to_string()))?;
        let local = self.svc.local_media(sockets.port, sdp_name(prefer));
        let dialog = self.dialog.clone().ok_or((500, "no dialog".to_string()))?;
        let body = match self.offer.clone() {
            Some(offer) => {
                let (answer, neg) = sdp::answer(&offer, &local).map_err(|e| {
                    let code = if matches!(e, SdpError::Parse(_)) {
                        400
                    } else {
                        488
                    };
                    let _ = dialog.reject(Some(StatusCode::from(code)), Some(e.to_string()));
                    (code, e.to_string())
                })?;
                let rate = self.start_media(sockets, neg, local)?;
                dialog
                    .accept(Some(vec![sdp_header()]), Some(answer.clone().into_bytes()))
                    .map_err(|e| (500, e.to_string()))?;
                self.answered = true;
                return Ok((answer, rate));
            }
            None => sdp::build_offer(&local),
        };
        // Late offer (RFC 3261 §13.2.1): our offer goes in the 200 OK, the answer in the ACK.
        dialog
            .accept(Some(vec![sdp_header()]), Some(body.clone().into_bytes()))
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
        let rate = self.start_media(sockets, neg, local)?;
        self.answered = true;
        Ok((body, rate))
    }

    /// The far end answered our INVITE: start media. Returns the sampling rate (Hz) for the actor.
    ///
    /// # Errors
    /// `(status, message)` when the answer is unusable (we then hang up).
    pub fn on_answered(&mut self, answer: &str) -> Result<u32, (u16, String)> {
        let local = self.shared.lock().expect("lock").local.clone();
        let neg = sdp::read_answer(answer, &local).map_err(|e| (488, e.to_string()))?;
        let sockets = self
            .sockets
            .take()
            .ok_or((500, "RTP sockets already in use".to_string()))?;
        let rate = self.start_media(sockets, neg, local)?;
        self.answered = true;
        Ok(rate)
    }

    fn start_media(
        &mut self,
        sockets: RtpSockets,
        neg: Negotiated,
        local: LocalMedia,
    ) -> Result<u32, (u16, String)> {
        let codec = media::codec_for(&neg.codec.name, neg.codec.clock_rate)
            .ok_or((488, format!("codec {} is not supported", neg.codec.name)))?;
        tracing::info!(call = %self.track_id, codec = neg.codec.name, remote = %neg.remote_rtp, ptime = neg.ptime_ms, "media up");
        let m = media::spawn(
            sockets,
            neg.clone(),
            self.svc.media_settings(),
            self.actor.clone(),
            self.track_id.clone(),
        )
        .map_err(|e| (488, e))?;
        let mut sh = self.shared.lock().expect("lock");
        sh.local = local;
        sh.negotiated = Some(neg);
        sh.control = Some(m.control.clone());
        drop(sh);
        self.media = Some(m);
        Ok(codec.sample_rate().hz())
    }

    /// Forwards dialog states to the actor and answers in-dialog requests.
    fn watch(&mut self, mut states: DialogStateReceiver) {
        let actor = self.actor.clone();
        let shared = self.shared.clone();
        let dialogs = self.svc.dialogs.clone();
        let track = self.track_id.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Some(st) = states.recv().await {
                match st {
                    DialogState::Early(_, resp) => {
                        let _ = actor
                            .send(ActorInput::Sip(SipSignal::Ringing {
                                early_media: !resp.body.is_empty(),
                            }))
                            .await;
                    }
                    DialogState::Updated(_, req, handle) => {
                        // re-INVITE or UPDATE from the far end (hold/resume, new address).
                        let offer = String::from_utf8_lossy(&req.body).to_string();
                        let (status, body) = reoffer(&shared, &offer, &track);
                        let headers = body.as_ref().map(|_| vec![sdp_header()]);
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
                            let _ = actor
                                .send(ActorInput::LegEvent(EventKind::Dtmf {
                                    track_id: track.clone(),
                                    digit: digit.to_ascii_uppercase(),
                                }))
                                .await;
                        }
                    }
                    DialogState::Options(_, _, handle) => {
                        let _ = handle.reply(StatusCode::OK).await;
                    }
                    DialogState::Notify(_, req, handle) => {
                        // Progress of our REFER (RFC 3515 §2.4.5): a message/sipfrag status line.
                        let _ = handle.reply(StatusCode::OK).await;
                        if let Some((code, reason)) = refer_progress(&req) {
                            let signal = match code {
                                200..=299 => Some(SipSignal::Transferred),
                                300.. => Some(SipSignal::TransferFailed { code, reason }),
                                _ => None,
                            };
                            if let Some(s) = signal {
                                let _ = actor.send(ActorInput::Sip(s)).await;
                            }
                        }
                    }
                    DialogState::Refer(_, _, handle)
                    | DialogState::Message(_, _, handle)
                    | DialogState::Publish(_, _, handle) => {
                        let _ = handle.reply(StatusCode::NotImplemented).await;
                    }
                    DialogState::Terminated(id, reason) => {
                        dialogs.remove_dialog(&id);
                        let reason = match reason {
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
                            TerminatedReason::ProxyError(c)
                            | TerminatedReason::UacOther(c)
                            | TerminatedReason::UasOther(c) => {
                                reason_for_status(c.code()).to_string()
                            }
                        };
                        let _ = actor
                            .send(ActorInput::Sip(SipSignal::Ended { reason }))
                            .await;
                        break;
                    }
                    _ => {}
                }
            }
        }));
    }

    /// Blind transfer (RFC 3515): REFER with `Refer-To: target`; the outcome comes back as
    /// [`SipSignal::Transferred`] or [`SipSignal::TransferFailed`].
    ///
    /// # Errors
    /// A bad target, or no dialog.
    pub fn refer(&mut self, target: &str) -> Result<(), String> {
        let dialog = self.dialog.clone().ok_or("the call has no dialog")?;
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
        let actor = self.actor.clone();
        let track = self.track_id.clone();
        self.tasks.push(tokio::spawn(async move {
            tracing::info!(call = %track, %uri, "REFER");
            let signal = match dialog.refer(uri, None, None).await {
                Ok(Some(resp))
                    if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful =>
                {
                    None
                }
                Ok(Some(resp)) => Some(SipSignal::TransferFailed {
                    code: resp.status_code.code(),
                    reason: resp.status_code.to_string(),
                }),
                Ok(None) => Some(SipSignal::TransferFailed {
                    code: 408,
                    reason: "no answer to REFER".into(),
                }),
                Err(e) => Some(SipSignal::TransferFailed {
                    code: 500,
                    reason: e.to_string(),
                }),
            };
            if let Some(s) = signal {
                let _ = actor.send(ActorInput::Sip(s)).await;
            }
        }));
        Ok(())
    }

    /// The far end ended the dialog: no BYE from us.
    pub fn mark_remote_end(&mut self) {
        self.ended_remotely = true;
    }

    /// Ends our side (BYE, CANCEL, or a final refusal for an unanswered inbound call), stops the
    /// RTP leg and returns its quality figures.
    pub async fn hangup(&mut self, reason: &str) -> Option<Quality> {
        if let Some(d) = self.dialog.take() {
            if !self.ended_remotely {
                let r = if self.outbound {
                    d.hangup().await
                } else if self.answered {
                    d.bye().await
                } else {
                    d.reject(Some(status_for_reason(reason)), Some(reason.to_string()))
                };
                if let Err(e) = r {
                    tracing::debug!(call = %self.track_id, "ending dialog: {e}");
                }
            }
            self.svc.dialogs.remove_dialog(&d.id());
        }
        let quality = match self.media.take() {
            Some(m) => {
                drop(m.audio);
                drop(m.control);
                self.shared.lock().expect("lock").control = None;
                m.task.await.ok()
            }
            None => None,
        };
        for t in self.tasks.drain(..) {
            t.abort();
        }
        quality
    }
}

/// The status of a REFER's NOTIFY (`Event: refer`, body `message/sipfrag` whose first line is a
/// status line, RFC 3515 §2.4.5): `(code, reason phrase)`.
fn refer_progress(req: &rsipstack::sip::Request) -> Option<(u16, String)> {
    let is_refer = req.headers.iter().any(|h| {
        let line = h.to_string();
        let (name, value) = line.split_once(':').unwrap_or_default();
        let name = name.trim();
        (name.eq_ignore_ascii_case("event") || name == "o")
            && value.trim().to_ascii_lowercase().starts_with("refer")
    });
    if !is_refer {
        return None;
    }
    let body = String::from_utf8_lossy(&req.body);
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SIP/2.0 "))?;
    let mut parts = line.splitn(3, ' ').skip(1);
    let code = parts.next()?.parse::<u16>().ok()?;
    Some((code, parts.next().unwrap_or_default().to_string()))
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
    }
}
