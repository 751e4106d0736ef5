//! Subscribers: who receives a call's events (a controller, a listener, a recorder).
//!
//! Queue policy, per subscriber: the call delivers without ever waiting.
//! - Events go into the subscriber's own bounded queue; when it is full the subscriber is
//!   dropped ([`Unsubscribed::Lagged`]) instead of losing single events or stalling the call.
//! - Audio (an optional tap on the caller's and the bot's frames) goes into a second bounded
//!   queue; a frame that finds it full is dropped and counted ([`Subscription::audio_dropped`]).
//!
//! [`channel`] gives a ready-made subscriber over tokio channels; adapters that must keep their
//! events and the leg's audio in one order (the `/call` WebSocket) implement [`Subscriber`] over
//! their own queue.

use crate::vocab::CallEvent;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use voxgate_media::AudioFrame;

/// The outcome of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The subscriber's queue is full: it is dropped.
    Full,
    /// The subscriber is gone: it is dropped.
    Gone,
}

/// Which side of the call an audio frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioTrack {
    /// What the caller said (16 kHz, as the leg delivered it).
    Caller,
    /// What the bot said (16 kHz, as sent to the leg).
    Bot,
}

/// Why a subscriber stopped receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsubscribed {
    /// The call ended (after its `hangup` event).
    CallEnded,
    /// Its event queue was full.
    Lagged,
}

/// A receiver of a call's events. Called on the call's task: no method may wait.
pub trait Subscriber: Send {
    /// Delivers one event.
    fn deliver(&mut self, event: &CallEvent) -> Delivery;
    /// Whether this subscriber taps audio ([`Self::deliver_audio`]).
    fn wants_audio(&self) -> bool {
        false
    }
    /// Delivers one 16 kHz mono 20 ms frame; drop it when there is no room.
    fn deliver_audio(&mut self, _track: AudioTrack, _frame: &AudioFrame) {}
    /// The subscription ended.
    fn closed(&mut self, _why: Unsubscribed) {}
}

/// The receiving end of [`channel`].
pub struct Subscription {
    events: mpsc::Receiver<crate::vocab::CallEvent>,
    audio: Option<mpsc::Receiver<(AudioTrack, AudioFrame)>>,
    lagged: Arc<AtomicBool>,
    audio_dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event; `None` after the last one (the call ended, or this subscriber lagged).
    pub async fn recv(&mut self) -> Option<CallEvent> {
        self.events.recv().await
    }

    /// The next tapped audio frame; `None` when there is no tap or the subscription ended.
    pub async fn recv_audio(&mut self) -> Option<(AudioTrack, AudioFrame)> {
        match self.audio.as_mut() {
            Some(a) => a.recv().await,
            None => None,
        }
    }

    /// Takes the audio tap's receiver, to read it on its own (e.g. in a `select!` beside
    /// [`Self::recv`]); [`Self::recv_audio`] returns `None` afterwards.
    pub fn take_audio(&mut self) -> Option<mpsc::Receiver<(AudioTrack, AudioFrame)>> {
        self.audio.take()
    }

    /// Whether the call dropped this subscriber because its event queue was full.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }

    /// Audio frames dropped because the tap queue was full.
    pub fn audio_dropped(&self) -> u64 {
        self.audio_dropped.load(Ordering::Relaxed)
    }
}

struct ChannelSubscriber {
    events: mpsc::Sender<CallEvent>,
    audio: Option<mpsc::Sender<(AudioTrack, AudioFrame)>>,
    lagged: Arc<AtomicBool>,
    audio_dropped: Arc<AtomicU64>,
}

impl Subscriber for ChannelSubscriber {
    fn deliver(&mut self, event: &CallEvent) -> Delivery {
        match self.events.try_send(event.clone()) {
            Ok(()) => Delivery::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
        }
    }

    fn wants_audio(&self) -> bool {
        self.audio.is_some()
    }

    fn deliver_audio(&mut self, track: AudioTrack, frame: &AudioFrame) {
        if let Some(a) = &self.audio {
            if a.try_send((track, frame.clone())).is_err() {
                self.audio_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("voxgate_audio_frames_dropped_total", "queue" => "tap")
                    .increment(1);
            }
        }
    }

    fn closed(&mut self, why: Unsubscribed) {
        if why == Unsubscribed::Lagged {
            self.lagged.store(true, Ordering::Relaxed);
        }
    }
}

/// A subscriber with an event queue of `events` entries and, when `audio > 0`, an audio tap of
/// `audio` frames (20 ms each). Give the first half to the call, keep the [`Subscription`].
pub fn channel(events: usize, audio: usize) -> (Box<dyn Subscriber>, Subscription) {
    let (etx, erx) = mpsc::channel(events.max(1));
    let (atx, arx) = if audio > 0 {
        let (t, r) = mpsc::channel(audio);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let lagged = Arc::new(AtomicBool::new(false));
    let audio_dropped = Arc::new(AtomicU64::new(0));
    (
        Box::new(ChannelSubscriber {
            events: etx,
            audio: atx,
            lagged: lagged.clone(),
            audio_dropped: audio_dropped.clone(),
        }),
        Subscription {
            events: erx,
            audio: arx,
            lagged,
            audio_dropped,
        },
    )
}
