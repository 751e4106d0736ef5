//! An adaptive jitter buffer for one RTP source.
//!
//! Packets are keyed by extended sequence number (see [`crate::stats::ReceiveStats::on_packet`])
//! and played out by RTP timestamp: a packet with timestamp `ts` is due at
//! `base_time + (ts - base_ts) / clock_rate + delay`, where `base` is the first packet's arrival
//! (re-anchored at every playout so timestamp differences stay small across the 2^32 wrap).
//!
//! `delay` adapts: a packet arriving after its playout time was lost to the caller (counted as
//! `late`) and raises the delay by its lateness plus 10 ms, up to `max_delay`; when every packet of
//! the last [`WINDOW`] arrived at least 20 ms before it was due, the delay shrinks by 10 ms down to
//! `min_delay` (shrinking plays the next packets a little early: a short time compression).
//!
//! A gap at the head of the buffer, when a later packet is due, is reported as
//! [`Playout::Lost`] so the caller can conceal it (packet-loss concealment is the codec's and the
//! leg's business; this only says when and how many packets).

use std::collections::BTreeMap;
use std::time::Duration;

/// Packets per adaptation window (5 s of 20 ms packets).
pub const WINDOW: u32 = 250;

/// Jitter buffer parameters.
#[derive(Clone, Debug)]
pub struct JitterConfig {
    /// RTP clock rate of the stream, Hz.
    pub clock_rate: u32,
    /// Initial playout delay.
    pub initial_delay: Duration,
    /// Lower bound of the adaptive delay.
    pub min_delay: Duration,
    /// Upper bound of the adaptive delay.
    pub max_delay: Duration,
    /// Packets held at most; when full, the oldest is dropped (counted as overflow).
    pub max_packets: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            clock_rate: 8000,
            initial_delay: Duration::from_millis(40),
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_packets: 64,
        }
    }
}

/// What [`JitterBuffer::pop`] yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Playout<T> {
    /// The next packet, due now.
    Packet {
        ext_seq: u64,
        timestamp: u32,
        payload: T,
    },
    /// `count` packets starting at `first_seq` never arrived (or arrived too late) and a later
    /// packet is due: conceal them.
    Lost { first_seq: u64, count: u64 },
}

/// Counters for call-quality reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub played: u64,
    /// Packets reported as [`Playout::Lost`].
    pub lost: u64,
    /// Packets that arrived after their playout time (dropped).
    pub late: u64,
    pub duplicates: u64,
    /// Packets dropped because the buffer was full.
    pub overflow: u64,
}

/// The buffer; `T` is the payload (bytes, or an enum of audio and events).
pub struct JitterBuffer<T> {
    cfg: JitterConfig,
    packets: BTreeMap<u64, (u32, T)>,
    next_seq: Option<u64>,
    base: Option<(Duration, u32)>,
    delay: Duration,
    window_count: u32,
    window_min_slack: Duration,
    stats: JitterStats,
}

/// Gaps up to this many packets are reported one packet at a time; longer ones at once.
const SMALL_GAP: u64 = 3;

impl<T> JitterBuffer<T> {
    pub fn new(cfg: JitterConfig) -> Self {
        let delay = cfg.initial_delay.clamp(cfg.min_delay, cfg.max_delay);
        JitterBuffer {
            packets: BTreeMap::new(),
            next_seq: None,
            base: None,
            delay,
            window_count: 0,
            window_min_slack: Duration::MAX,
            stats: JitterStats::default(),
            cfg,
        }
    }

    /// Current playout delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    fn due(&self, ts: u32) -> Duration {
        let (t0, ts0) = self.base.expect("anchored before use");
        let diff = ts.wrapping_sub(ts0) as i32 as i64;
        let offset_us = diff * 1_000_000 / self.cfg.clock_rate.max(1) as i64;
        let t = if offset_us >= 0 {
            t0 + Duration::from_micros(offset_us as u64)
        } else {
            t0.saturating_sub(Duration::from_micros((-offset_us) as u64))
        };
        t + self.delay
    }

    /// Adds a packet that arrived at `now`.
    pub fn push(&mut self, now: Duration, ext_seq: u64, timestamp: u32, payload: T) {
        if self.base.is_none() {
            self.base = Some((now, timestamp));
        }
        let due = self.due(timestamp);
        if self.next_seq.is_some_and(|n| ext_seq < n) {
            // Too late: its turn has passed. Give the next packets more room.
            self.stats.late += 1;
            let lateness = now.saturating_sub(due);
            self.delay =
                (self.delay + lateness.min(Duration::from_millis(60)) + Duration::from_millis(10))
                    .min(self.cfg.max_delay);
            self.window_count = 0;
            self.window_min_slack = Duration::MAX;
            return;
        }
        if self.packets.contains_key(&ext_seq) {
            self.stats.duplicates += 1;
            return;
        }
        self.window_min_slack = self.window_min_slack.min(due.saturating_sub(now));
        self.window_count += 1;
        if self.window_count >= WINDOW {
            if self.window_min_slack >= Duration::from_millis(20) {
                self.delay = self
                    .delay
                    .saturating_sub(Duration::from_millis(10))
                    .max(self.cfg.min_delay);
            }
            self.window_count = 0;
            self.window_min_slack = Duration::MAX;
        }
        self.packets.insert(ext_seq, (timestamp, payload));
        while self.packets.len() > self.cfg.max_packets {
            if let Some((seq, _)) = self.packets.pop_first() {
                self.stats.overflow += 1;
                self.next_seq = Some(seq + 1);
            }
        }
    }

    /// The next packet or gap due at `now`, if any. Call until `None` on every playout tick.
    pub fn pop(&mut self, now: Duration) -> Option<Playout<T>> {
        let (&first, &(ts, _)) = self.packets.first_key_value()?;
        let next = *self.next_seq.get_or_insert(first);
        if self.due(ts) > now {
            return None;
        }
        if first == next {
            let (_, (timestamp, payload)) = self.packets.pop_first().expect("non-empty");
            self.next_seq = Some(next + 1);
            // Re-anchor at this packet's nominal time so offsets stay small.
            let (t0, ts0) = self.base.expect("anchored");
            let diff = timestamp.wrapping_sub(ts0) as i32 as i64;
            let us = diff * 1_000_000 / self.cfg.clock_rate.max(1) as i64;
            let t = if us >= 0 {
                t0 + Duration::from_micros(us as u64)
            } else {
                t0.saturating_sub(Duration::from_micros((-us) as u64))
            };
            self.base = Some((t, timestamp));
            self.stats.played += 1;
            return Some(Playout::Packet {
                ext_seq: next,
                timestamp,
                payload,
            });
        }
        // `first > next`: packets next..first are missing and a later one is due.
        let gap = first - next;
        let count = if gap <= SMALL_GAP { 1 } else { gap };
        self.next_seq = Some(next + count);
        self.stats.lost += count;
        Some(Playout::Lost {
            first_seq: next,
            count,
        })
    }

    /// Forgets everything (new SSRC); counters are kept.
    pub fn reset(&mut self) {
        self.packets.clear();
        self.next_seq = None;
        self.base = None;
        self.delay = self
            .cfg
            .initial_delay
            .clamp(self.cfg.min_delay, self.cfg.max_delay);
    }

    /// Removes and returns every waiting packet in order, ignoring playout times (end of stream).
    pub fn drain(&mut self) -> Vec<(u64, T)> {
        let out = std::mem::take(&mut self.packets)
            .into_iter()
            .map(|(k, (_, p))| (k, p))
            .collect();
        self.next_seq = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic randomness for the emulated network.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    struct Outcome {
        played: Vec<u64>,
        lost: u64,
        stats: JitterStats,
        delay: Duration,
        sent: u64,
        dropped_by_network: u64,
    }

    /// Sends `n` packets of 20 ms through a network with base delay 30 ms, uniform extra delay
    /// up to `jitter_ms`, loss probability `loss`; the receiver polls every 10 ms of virtual time.
    fn run(n: u64, jitter_ms: f64, loss: f64, start_seq: u16, start_ts: u32, seed: u64) -> Outcome {
        let mut rng = Rng(seed);
        let mut arrivals: Vec<(Duration, u16, u32)> = Vec::new();
        let mut dropped = 0;
        for i in 0..n {
            if rng.unit() < loss {
                dropped += 1;
                continue;
            }
            let sent = Duration::from_millis(20 * i);
            let delay = Duration::from_micros(((30.0 + rng.unit() * jitter_ms) * 1000.0) as u64);
            arrivals.push((
                sent + delay,
                start_seq.wrapping_add(i as u16),
                start_ts.wrapping_add(160 * i as u32),
            ));
        }
        arrivals.sort_by_key(|a| a.0);
        let mut stats = crate::stats::ReceiveStats::new(8000);
        let mut jb: JitterBuffer<u64> = JitterBuffer::new(JitterConfig::default());
        let mut played = Vec::new();
        let mut lost = 0;
        let mut next_arrival = 0;
        let end = Duration::from_millis(20 * n + 500);
        let mut now = Duration::ZERO;
        while now <= end {
            while next_arrival < arrivals.len() && arrivals[next_arrival].0 <= now {
                let (t, seq, ts) = arrivals[next_arrival];
                let ext = stats.on_packet(seq, ts, t);
                jb.push(now, ext, ts, ext);
                next_arrival += 1;
            }
            while let Some(p) = jb.pop(now) {
                match p {
                    Playout::Packet {
                        payload, ext_seq, ..
                    } => {
                        assert_eq!(payload, ext_seq);
                        played.push(ext_seq)
                    }
                    Playout::Lost { count, .. } => lost += count,
                }
            }
            now += Duration::from_millis(10);
        }
        Outcome {
            played,
            lost,
            stats: jb.stats(),
            delay: jb.delay(),
            sent: n,
            dropped_by_network: dropped,
        }
    }

    #[test]
    fn clean_network_plays_everything_in_order_and_shrinks_to_min_delay() {
        let o = run(1000, 0.0, 0.0, 100, 0, 1);
        assert_eq!(o.played.len(), 1000);
        assert!(o.played.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(o.lost, 0);
        assert_eq!(o.stats.late, 0);
        assert_eq!(o.delay, Duration::from_millis(20));
    }

    #[test]
    fn jitter_loss_and_reordering_with_sequence_and_timestamp_wrap() {
        // 60 ms of jitter against 20 ms packets reorders packets constantly.
        let o = run(3000, 60.0, 0.03, 65000, u32::MAX - 100_000, 7);
        assert!(o.played.windows(2).all(|w| w[1] > w[0]), "playout order");
        let accounted = o.played.len() as u64 + o.lost;
        // Everything is either played or reported lost; the head/tail may differ by a packet.
        assert!(
            accounted >= o.sent - 2 && accounted <= o.sent,
            "{accounted} of {}",
            o.sent
        );
        // Network loss is reported; lateness adds a little while the delay adapts.
        assert!(
            o.lost >= o.dropped_by_network,
            "{} < {}",
            o.lost,
            o.dropped_by_network
        );
        assert!(o.stats.late < 30, "late {}", o.stats.late);
        assert!(
            o.delay >= Duration::from_millis(60) && o.delay <= Duration::from_millis(200),
            "{:?}",
            o.delay
        );
        assert!(
            o.played.iter().any(|&s| s > 65536),
            "extended sequence wrapped"
        );
    }

    #[test]
    fn large_gap_is_one_loss_report_and_reset_starts_over() {
        let mut jb: JitterBuffer<u8> = JitterBuffer::new(JitterConfig::default());
        let t = Duration::from_millis;
        jb.push(t(0), 1, 0, 1);
        jb.push(t(5), 50, 49 * 160, 2);
        assert_eq!(
            jb.pop(t(40)),
            Some(Playout::Packet {
                ext_seq: 1,
                timestamp: 0,
                payload: 1
            })
        );
        assert_eq!(jb.pop(t(40)), None);
        assert_eq!(
            jb.pop(t(49 * 20 + 40)),
            Some(Playout::Lost {
                first_seq: 2,
                count: 48
            })
        );
        assert!(matches!(
            jb.pop(t(49 * 20 + 40)),
            Some(Playout::Packet { ext_seq: 50, .. })
        ));
        jb.push(t(2000), 7, 123, 3);
        assert_eq!(jb.stats().late, 1);
        jb.reset();
        jb.push(t(2000), 7, 123, 3);
        assert!(matches!(
            jb.pop(t(2040)),
            Some(Playout::Packet { ext_seq: 7, .. })
        ));
        // Overflow drops the oldest.
        let mut jb: JitterBuffer<u8> = JitterBuffer::new(JitterConfig {
            max_packets: 4,
            ..Default::default()
        });
        for i in 0..6u64 {
            jb.push(t(0), i, i as u32 * 160, 0);
        }
        assert_eq!(jb.stats().overflow, 2);
        assert_eq!(jb.drain().first().map(|p| p.0), Some(2));
    }
}
