//! Receive statistics for one RTP source, as RFC 3550 Appendix A defines them: the extended
//! highest sequence number (A.1, with wrap), packets expected and lost (A.3), and the interarrival
//! jitter estimate (A.8, in RTP clock units).

use std::time::Duration;

/// Sequence numbers further ahead than this are a restart of the source (RFC 3550 A.1 `MAX_DROPOUT`).
const MAX_DROPOUT: u16 = 3000;
/// Sequence numbers this far behind are a restart too (A.1 `MAX_MISORDER`).
const MAX_MISORDER: u16 = 100;

/// Statistics of the packets received from one SSRC.
#[derive(Clone, Debug)]
pub struct ReceiveStats {
    /// RTP clock rate in Hz, to turn arrival times into timestamp units.
    clock_rate: u32,
    base_seq: u64,
    /// Extended highest sequence number seen (cycles << 16 | seq).
    max_ext_seq: u64,
    received: u64,
    /// Duplicates and packets from before `base_seq` (not counted as received).
    duplicates: u64,
    /// Interarrival jitter, RTP clock units, ×16 fixed point as in A.8.
    jitter_q4: u64,
    last_transit: Option<i64>,
    // For the fraction lost of the next report (A.3).
    expected_prior: u64,
    received_prior: u64,
    started: bool,
}

impl ReceiveStats {
    /// Statistics for a source whose payload's RTP clock is `clock_rate` Hz.
    pub fn new(clock_rate: u32) -> Self {
        ReceiveStats {
            clock_rate: clock_rate.max(1),
            base_seq: 0,
            max_ext_seq: 0,
            received: 0,
            duplicates: 0,
            jitter_q4: 0,
            last_transit: None,
            expected_prior: 0,
            received_prior: 0,
            started: false,
        }
    }

    /// Records one packet arriving at `arrival` with `seq` and RTP `timestamp`. Returns the
    /// packet's extended sequence number (monotonic across 16-bit wraps).
    pub fn on_packet(&mut self, seq: u16, timestamp: u32, arrival: Duration) -> u64 {
        let ext = self.extend(seq);
        // A.8: transit = arrival (in RTP units) - timestamp; J += (|D| - J) / 16.
        let arrival_rtp = (arrival.as_micros() as u64 * self.clock_rate as u64 / 1_000_000) as i64;
        let transit = arrival_rtp.wrapping_sub(timestamp as i64);
        if let Some(last) = self.last_transit {
            let d = transit.wrapping_sub(last);
            // Unwrap the 32-bit timestamp difference.
            let d = ((d as i32) as i64).unsigned_abs();
            // J += (|D| - J)/16, in Q4.
            self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
        ext
    }

    fn extend(&mut self, seq: u16) -> u64 {
        if !self.started {
            self.started = true;
            self.base_seq = seq as u64;
            self.max_ext_seq = seq as u64;
            self.received = 1;
            return seq as u64;
        }
        let max_seq = (self.max_ext_seq & 0xffff) as u16;
        let cycles = self.max_ext_seq & !0xffff;
        let delta = seq.wrapping_sub(max_seq);
        if delta == 0 {
            self.duplicates += 1;
            return self.max_ext_seq;
        }
        if delta < MAX_DROPOUT {
            // In order, possibly with a gap; a wrap adds a cycle.
            let cycles = if seq < max_seq {
                cycles + 0x1_0000
            } else {
                cycles
            };
            self.max_ext_seq = cycles | seq as u64;
            self.received += 1;
            self.max_ext_seq
        } else if delta <= u16::MAX - MAX_MISORDER {
            // A very large jump: the sender restarted. Start again from here.
            self.started = false;
            self.expected_prior = 0;
            self.received_prior = 0;
            self.last_transit = None;
            self.extend(seq)
        } else {
            // Late (reordered) packet: it belongs to this or the previous cycle.
            let ext = if seq > max_seq {
                cycles.wrapping_sub(0x1_0000) | seq as u64
            } else {
                cycles | seq as u64
            };
            if ext < self.base_seq {
                self.duplicates += 1;
            } else {
                self.received += 1;
            }
            ext
        }
    }

    /// Packets expected so far (A.3): extended max − base + 1.
    pub fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        self.max_ext_seq - self.base_seq + 1
    }

    /// Packets received (duplicates excluded).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Cumulative packets lost (A.3); negative when duplicates arrived, clamped to 0 here.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Duplicate packets seen.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Extended highest sequence number received.
    pub fn max_ext_seq(&self) -> u64 {
        self.max_ext_seq
    }

    /// Interarrival jitter in RTP clock units (the RR field).
    pub fn jitter_rtp(&self) -> u32 {
        (self.jitter_q4 >> 4) as u32
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        (self.jitter_q4 as f64 / 16.0) * 1000.0 / self.clock_rate as f64
    }

    /// Fraction lost since the previous call, as the 8-bit fixed-point RR field (A.3).
    pub fn take_fraction_lost(&mut self) -> u8 {
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior.min(expected);
        self.expected_prior = expected;
        let received_interval = self.received - self.received_prior.min(self.received);
        self.received_prior = self.received;
        let lost = expected_interval.saturating_sub(received_interval);
        if expected_interval == 0 || lost == 0 {
            0
        } else {
            ((lost << 8) / expected_interval).min(255) as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_loss_across_sequence_wrap() {
        let mut s = ReceiveStats::new(8000);
        let mut seq: u16 = 65530;
        let mut ts: u32 = u32::MAX - 800;
        for i in 0..20u64 {
            if i != 7 && i != 8 {
                s.on_packet(seq, ts, ms(20 * i));
            }
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(160);
        }
        assert_eq!(s.expected(), 20);
        assert_eq!(s.received(), 18);
        assert_eq!(s.lost(), 2);
        assert_eq!(s.max_ext_seq(), 65530 + 19);
        assert_eq!(s.take_fraction_lost(), (2 * 256 / 20) as u8);
        assert_eq!(s.take_fraction_lost(), 0);
        // Perfectly paced packets have no jitter, even across the timestamp wrap.
        assert_eq!(s.jitter_rtp(), 0);
    }

    #[test]
    fn late_and_duplicate_packets() {
        let mut s = ReceiveStats::new(8000);
        s.on_packet(10, 0, ms(0));
        s.on_packet(12, 320, ms(40));
        s.on_packet(11, 160, ms(45)); // late, fills the gap
        s.on_packet(12, 320, ms(46)); // duplicate
        assert_eq!(s.received(), 3);
        assert_eq!(s.duplicates(), 1);
        assert_eq!(s.lost(), 0);
        assert!(s.jitter_rtp() > 0);
    }

    #[test]
    fn jitter_converges_to_the_mean_deviation() {
        // Alternating 10 ms early/late arrivals: |D| = 20 ms = 160 units every packet.
        let mut s = ReceiveStats::new(8000);
        for i in 0..500u64 {
            let skew = if i % 2 == 0 { 0 } else { 20 };
            s.on_packet(i as u16, (i * 160) as u32, ms(20 * i + skew));
        }
        assert!((s.jitter_ms() - 20.0).abs() < 1.0, "{}", s.jitter_ms());
    }

    #[test]
    fn a_restart_resets_the_base() {
        let mut s = ReceiveStats::new(8000);
        for i in 0..5u16 {
            s.on_packet(i, 0, ms(0));
        }
        s.on_packet(40000, 0, ms(100));
        s.on_packet(40001, 0, ms(120));
        assert_eq!(s.expected(), 2);
        assert_eq!(s.lost(), 0);
    }
}
