//! Cutting streams into fixed frames.
//!
//! Clients send binary WebSocket messages of any size (seed 002 does not fix one); the pipeline
//! works on 20 ms frames. [`ByteFramer`] buffers encoded bytes and yields whole frames of a codec;
//! [`SampleFramer`] does the same for decoded samples.

use std::collections::VecDeque;

/// Buffers bytes and yields frames of exactly `frame_bytes`. Holds at most `max_buffered` bytes;
/// past that the oldest bytes are dropped and counted (a client sending faster than real time for
/// long is misbehaving, and memory must stay bounded).
pub struct ByteFramer {
    frame_bytes: usize,
    max_buffered: usize,
    buf: VecDeque<u8>,
    dropped_bytes: u64,
}

impl ByteFramer {
    /// `frame_bytes` per frame (e.g. 160 for 20 ms of PCMU); buffer bound `max_buffered` bytes.
    pub fn new(frame_bytes: usize, max_buffered: usize) -> Self {
        assert!(frame_bytes > 0 && max_buffered >= frame_bytes);
        ByteFramer {
            frame_bytes,
            max_buffered,
            buf: VecDeque::new(),
            dropped_bytes: 0,
        }
    }

    /// Appends bytes; returns how many old bytes had to be dropped to stay within the bound.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        self.buf.extend(bytes);
        let excess = self.buf.len().saturating_sub(self.max_buffered);
        // Drop whole frames so that PCM stays sample-aligned.
        let drop = excess.div_ceil(self.frame_bytes) * self.frame_bytes;
        let drop = drop.min(self.buf.len());
        self.buf.drain(..drop);
        self.dropped_bytes += drop as u64;
        drop
    }

    /// Next whole frame, if buffered.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        (self.buf.len() >= self.frame_bytes).then(|| self.buf.drain(..self.frame_bytes).collect())
    }

    /// Bytes waiting for a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Total bytes dropped because the buffer was full.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }
}

/// Accumulates samples and yields frames of exactly `frame_len` samples.
#[derive(Default)]
pub struct SampleFramer {
    frame_len: usize,
    buf: Vec<i16>,
}

impl SampleFramer {
    pub fn new(frame_len: usize) -> Self {
        SampleFramer {
            frame_len,
            buf: Vec::with_capacity(frame_len * 2),
        }
    }

    pub fn push(&mut self, samples: &[i16]) {
        self.buf.extend_from_slice(samples);
    }

    pub fn pop(&mut self) -> Option<Vec<i16>> {
        (self.buf.len() >= self.frame_len).then(|| self.buf.drain(..self.frame_len).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sized_messages_become_whole_frames() {
        let mut f = ByteFramer::new(160, 1600);
        f.push(&[1; 100]);
        assert!(f.pop().is_none());
        f.push(&[2; 300]);
        assert_eq!(f.pop().unwrap().len(), 160);
        assert_eq!(f.pop().unwrap().len(), 160);
        assert!(f.pop().is_none());
        assert_eq!(f.buffered(), 80);
    }

    #[test]
    fn overflow_drops_oldest_whole_frames() {
        let mut f = ByteFramer::new(4, 8);
        f.push(&[1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(f.push(&[3, 3, 3, 3]), 4);
        assert_eq!(f.pop().unwrap(), vec![2, 2, 2, 2]);
        assert_eq!(f.dropped_bytes(), 4);
    }
}
