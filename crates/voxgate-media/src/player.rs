//! The outbound playout queue: what the bot says (TTS, file playback), paced one 20 ms frame per
//! tick by the call's clock, flushable at once for `interrupt` and barge-in.
//!
//! Audio is held as 16 kHz mono samples per track. A track is identified by its `trackId` (seed
//! 002) and optionally grouped by `playId`: text sent with the same `playId` as the playing track
//! is appended to it instead of interrupting it. Positions are media time: milliseconds of that
//! track's audio already played out.
//!
//! Memory bound: a track holds what its producer synthesised; producers are sentence-sized.

use crate::types::{AudioFrame, SampleRate};
use std::collections::VecDeque;

/// Samples per 20 ms frame at the internal 16 kHz rate.
pub const FRAME_SAMPLES: usize = 320;

/// One queued or playing track.
#[derive(Debug)]
struct Track {
    id: String,
    play_id: Option<String>,
    samples: VecDeque<i16>,
    played: u64,
    input_done: bool,
    started: bool,
    auto_hangup: bool,
    /// A mark (no audio): reported as [`PlayerEvent::Mark`] when playout reaches it.
    mark: Option<String>,
}

/// Events produced while playing out.
#[derive(Clone, Debug, PartialEq)]
pub enum PlayerEvent {
    /// The track's first frame went out.
    TrackStart {
        track_id: String,
        play_id: Option<String>,
    },
    /// The track played to its end; `duration_ms` of audio were played.
    TrackEnd {
        track_id: String,
        play_id: Option<String>,
        duration_ms: u64,
        auto_hangup: bool,
    },
    /// Playout reached a mark queued with [`Player::mark`]: all audio queued before it went out.
    Mark { name: String },
}

/// What [`Player::interrupt`] stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Interrupted {
    pub track_id: String,
    pub play_id: Option<String>,
    /// Milliseconds of the track already played.
    pub position_ms: u64,
}

/// What [`Player::clear`] stopped: the playing (or first queued) track, and the marks queued
/// behind it, which will never be reached by playout.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Cleared {
    pub interrupted: Option<Interrupted>,
    pub marks: Vec<String>,
}

/// The playout queue. Sans-IO: the caller calls [`Player::next_frame`] once per 20 ms tick.
#[derive(Debug, Default)]
pub struct Player {
    tracks: VecDeque<Track>,
    paused: bool,
}

impl Player {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a track to the end of the queue.
    pub fn open_track(&mut self, track_id: &str, play_id: Option<&str>, auto_hangup: bool) {
        self.tracks.push_back(Track {
            id: track_id.to_string(),
            play_id: play_id.map(str::to_string),
            samples: VecDeque::new(),
            played: 0,
            input_done: false,
            started: false,
            auto_hangup,
            mark: None,
        });
    }

    /// Queues a mark after everything queued so far (Twilio `mark`, seed 003 `checkPoint`).
    pub fn mark(&mut self, name: &str) {
        self.tracks.push_back(Track {
            id: String::new(),
            play_id: None,
            samples: VecDeque::new(),
            played: 0,
            input_done: true,
            started: false,
            auto_hangup: false,
            mark: Some(name.to_string()),
        });
    }

    /// Whether a track with this id is queued or playing.
    pub fn has_track(&self, track_id: &str) -> bool {
        self.tracks
            .iter()
            .any(|t| t.mark.is_none() && t.id == track_id)
    }

    /// The id of the last queued item when it is a track still taking audio (input not
    /// finished, nothing queued behind it): audio for it can be appended without reordering.
    pub fn open_tail(&self) -> Option<&str> {
        self.tracks
            .back()
            .filter(|t| t.mark.is_none() && !t.input_done)
            .map(|t| t.id.as_str())
    }

    /// The track id the given `playId` is using, if it is queued or playing.
    pub fn track_for_play_id(&self, play_id: &str) -> Option<&str> {
        self.tracks
            .iter()
            .find(|t| t.play_id.as_deref() == Some(play_id))
            .map(|t| t.id.as_str())
    }

    /// Appends 16 kHz mono samples to a track. Unknown track ids (already interrupted) are ignored
    /// and `false` is returned: the producer should stop.
    pub fn push_audio(&mut self, track_id: &str, samples: &[i16]) -> bool {
        match self
            .tracks
            .iter_mut()
            .find(|t| t.mark.is_none() && t.id == track_id)
        {
            Some(t) => {
                t.samples.extend(samples);
                true
            }
            None => false,
        }
    }

    /// Removes a track that will produce nothing (its producer failed). Returns whether it existed.
    pub fn remove_track(&mut self, track_id: &str) -> bool {
        let before = self.tracks.len();
        self.tracks.retain(|t| t.mark.is_some() || t.id != track_id);
        before != self.tracks.len()
    }

    /// Marks a track's input complete (its `trackEnd` follows when its audio has played), and sets
    /// whether the call hangs up after it.
    pub fn finish_track(&mut self, track_id: &str, auto_hangup: bool) {
        if let Some(t) = self
            .tracks
            .iter_mut()
            .find(|t| t.mark.is_none() && t.id == track_id)
        {
            t.input_done = true;
            t.auto_hangup |= auto_hangup;
        }
    }

    /// Whether any audio is queued or a producer is still filling a track.
    pub fn is_active(&self) -> bool {
        !self.tracks.is_empty()
    }

    /// Whether bot audio is actually going out (a started track with samples): barge-in applies.
    pub fn is_playing(&self) -> bool {
        !self.paused
            && self
                .tracks
                .front()
                .is_some_and(|t| t.started || !t.samples.is_empty())
    }

    pub fn pause(&mut self) {
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.paused = false;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Drops every queued track and mark, and resumes a paused player (the next track plays).
    /// Returns the playing (or first queued) track and its position.
    pub fn interrupt(&mut self) -> Option<Interrupted> {
        self.clear().interrupted
    }

    /// Like [`Self::interrupt`], also returning the marks that were queued.
    pub fn clear(&mut self) -> Cleared {
        self.paused = false;
        let mut out = Cleared::default();
        for t in self.tracks.drain(..) {
            match t.mark {
                Some(name) => out.marks.push(name),
                None if out.interrupted.is_none() => {
                    out.interrupted = Some(Interrupted {
                        track_id: t.id,
                        play_id: t.play_id,
                        position_ms: t.played * 1000 / 16_000,
                    })
                }
                None => {}
            }
        }
        out
    }

    /// Produces the next 20 ms frame at 16 kHz (the last frame of a track is padded with silence),
    /// or `None` when nothing is ready (paused, idle, or the producer is behind).
    pub fn next_frame(&mut self, events: &mut Vec<PlayerEvent>) -> Option<AudioFrame> {
        if self.paused {
            return None;
        }
        loop {
            let t = self.tracks.front_mut()?;
            if t.mark.is_some() {
                let name = self.tracks.pop_front().and_then(|t| t.mark);
                events.push(PlayerEvent::Mark {
                    name: name.unwrap_or_default(),
                });
                continue;
            }
            if t.samples.is_empty() {
                if t.input_done {
                    let t = self.tracks.pop_front().expect("front exists");
                    if t.started || t.played > 0 {
                        events.push(PlayerEvent::TrackEnd {
                            track_id: t.id,
                            play_id: t.play_id,
                            duration_ms: t.played * 1000 / 16_000,
                            auto_hangup: t.auto_hangup,
                        });
                    } else {
                        // A track that never produced audio still ends (e.g. TTS of punctuation).
                        events.push(PlayerEvent::TrackStart {
                            track_id: t.id.clone(),
                            play_id: t.play_id.clone(),
                        });
                        events.push(PlayerEvent::TrackEnd {
                            track_id: t.id,
                            play_id: t.play_id,
                            duration_ms: 0,
                            auto_hangup: t.auto_hangup,
                        });
                    }
                    continue;
                }
                return None;
            }
            if !t.started {
                t.started = true;
                events.push(PlayerEvent::TrackStart {
                    track_id: t.id.clone(),
                    play_id: t.play_id.clone(),
                });
            }
            let n = t.samples.len().min(FRAME_SAMPLES);
            let mut out: Vec<i16> = t.samples.drain(..n).collect();
            out.resize(FRAME_SAMPLES, 0);
            t.played += n as u64;
            return Some(AudioFrame::mono(SampleRate::HZ_16000, out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_tracks_in_order_with_start_and_end() {
        let mut p = Player::new();
        let mut ev = Vec::new();
        p.open_track("t1", Some("a"), false);
        p.push_audio("t1", &[1; 700]);
        p.finish_track("t1", true);
        let mut frames = 0;
        while p.next_frame(&mut ev).is_some() {
            frames += 1;
        }
        assert_eq!(frames, 3);
        assert_eq!(
            ev,
            vec![
                PlayerEvent::TrackStart {
                    track_id: "t1".into(),
                    play_id: Some("a".into())
                },
                PlayerEvent::TrackEnd {
                    track_id: "t1".into(),
                    play_id: Some("a".into()),
                    duration_ms: 43,
                    auto_hangup: true
                }
            ]
        );
        assert!(!p.is_active());
    }

    #[test]
    fn interrupt_flushes_and_reports_position() {
        let mut p = Player::new();
        let mut ev = Vec::new();
        p.open_track("t1", None, false);
        p.push_audio("t1", &[1; 16_000]);
        p.open_track("t2", None, false);
        p.push_audio("t2", &[1; 16_000]);
        for _ in 0..10 {
            p.next_frame(&mut ev);
        }
        assert!(p.is_playing());
        let i = p.interrupt().unwrap();
        assert_eq!((i.track_id.as_str(), i.position_ms), ("t1", 200));
        assert!(p.next_frame(&mut ev).is_none());
        assert!(!p.push_audio("t1", &[1; 10]));
    }

    #[test]
    fn marks_are_reached_after_the_audio_before_them() {
        let mut p = Player::new();
        let mut ev = Vec::new();
        p.open_track("t1", None, false);
        p.push_audio("t1", &[1; 640]);
        p.finish_track("t1", false);
        p.mark("m1");
        p.open_track("t2", None, false);
        p.push_audio("t2", &[1; 320]);
        p.mark("m2");
        assert!(p.next_frame(&mut ev).is_some());
        assert!(p.next_frame(&mut ev).is_some());
        assert!(!ev.iter().any(|e| matches!(e, PlayerEvent::Mark { .. })));
        // t1 ends, m1 is reached, and t2's first frame goes out in the same tick.
        assert!(p.next_frame(&mut ev).is_some());
        let names: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                PlayerEvent::Mark { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["m1"]);
        // Clearing reports the playing track and the mark behind it.
        let c = p.clear();
        assert_eq!(c.interrupted.unwrap().track_id, "t2");
        assert_eq!(c.marks, ["m2"]);
    }

    #[test]
    fn interrupt_resumes_a_paused_player() {
        let mut p = Player::new();
        let mut ev = Vec::new();
        p.open_track("t1", None, false);
        p.push_audio("t1", &[1; 3200]);
        p.pause();
        assert!(p.interrupt().is_some());
        p.open_track("t2", None, false);
        p.push_audio("t2", &[1; 320]);
        assert!(p.next_frame(&mut ev).is_some(), "the next track plays");
    }

    #[test]
    fn pause_holds_the_position() {
        let mut p = Player::new();
        let mut ev = Vec::new();
        p.open_track("t1", None, false);
        p.push_audio("t1", &[1; 3200]);
        p.next_frame(&mut ev);
        p.pause();
        assert!(p.next_frame(&mut ev).is_none());
        p.resume();
        assert!(p.next_frame(&mut ev).is_some());
        assert_eq!(p.interrupt().unwrap().position_ms, 40);
    }
}
