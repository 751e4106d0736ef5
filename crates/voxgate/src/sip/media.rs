//! The RTP leg of a SIP call (layer L4 "net"): one task per call that drives the sans-IO parts of
//! `voxgate-rtp` with a UDP socket pair (RTP on an even port, RTCP on the next).
//!
//! Caller audio: RTP → [`ReceiveStats`] → [`JitterBuffer`] → decode (PCMU/PCMA at 8 kHz, G.722
//! at 16 kHz, Opus at 48 kHz) → packet-loss concealment → resampled to 16 kHz → 20 ms frames →
//! the call, through the leg's port (which waits for room: caller audio is never dropped between
//! the leg and the call; while the call is behind, packets wait in the socket's buffer).
//! telephone-event packets become `dtmf` events.
//!
//! Bot audio: 16-bit PCM at the codec's rate from the leg ([`AudioSink`], called on the call's
//! task) → frames of `ptime` → encode → RTP, with the timestamp following the wall clock across
//! silences (marker bit on the first packet after a gap, RFC 3551 §4.1).
//!
//! Symmetric RTP (RFC 4961): we send from the port we receive on, and latch the destination to
//! the source of the first packet received, so a caller behind NAT hears us. Only a source whose
//! IP is the SDP's connection address or the far end's signalling address is latched (and heard):
//! RTP from anyone else is dropped and counted (`foreign` in the quality figures), so a third
//! party that guesses our port cannot take the media over.

use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use voxgate_call::{LegEvent, LegPort};
use voxgate_media::codec::{AudioDecoder, AudioEncoder, Codec};
use voxgate_media::edge::Ingress;
use voxgate_media::framer::SampleFramer;
use voxgate_media::types::AudioFrame;
use voxgate_rtp::jitter::{JitterBuffer, JitterConfig, Playout};
use voxgate_rtp::packet::{is_rtcp, RtpHeader, RtpPacket};
use voxgate_rtp::rtcp;
use voxgate_rtp::sdp::Negotiated;
use voxgate_rtp::srtp::{SrtpRx, SrtpTx};
use voxgate_rtp::stats::ReceiveStats;
use voxgate_rtp::telephone_event::{key_press_packets, EventReceiver};

/// Interval between RTCP reports (RFC 3550 §6.2 minimum 5 s).
const RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// Longest gap filled with silence for the pipeline (longer gaps are skipped).
const MAX_FILL_MS: u64 = 1000;

/// The media codec for a negotiated payload format, or `None` if voxgate cannot code it.
pub fn codec_for(name: &str, clock_rate: u32) -> Option<Codec> {
    match (name.to_ascii_uppercase().as_str(), clock_rate) {
        ("PCMU", 8000) => Some(Codec::Pcmu),
        ("PCMA", 8000) => Some(Codec::Pcma),
        ("G722", 8000) => Some(Codec::G722),
        ("OPUS", 48000) => Some(Codec::Opus),
        _ => None,
    }
}

/// A bound RTP/RTCP socket pair.
pub struct RtpSockets {
    pub rtp: Arc<UdpSocket>,
    pub rtcp: UdpSocket,
    pub port: u16,
}

/// Binds an even RTP port and the next odd one for RTCP within `min..=max`, starting at a random
/// even port and trying at most 64 pairs.
///
/// # Errors
/// When no pair in the range is free.
pub async fn bind_pair(ip: IpAddr, min: u16, max: u16) -> std::io::Result<RtpSockets> {
    let pairs = ((max - min) / 2).max(1) as u32;
    let start = (uuid::Uuid::new_v4().as_u128() % pairs as u128) as u32;
    for i in 0..pairs.min(64) {
        let port = min + (((start + i) % pairs) * 2) as u16;
        let port = port + (port % 2);
        let Ok(rtp) = UdpSocket::bind(SocketAddr::new(ip, port)).await else {
            continue;
        };
        let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(ip, port + 1)).await else {
            continue;
        };
        return Ok(RtpSockets {
            rtp: Arc::new(rtp),
            rtcp,
            port,
        });
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free RTP port pair in {min}..{max}"),
    ))
}

/// Commands to a running leg.
#[derive(Debug)]
pub enum MediaControl {
    /// A new offer/answer (re-INVITE): direction, remote address, maybe codec.
    Update(Negotiated),
    /// Send these DTMF keys as RFC 4733 events, each this many ms long and as long apart.
    Dtmf(String, u32),
}

/// Call-quality figures at the end of a leg (the `metrics` event `rtp` and the store).
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quality {
    pub codec: String,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub packets_expected: u64,
    pub packets_lost: u64,
    /// Loss as a percentage of expected packets.
    pub loss_percent: f64,
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Round-trip time from the last RTCP report block about our stream, ms.
    pub rtt_ms: Option<f64>,
    pub late: u64,
    pub concealed: u64,
    pub dtmf_received: u64,
    pub final_jitter_delay_ms: u64,
    /// RTP packets from a source that is not the far end (dropped).
    pub foreign: u64,
    /// The stream was SRTP (RFC 3711, SDES keys).
    pub srtp: bool,
    /// SRTP/SRTCP packets that failed authentication or replay checks (dropped).
    pub srtp_failures: u64,
}

/// A running leg: send bot audio through `audio`, steer with `control`; the task ends when
/// `control` is dropped and returns the call quality.
pub struct MediaHandle {
    pub audio: AudioSink,
    pub control: mpsc::Sender<MediaControl>,
    pub task: JoinHandle<Quality>,
}

/// Where the leg puts bot audio: mono samples at the codec's sampling rate ([`AudioSink::rate`]),
/// any length. They are framed to `ptime`, encoded and sent as RTP at once from the caller's
/// task (the call's: a non-blocking `sendto`; a full socket buffer drops the packet), so that bot
/// audio costs no extra task wake-up per frame.
#[derive(Clone)]
pub struct AudioSink(Arc<Mutex<SendHalf>>, voxgate_media::SampleRate);

impl AudioSink {
    /// Sends `samples`; `false` when nothing could be sent (on hold, DTMF in progress, socket
    /// full).
    pub fn send_samples(&self, samples: &[i16]) -> bool {
        self.0
            .lock()
            .map(|mut h| h.send_samples(samples))
            .unwrap_or(false)
    }

    /// The sampling rate the sink takes.
    pub fn rate(&self) -> voxgate_media::SampleRate {
        self.1
    }
}

/// The sending half of the RTP stream, shared by the call (bot audio) and the leg task (DTMF, RTCP).
struct SendHalf {
    socket: Arc<UdpSocket>,
    remote: SocketAddr,
    sends: bool,
    pt: u8,
    clock_rate: u32,
    ptime_ms: u32,
    rate: voxgate_media::SampleRate,
    start: Instant,
    ssrc: u32,
    seq: u16,
    /// Random initial RTP timestamp (RFC 3550 §5.1); the send clock is `ts_base + elapsed`.
    ts_base: u32,
    next_ts: u32,
    last_send: Option<Instant>,
    /// RFC 4733 events are being sent: audio waits.
    dtmf_busy: bool,
    encoder: AudioEncoder,
    framer: SampleFramer,
    packets: u64,
    octets: u64,
    buf: Vec<u8>,
    /// SRTP: what we send is protected with our key.
    srtp: Option<SrtpTx>,
}

impl SendHalf {
    fn ts_now(&self) -> u32 {
        let units = self.start.elapsed().as_micros() as u64 * self.clock_rate as u64 / 1_000_000;
        self.ts_base.wrapping_add(units as u32)
    }

    /// The timestamp to use now: the wall clock when it is ahead of the stream.
    fn ts_at_least_now(&self) -> u32 {
        let now = self.ts_now();
        if now.wrapping_sub(self.next_ts) as i32 > 0 {
            now
        } else {
            self.next_ts
        }
    }

    fn send_packet(&mut self, marker: bool, pt: u8, timestamp: u32, payload: &[u8]) -> bool {
        let h = RtpHeader {
            marker,
            payload_type: pt,
            sequence: self.seq,
            timestamp,
            ssrc: self.ssrc,
        };
        self.buf.clear();
        h.write(payload, &mut self.buf);
        self.seq = self.seq.wrapping_add(1);
        if let Some(tx) = self.srtp.as_mut() {
            match tx.protect_rtp(&self.buf) {
                Ok(wire) => self.buf = wire,
                Err(e) => {
                    tracing::debug!("SRTP protect: {e}");
                    return false;
                }
            }
        }
        if self.socket.try_send_to(&self.buf, self.remote).is_ok() {
            self.packets += 1;
            self.octets += payload.len() as u64;
            true
        } else {
            false
        }
    }

    fn send_samples(&mut self, samples: &[i16]) -> bool {
        if !self.sends || self.dtmf_busy {
            return false;
        }
        self.framer.push(samples);
        let mut sent = true;
        while let Some(frame) = self.framer.pop() {
            let payload = self.encoder.encode(&AudioFrame::mono(self.rate, frame));
            let step = self.clock_rate * self.ptime_ms / 1000;
            let gap = self
                .last_send
                .is_none_or(|t| t.elapsed() > Duration::from_millis(3 * self.ptime_ms as u64));
            if gap {
                // After a silence the timestamp follows the wall clock.
                self.next_ts = self.ts_at_least_now();
            }
            let (pt, ts) = (self.pt, self.next_ts);
            sent &= self.send_packet(gap, pt, ts, &payload);
            self.next_ts = self.next_ts.wrapping_add(step);
            self.last_send = Some(Instant::now());
        }
        sent
    }
}

/// Jitter-buffer bounds from the configuration (`sip.jitter_min_ms`, `sip.jitter_max_ms`).
#[derive(Clone, Copy, Debug)]
pub struct MediaSettings {
    pub jitter_min: Duration,
    pub jitter_max: Duration,
}

enum Slot {
    Audio(Bytes),
    Event,
}

struct Leg {
    sockets: RtpSockets,
    neg: Negotiated,
    codec: Codec,
    port: LegPort,
    track_id: String,
    /// Decoded audio at the codec's rate → 16 kHz 20 ms frames for the call.
    ingress: Ingress,
    /// Frames played out, waiting to be handed to the call.
    to_call: Vec<AudioFrame>,
    /// Samples played out in one pass (scratch).
    pcm: Vec<i16>,
    start: Instant,
    // Receive side.
    remote_ssrc: Option<u32>,
    latched: bool,
    /// The far end's signalling address (may be latched besides the SDP's).
    peer_ip: Option<IpAddr>,
    stats: ReceiveStats,
    jitter: JitterBuffer<Slot>,
    decoder: AudioDecoder,
    last_frame: Vec<i16>,
    conceal_run: u32,
    events: EventReceiver,
    last_sr: Option<(u32, Instant)>,
    // Send side.
    ssrc: u32,
    send: Arc<Mutex<SendHalf>>,
    /// One entry per ptime tick: `(marker, payload, last packet of the key)`; `None` is a pause.
    dtmf_queue: std::collections::VecDeque<(bool, Option<[u8; 4]>, bool)>,
    dtmf_ts: u32,
    q: Quality,
    /// SRTP: what we receive is unprotected with the far end's key.
    srtp_rx: Option<SrtpRx>,
}

/// SRTP contexts for a negotiated stream's keys (none for plain RTP).
fn srtp_contexts(neg: &Negotiated, track_id: &str) -> (Option<SrtpTx>, Option<SrtpRx>) {
    let Some(keys) = &neg.srtp else {
        return (None, None);
    };
    match voxgate_rtp::srtp::contexts(&keys.local, &keys.remote) {
        Ok((tx, rx)) => (Some(tx), Some(rx)),
        Err(e) => {
            // Keys that parsed always build; this is a broken crypto provider.
            tracing::error!(track = %track_id, "SRTP contexts: {e}");
            (None, None)
        }
    }
}

/// Starts the leg for a negotiated stream. Caller audio and DTMF go to the call through `port`.
pub fn spawn(
    sockets: RtpSockets,
    neg: Negotiated,
    peer_ip: Option<IpAddr>,
    settings: MediaSettings,
    port: LegPort,
    track_id: String,
) -> Result<MediaHandle, String> {
    let codec = codec_for(&neg.codec.name, neg.codec.clock_rate)
        .ok_or_else(|| format!("codec {} is not supported", neg.codec.name))?;
    let (control_tx, control_rx) = mpsc::channel(16);
    let mut leg = Leg::new(sockets, neg, codec, settings, port, track_id);
    leg.peer_ip = peer_ip;
    let audio = AudioSink(leg.send.clone(), codec.sample_rate());
    let task = tokio::spawn(leg.run(control_rx));
    Ok(MediaHandle {
        audio,
        control: control_tx,
        task,
    })
}

fn ntp_now() -> u64 {
    rtcp::ntp_from_unix(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

impl Leg {
    fn new(
        sockets: RtpSockets,
        neg: Negotiated,
        codec: Codec,
        settings: MediaSettings,
        port: LegPort,
        track_id: String,
    ) -> Self {
        let rand = uuid::Uuid::new_v4().as_u128();
        let (tx, srtp_rx) = srtp_contexts(&neg, &track_id);
        let clock = neg.codec.clock_rate;
        let ptime = neg.ptime_ms;
        let samples = codec.sample_rate().hz() as usize * ptime as usize / 1000;
        let start = Instant::now();
        let send = SendHalf {
            socket: sockets.rtp.clone(),
            remote: neg.remote_rtp,
            sends: neg.direction.sends(),
            pt: neg.codec.pt,
            clock_rate: clock,
            ptime_ms: ptime,
            rate: codec.sample_rate(),
            start,
            ssrc: rand as u32,
            seq: (rand >> 32) as u16,
            ts_base: (rand >> 48) as u32,
            next_ts: (rand >> 48) as u32,
            last_send: None,
            dtmf_busy: false,
            encoder: AudioEncoder::new(codec),
            framer: SampleFramer::new(samples),
            packets: 0,
            octets: 0,
            buf: Vec::with_capacity(1500),
            srtp: tx,
        };
        Leg {
            jitter: JitterBuffer::new(JitterConfig {
                clock_rate: clock,
                initial_delay: (settings.jitter_min * 2).min(settings.jitter_max),
                min_delay: settings.jitter_min,
                max_delay: settings.jitter_max,
                max_packets: 64,
            }),
            stats: ReceiveStats::new(clock),
            decoder: AudioDecoder::new(codec),
            q: Quality {
                codec: neg.codec.name.clone(),
                srtp: srtp_rx.is_some(),
                ..Default::default()
            },
            srtp_rx,
            sockets,
            codec,
            port,
            track_id,
            ingress: Ingress::new(codec, 0),
            to_call: Vec::new(),
            pcm: Vec::new(),
            start,
            remote_ssrc: None,
            latched: false,
            peer_ip: None,
            last_frame: Vec::new(),
            conceal_run: 0,
            events: EventReceiver::default(),
            last_sr: None,
            ssrc: rand as u32,
            send: Arc::new(Mutex::new(send)),
            dtmf_queue: Default::default(),
            dtmf_ts: 0,
            neg,
        }
    }

    async fn run(mut self, mut control: mpsc::Receiver<MediaControl>) -> Quality {
        // No fixed playout tick: caller audio is played out when packets arrive (each arrival
        // makes the packets `delay` older due), and a flush timer covers the end of a talkspurt.
        // The 20 ms tick runs only while RFC 4733 events are being sent.
        let mut dtmf_tick = tokio::time::interval(Duration::from_millis(20));
        dtmf_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dtmf_was_active = false;
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let flush = tokio::time::sleep_until(far);
        tokio::pin!(flush);
        let mut flush_armed = false;
        let mut rtcp_timer =
            tokio::time::interval_at(tokio::time::Instant::now() + RTCP_INTERVAL, RTCP_INTERVAL);
        let mut rtp_buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 2048];
        loop {
            let dtmf_active = !self.dtmf_queue.is_empty();
            if dtmf_active && !dtmf_was_active {
                dtmf_tick.reset_immediately();
            }
            dtmf_was_active = dtmf_active;
            tokio::select! {
                r = self.sockets.rtp.recv_from(&mut rtp_buf) => match r {
                    Ok((n, from)) => {
                        self.on_datagram(&rtp_buf[..n], from).await;
                        self.playout();
                        // Whatever is left plays when due, even if no packet follows.
                        flush_armed = !self.jitter.is_empty();
                        if flush_armed {
                            let wait = self.jitter.delay() + Duration::from_millis(self.neg.ptime_ms as u64);
                            flush.as_mut().reset(tokio::time::Instant::now() + wait);
                        }
                    }
                    Err(e) => tracing::debug!("rtp recv: {e}"),
                },
                r = self.sockets.rtcp.recv_from(&mut rtcp_buf) => {
                    if let Ok((n, _)) = r {
                        self.on_rtcp(&rtcp_buf[..n]);
                    }
                },
                _ = &mut flush, if flush_armed => {
                    self.playout();
                    flush_armed = !self.jitter.is_empty();
                    if flush_armed {
                        flush.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(self.neg.ptime_ms as u64));
                    }
                }
                _ = dtmf_tick.tick(), if dtmf_active => self.send_dtmf_packet().await,
                _ = rtcp_timer.tick() => self.send_rtcp().await,
                c = control.recv() => match c {
                    Some(MediaControl::Update(n)) => self.update(n),
                    Some(MediaControl::Dtmf(keys, ms)) => self.queue_dtmf(&keys, ms),
                    None => break,
                },
            }
            // Hand what was played out to the call, waiting for room (never dropped).
            for f in self.to_call.drain(..) {
                if self.port.audio(f).await.is_err() {
                    break;
                }
            }
        }
        self.finish()
    }

    fn update(&mut self, n: Negotiated) {
        if n.remote_rtp != self.neg.remote_rtp {
            self.latched = false;
        }
        // New keys in a re-INVITE (RFC 4568 §7.1.4): new contexts both ways.
        let rekey = n.srtp != self.neg.srtp;
        let (tx, rx) = if rekey {
            srtp_contexts(&n, &self.track_id)
        } else {
            (None, None)
        };
        if rekey {
            self.srtp_rx = rx;
            self.q.srtp = self.srtp_rx.is_some();
        }
        if let Ok(mut h) = self.send.lock() {
            h.remote = n.remote_rtp;
            h.sends = n.direction.sends();
            if rekey {
                h.srtp = tx;
            }
        }
        // A codec change within the supported set keeps the same decoder type only if equal;
        // the SIP layer refuses others with 488 before we get here.
        self.neg = n;
    }

    async fn on_datagram(&mut self, buf: &[u8], from: SocketAddr) {
        if is_rtcp(buf) {
            // rtcp-mux peers.
            self.on_rtcp(buf);
            return;
        }
        // SRTP: only authenticated packets count, for latching as for audio.
        let plain;
        let buf = match self.srtp_rx.as_mut() {
            Some(rx) => match rx.unprotect_rtp(buf) {
                Ok(p) => {
                    plain = p;
                    &plain[..]
                }
                Err(e) => {
                    self.q.srtp_failures += 1;
                    if self.q.srtp_failures == 1 {
                        tracing::info!(track = %self.track_id, "SRTP packet from {from} dropped: {e}");
                    }
                    return;
                }
            },
            None => buf,
        };
        let Ok(p) = RtpPacket::parse(buf) else { return };
        if !self.latched {
            if from.ip() != self.neg.remote_rtp.ip() && Some(from.ip()) != self.peer_ip {
                self.q.foreign += 1;
                if self.q.foreign == 1 {
                    tracing::info!(track = %self.track_id, "RTP from {from} ignored: neither the SDP's address ({}) nor the signalling peer", self.neg.remote_rtp.ip());
                }
                return;
            }
            // Symmetric RTP: answer to where the media really comes from.
            self.latched = true;
            if from != self.neg.remote_rtp {
                tracing::debug!(track = %self.track_id, "RTP latched to {from} (SDP said {})", self.neg.remote_rtp);
                self.neg.remote_rtp = from;
                if let Ok(mut h) = self.send.lock() {
                    h.remote = from;
                }
            }
        } else if from != self.neg.remote_rtp {
            self.q.foreign += 1;
            return;
        }
        if !self.neg.direction.receives() {
            return;
        }
        let h = p.header;
        if self.remote_ssrc != Some(h.ssrc) {
            if self.remote_ssrc.is_some() {
                tracing::debug!(track = %self.track_id, "SSRC changed to {:08x}", h.ssrc);
                self.collect_stats();
                self.jitter.reset();
                self.stats = ReceiveStats::new(self.neg.codec.clock_rate);
                self.events = EventReceiver::default();
            }
            self.remote_ssrc = Some(h.ssrc);
            tracing::debug!(track = %self.track_id, ssrc = h.ssrc, seq = h.sequence, pt = h.payload_type, "new RTP source");
        }
        let now = self.start.elapsed();
        let ext = self.stats.on_packet(h.sequence, h.timestamp, now);
        if Some(h.payload_type) == self.neg.telephone_event {
            if let Some(digit) = self.events.on_packet(h.timestamp, p.payload) {
                self.q.dtmf_received += 1;
                let _ = self.port.event(LegEvent::Dtmf(digit)).await;
            }
            self.jitter.push(now, ext, h.timestamp, Slot::Event);
        } else if h.payload_type == self.neg.codec.pt {
            self.jitter.push(
                now,
                ext,
                h.timestamp,
                Slot::Audio(Bytes::copy_from_slice(p.payload)),
            );
        }
    }

    fn on_rtcp(&mut self, buf: &[u8]) {
        let plain;
        let buf = match self.srtp_rx.as_mut() {
            Some(rx) => match rx.unprotect_rtcp(buf) {
                Ok(p) => {
                    plain = p;
                    &plain[..]
                }
                Err(e) => {
                    self.q.srtp_failures += 1;
                    if self.q.srtp_failures == 1 {
                        tracing::info!(track = %self.track_id, len = buf.len(), "SRTCP packet dropped: {e}");
                    }
                    return;
                }
            },
            None => buf,
        };
        let Ok(c) = rtcp::parse(buf) else { return };
        if let Some(si) = c.sender_info {
            self.last_sr = Some((rtcp::ntp_short(si.ntp), Instant::now()));
        }
        for b in c.reports.iter().filter(|b| b.ssrc == self.ssrc) {
            if let Some(rtt) = rtcp::round_trip(b, ntp_now()) {
                self.q.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
            }
        }
    }

    /// Sends the next queued RFC 4733 packet (one per 20 ms tick); audio waits meanwhile.
    async fn send_dtmf_packet(&mut self) {
        let Some((marker, payload, last)) = self.dtmf_queue.pop_front() else {
            return;
        };
        let Ok(mut h) = self.send.lock() else { return };
        h.dtmf_busy = !self.dtmf_queue.is_empty();
        if marker {
            // Each key is a new event with its own start timestamp (RFC 4733 §2.5.1.2).
            self.dtmf_ts = h.ts_at_least_now();
        }
        if let (Some(pt), Some(payload)) = (self.neg.telephone_event, payload) {
            h.send_packet(marker, pt, self.dtmf_ts, &payload);
        }
        if last {
            // The next audio starts after the event, with the marker bit.
            h.next_ts = h.ts_at_least_now();
            h.last_send = None;
        }
    }

    /// Plays out every packet (or gap) that is due, as 16 kHz frames for the call.
    fn playout(&mut self) {
        // Inbound playout.
        let now = self.start.elapsed();
        let mut pcm = std::mem::take(&mut self.pcm);
        pcm.clear();
        while let Some(p) = self.jitter.pop(now) {
            match p {
                Playout::Packet {
                    payload: Slot::Audio(b),
                    ..
                } => {
                    let f = self.decoder.decode(&b);
                    self.last_frame.clone_from(&f.samples);
                    self.conceal_run = 0;
                    pcm.extend_from_slice(&f.samples);
                }
                Playout::Packet {
                    payload: Slot::Event,
                    ..
                } => {}
                Playout::Lost { count, .. } => {
                    self.q.concealed += count;
                    let frame_len =
                        self.codec.sample_rate().hz() as usize * self.neg.ptime_ms as usize / 1000;
                    if count <= 3 && !self.last_frame.is_empty() {
                        // Repeat the last frame, fading: 0.5, 0.25, 0.125 (simple PLC).
                        self.conceal_run += 1;
                        let gain = 0.5f32.powi(self.conceal_run as i32);
                        pcm.extend(self.last_frame.iter().map(|&s| (s as f32 * gain) as i16));
                    } else {
                        let ms = (count * self.neg.ptime_ms as u64).min(MAX_FILL_MS);
                        let n = (ms as usize * frame_len) / self.neg.ptime_ms.max(1) as usize;
                        pcm.extend(std::iter::repeat_n(0i16, n));
                    }
                }
            }
        }
        if !pcm.is_empty() {
            self.ingress.push_samples(&pcm, &mut self.to_call);
        }
        self.pcm = pcm;
    }

    fn queue_dtmf(&mut self, keys: &str, duration_ms: u32) {
        let step = self.neg.ptime_ms.clamp(10, 60);
        for k in keys.chars() {
            let Some(packets) = key_press_packets(k, duration_ms, step, self.neg.codec.clock_rate)
            else {
                continue;
            };
            let n = packets.len();
            for (i, (m, p)) in packets.into_iter().enumerate() {
                self.dtmf_queue.push_back((m, Some(p), i + 1 == n));
            }
            // As long a pause between keys.
            for _ in 0..(duration_ms / step) {
                self.dtmf_queue.push_back((false, None, false));
            }
        }
        if !self.dtmf_queue.is_empty() {
            if let Ok(mut h) = self.send.lock() {
                h.dtmf_busy = true;
            }
        }
    }

    async fn send_rtcp(&mut self) {
        let mut reports = Vec::new();
        if let Some(ssrc) = self.remote_ssrc {
            let (last_sr, dlsr) = match self.last_sr {
                Some((lsr, at)) => (
                    lsr,
                    (at.elapsed().as_micros() as u64 * 65536 / 1_000_000) as u32,
                ),
                None => (0, 0),
            };
            reports.push(rtcp::ReportBlock {
                ssrc,
                fraction_lost: self.stats.take_fraction_lost(),
                cumulative_lost: self.stats.lost() as u32,
                highest_seq: self.stats.max_ext_seq() as u32,
                jitter: self.stats.jitter_rtp(),
                last_sr,
                delay_since_last_sr: dlsr,
            });
        }
        let sender = self
            .send
            .lock()
            .ok()
            .filter(|h| h.packets > 0)
            .map(|h| rtcp::SenderInfo {
                ntp: ntp_now(),
                rtp_timestamp: h.ts_now(),
                packets: h.packets as u32,
                octets: h.octets as u32,
            });
        let mut buf = Vec::with_capacity(128);
        rtcp::build(self.ssrc, sender, &reports, "voxgate", &mut buf);
        if let Ok(mut h) = self.send.lock() {
            if let Some(tx) = h.srtp.as_mut() {
                match tx.protect_rtcp(&buf) {
                    Ok(wire) => buf = wire,
                    Err(_) => return,
                }
            }
        }
        let _ = self.sockets.rtcp.send_to(&buf, self.neg.remote_rtcp).await;
    }

    fn collect_stats(&mut self) {
        self.q.packets_received += self.stats.received();
        self.q.packets_expected += self.stats.expected();
        self.q.packets_lost += self.stats.lost();
        self.q.jitter_ms = self.q.jitter_ms.max(self.stats.jitter_ms());
    }

    fn finish(mut self) -> Quality {
        self.collect_stats();
        let js = self.jitter.stats();
        self.q.late = js.late;
        self.q.packets_sent = self.send.lock().map(|h| h.packets).unwrap_or(0);
        self.q.loss_percent = if self.q.packets_expected > 0 {
            100.0 * self.q.packets_lost as f64 / self.q.packets_expected as f64
        } else {
            0.0
        };
        self.q.final_jitter_delay_ms = self.jitter.delay().as_millis() as u64;
        self.q
    }
}
