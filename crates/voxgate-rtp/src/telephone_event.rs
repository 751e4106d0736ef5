//! RFC 4733 telephone-event (DTMF) payloads: 4 bytes, `event(8) | E R volume(6) | duration(16)`
//! (§2.3). All packets of one event share the RTP timestamp of its start; the duration (RTP clock
//! units) grows in each update; the end packet (E bit) is sent three times (§2.5.1.4).

/// Parse error for a telephone-event payload.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("telephone-event payload must be at least 4 bytes, got {0}")]
pub struct EventError(pub usize);

/// One telephone-event payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code: 0–9, 10 = `*`, 11 = `#`, 12–15 = A–D, 16 = flash (RFC 4733 §3.2).
    pub event: u8,
    /// End bit.
    pub end: bool,
    /// Power level, −dBm0 (0–63).
    pub volume: u8,
    /// Duration so far, RTP clock units.
    pub duration: u16,
}

impl TelephoneEvent {
    pub fn parse(payload: &[u8]) -> Result<Self, EventError> {
        if payload.len() < 4 {
            return Err(EventError(payload.len()));
        }
        Ok(TelephoneEvent {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3f,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            ((self.end as u8) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// The DTMF key for an event code, or `None` for non-key events (flash and others).
pub fn event_to_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// The event code of a DTMF key (`0-9 * # A-D`, case-insensitive).
pub fn digit_to_event(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        c @ '0'..='9' => Some(c as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        c @ 'A'..='D' => Some(c as u8 - b'A' + 12),
        _ => None,
    }
}

/// Turns a stream of telephone-event packets into key presses, once per event: the first packet
/// of a new event (new RTP timestamp) reports it; updates, end packets and their retransmissions
/// are duplicates.
#[derive(Default, Debug)]
pub struct EventReceiver {
    last: Option<(u32, u8)>,
}

impl EventReceiver {
    /// Feeds one packet (its RTP timestamp and payload); returns a new key press.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        let ev = TelephoneEvent::parse(payload).ok()?;
        if self.last == Some((timestamp, ev.event)) {
            return None;
        }
        self.last = Some((timestamp, ev.event));
        event_to_digit(ev.event)
    }
}

/// The packets that send one key press, one per `ptime`: `(marker, payload)` in order. All use the
/// event's start timestamp. `duration_ms` of tone, then three end packets.
pub fn key_press_packets(
    digit: char,
    duration_ms: u32,
    ptime_ms: u32,
    clock_rate: u32,
) -> Option<Vec<(bool, [u8; 4])>> {
    let event = digit_to_event(digit)?;
    let ptime_ms = ptime_ms.clamp(10, 60);
    let step = clock_rate / 1000 * ptime_ms;
    let total = (clock_rate / 1000 * duration_ms.max(ptime_ms)).min(u16::MAX as u32);
    let mut out = Vec::new();
    let mut d = step;
    while d < total {
        let ev = TelephoneEvent {
            event,
            end: false,
            volume: 10,
            duration: d as u16,
        };
        out.push((out.is_empty(), ev.to_bytes()));
        d += step;
    }
    let end = TelephoneEvent {
        event,
        end: true,
        volume: 10,
        duration: total as u16,
    };
    for _ in 0..3 {
        out.push((out.is_empty(), end.to_bytes()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_map_both_ways() {
        for c in "0123456789*#ABCD".chars() {
            assert_eq!(event_to_digit(digit_to_event(c).unwrap()), Some(c));
        }
        assert_eq!(digit_to_event('x'), None);
        assert_eq!(event_to_digit(16), None);
    }

    #[test]
    fn one_report_per_event_despite_updates_and_end_retransmissions() {
        let packets = key_press_packets('#', 100, 20, 8000).unwrap();
        assert!(packets[0].0 && !packets[1].0);
        assert_eq!(packets.len(), 4 + 3);
        let last = TelephoneEvent::parse(&packets[6].1).unwrap();
        assert!(last.end);
        assert_eq!(last.duration, 800);
        let mut rx = EventReceiver::default();
        let mut keys = String::new();
        for (_, p) in &packets {
            keys.extend(rx.on_packet(1000, p));
        }
        // A second press of the same key has a new timestamp.
        for (_, p) in &packets {
            keys.extend(rx.on_packet(3000, p));
        }
        // Only end packets of an event whose start was lost still count.
        let one = key_press_packets('1', 60, 20, 8000).unwrap();
        keys.extend(rx.on_packet(5000, &one[one.len() - 1].1));
        keys.extend(rx.on_packet(5000, &one[one.len() - 1].1));
        assert_eq!(keys, "##1");
        assert_eq!(rx.on_packet(6000, &[1, 2]), None);
    }
}
