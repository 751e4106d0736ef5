//! The call core with scripted legs, controllers, engines and store, in virtual time (a paused
//! tokio clock: 20 ms of media time costs nothing and every run is the same).

use crate::subscriber::{channel, Subscription};
use crate::*;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::time::{sleep, Instant};
use voxgate_media::speech::{SpeechError, Synthesizer, Transcriber};
use voxgate_media::vad::VoiceDetector;
use voxgate_media::{AudioFrame, SampleRate};

// ---- fakes --------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Log {
    /// A bot frame reached the leg.
    Bot,
    /// The test delivered caller frame `n` (logged before the call processed it).
    Caller(usize),
    Cmd(LegCommand),
    Closed(String),
    Refused(String),
}

type SharedLog = Arc<Mutex<Vec<Log>>>;

#[derive(Clone, Default)]
struct LegSetup {
    caps: LegCaps,
    ringing: bool,
    /// Answer asynchronously (like SIP): the test delivers `Answered` itself.
    async_answer: bool,
    backlog_ms: u64,
}

struct FakeLeg {
    info: LegInfo,
    setup: LegSetup,
    log: SharedLog,
}

#[async_trait]
impl Leg for FakeLeg {
    fn info(&self) -> &LegInfo {
        &self.info
    }
    fn send_audio(&mut self, frame: &AudioFrame) -> bool {
        assert_eq!(
            (frame.rate, frame.samples.len()),
            (SampleRate::HZ_16000, 320)
        );
        self.log.lock().unwrap().push(Log::Bot);
        true
    }
    fn command(&mut self, cmd: LegCommand) -> LegReply {
        self.log.lock().unwrap().push(Log::Cmd(cmd.clone()));
        match cmd {
            LegCommand::Answer { .. } if self.setup.async_answer => LegReply::Pending,
            LegCommand::Answer { .. } => LegReply::Answered {
                sdp: None,
                codec: "pcmu".into(),
            },
            _ => LegReply::Done,
        }
    }
    fn playout_backlog_ms(&self) -> u64 {
        self.setup.backlog_ms
    }
    async fn close(
        self: Box<Self>,
        reason: &str,
        _headers: &[(String, String)],
    ) -> Option<LegReport> {
        self.log.lock().unwrap().push(Log::Closed(reason.into()));
        Some(LegReport {
            key: "fake".into(),
            data: serde_json::json!({ "closed": reason }),
        })
    }
}

struct FakePending {
    leg: FakeLeg,
    port: Arc<Mutex<Option<LegPort>>>,
}

impl PendingLeg for FakePending {
    fn info(&self) -> &LegInfo {
        &self.leg.info
    }
    fn into_leg(self: Box<Self>, port: LegPort) -> Box<dyn Leg> {
        *self.port.lock().unwrap() = Some(port);
        Box::new(self.leg)
    }
    fn refuse(self: Box<Self>, reason: &str) {
        self.leg
            .log
            .lock()
            .unwrap()
            .push(Log::Refused(reason.into()));
    }
}

#[derive(Default)]
struct FakeStore {
    calls: Mutex<BTreeMap<String, CallRecord>>,
    transcripts: Mutex<Vec<TranscriptRecord>>,
}

#[async_trait]
impl CallStore for FakeStore {
    async fn call_created(&self, call: &CallRecord) -> Result<(), StoreError> {
        let mut c = self.calls.lock().unwrap();
        if c.contains_key(&call.id) {
            return Err(StoreError::Conflict(format!("call {}", call.id)));
        }
        c.insert(call.id.clone(), call.clone());
        Ok(())
    }
    async fn call_answered(
        &self,
        id: &str,
        codec: &str,
        caller: Option<&str>,
        callee: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError> {
        if let Some(c) = self.calls.lock().unwrap().get_mut(id) {
            c.codec = Some(codec.into());
            c.caller = caller.map(str::to_string);
            c.callee = callee.map(str::to_string);
            c.answered_at = Some(at);
        }
        Ok(())
    }
    async fn call_ended(
        &self,
        id: &str,
        at: i64,
        reason: &str,
        initiator: &str,
    ) -> Result<(), StoreError> {
        if let Some(c) = self.calls.lock().unwrap().get_mut(id) {
            c.ended_at = Some(at);
            c.hangup_reason = Some(reason.into());
            c.hangup_initiator = Some(initiator.into());
        }
        Ok(())
    }
    async fn call_quality(&self, id: &str, q: &serde_json::Value) -> Result<(), StoreError> {
        if let Some(c) = self.calls.lock().unwrap().get_mut(id) {
            c.quality = Some(q.clone());
        }
        Ok(())
    }
    async fn transcript_added(&self, t: &TranscriptRecord) -> Result<(), StoreError> {
        self.transcripts.lock().unwrap().push(t.clone());
        Ok(())
    }
}

/// "Speech" is any 20 ms chunk louder than ±1000.
struct Loud {
    blocking: bool,
}

impl VoiceDetector for Loud {
    fn chunk_len(&self) -> usize {
        320
    }
    fn predict(&mut self, chunk: &[i16]) -> f32 {
        if chunk.iter().any(|&x| x.abs() > 1000) {
            1.0
        } else {
            0.0
        }
    }
    fn reset(&mut self) {}
    fn is_blocking(&self) -> bool {
        self.blocking
    }
}

/// A gate the test opens; a closed gate holds the ASR engine (a busy machine).
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn closed() -> Arc<Gate> {
        Arc::new(Gate::default())
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn wait(&self) {
        let mut g = self.open.lock().unwrap();
        while !*g {
            g = self.cv.wait(g).unwrap();
        }
    }
}

/// Transcribes an utterance as "N ms of speech", counting its runs.
struct FakeAsr {
    gate: Option<Arc<Gate>>,
    runs: Arc<std::sync::atomic::AtomicUsize>,
    /// Appended to every transcript (punctuation for adaptive endpointing).
    suffix: &'static str,
    /// Every transcript, instead of "N ms of speech".
    text: Option<&'static str>,
}

impl Transcriber for FakeAsr {
    fn name(&self) -> &str {
        "fake"
    }
    fn transcribe(&self, samples: &[f32]) -> Result<String, SpeechError> {
        if let Some(g) = &self.gate {
            g.wait();
        }
        self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.text {
            return Ok(t.to_string());
        }
        Ok(format!(
            "{} ms of speech{}",
            samples.len() / 16,
            self.suffix
        ))
    }
}

/// 20 ms of a 440 Hz tone per character, at 16 kHz.
struct FakeTts;

impl Synthesizer for FakeTts {
    fn name(&self) -> &str {
        "fake"
    }
    fn synthesize(&self, text: &str, _voice: Option<&str>) -> Result<AudioFrame, SpeechError> {
        let n = text.chars().count() * 320;
        Ok(AudioFrame::mono(
            SampleRate::HZ_16000,
            (0..n)
                .map(|i| {
                    (3000.0 * (i as f32 * 440.0 * std::f32::consts::TAU / 16000.0).sin()) as i16
                })
                .collect(),
        ))
    }
}

struct FakeLoader;

#[async_trait]
impl AudioLoader for FakeLoader {
    async fn load(&self, url: &str) -> Result<Vec<i16>, String> {
        if url.contains("missing") {
            return Err(format!("{url}: not found"));
        }
        Ok(vec![500; 16000])
    }
}

struct Setup {
    asr_gate: Option<Arc<Gate>>,
    asr_runs: Arc<std::sync::atomic::AtomicUsize>,
    blocking_vad: bool,
    settings: CallSettings,
    asr_suffix: &'static str,
    asr_text: Option<&'static str>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            asr_gate: None,
            asr_runs: Arc::default(),
            blocking_vad: false,
            asr_suffix: "",
            asr_text: None,
            settings: CallSettings {
                partial_interval_ms: 0,
                ..CallSettings::default()
            },
        }
    }
}

fn core(setup: Setup) -> (CallCore, Arc<FakeStore>) {
    let store = Arc::new(FakeStore::default());
    let mut tts: BTreeMap<String, Arc<dyn Synthesizer>> = BTreeMap::new();
    tts.insert("fake".into(), Arc::new(FakeTts));
    let blocking = setup.blocking_vad;
    let vad = move || -> Box<dyn VoiceDetector> { Box::new(Loud { blocking }) };
    let speech = Speech {
        asr: Some(Arc::new(FakeAsr {
            gate: setup.asr_gate,
            runs: setup.asr_runs,
            suffix: setup.asr_suffix,
            text: setup.asr_text,
        })),
        asr_slots: Arc::new(tokio::sync::Semaphore::new(1)),
        tts,
        default_tts: "fake".into(),
        vad: Arc::new(vad),
    };
    let ctx = CallContext {
        speech: Arc::new(speech),
        store: store.clone(),
        dialer: None,
        loader: Arc::new(FakeLoader),
        settings: setup.settings,
    };
    (CallCore::new(ctx), store)
}

struct Call {
    h: CallHandle,
    sub: Subscription,
    port: LegPort,
    log: SharedLog,
    seen: Vec<CallEvent>,
    caller_frames: usize,
}

fn pending(setup: LegSetup, log: &SharedLog) -> (Box<FakePending>, Arc<Mutex<Option<LegPort>>>) {
    let port = Arc::new(Mutex::new(None));
    let leg = FakeLeg {
        info: LegInfo {
            kind: "fake",
            caller: "alice".into(),
            callee: "bot".into(),
            offer: setup.ringing.then(|| "v=0".to_string()),
            ringing: setup.ringing,
            caps: setup.caps.clone(),
            headers: vec![("X-Account-Id".into(), "42".into())],
        },
        setup,
        log: log.clone(),
    };
    (
        Box::new(FakePending {
            leg,
            port: port.clone(),
        }),
        port,
    )
}

async fn call(core: &CallCore, id: &str, setup: LegSetup) -> Call {
    let log: SharedLog = Arc::default();
    let (p, port) = pending(setup, &log);
    let (s, sub) = channel(1024, 0);
    let h = core
        .start(CallSpec {
            id: Some(id.into()),
            kind: "fake",
            leg: Some(p),
            subscribers: vec![s],
            ..Default::default()
        })
        .await
        .unwrap();
    let port = port.lock().unwrap().clone().unwrap();
    Call {
        h,
        sub,
        port,
        log,
        seen: Vec::new(),
        caller_frames: 0,
    }
}

fn loud() -> AudioFrame {
    AudioFrame::mono(SampleRate::HZ_16000, [4000i16, -4000].repeat(160))
}

fn quiet() -> AudioFrame {
    AudioFrame::silence(SampleRate::HZ_16000, 20)
}

fn name(e: &CallEvent) -> &'static str {
    match e.kind {
        EventKind::Incoming { .. } => "incoming",
        EventKind::Ringing { .. } => "ringing",
        EventKind::Transfer { .. } => "transfer",
        EventKind::Answer { .. } => "answer",
        EventKind::Hangup { .. } => "hangup",
        EventKind::Speaking { .. } => "speaking",
        EventKind::Silence { .. } => "silence",
        EventKind::AsrDelta { .. } => "asrDelta",
        EventKind::AsrFinal { .. } => "asrFinal",
        EventKind::AsrSpeculative { .. } => "asrSpeculative",
        EventKind::Dtmf { .. } => "dtmf",
        EventKind::TrackStart { .. } => "trackStart",
        EventKind::TrackEnd { .. } => "trackEnd",
        EventKind::Interruption { .. } => "interruption",
        EventKind::Mark { .. } => "mark",
        EventKind::Error { .. } => "error",
        EventKind::Metrics { .. } => "metrics",
    }
}

impl Call {
    async fn cmd(&self, c: CallCommand) {
        self.h.command(c).await.unwrap();
    }

    /// Waits (virtual time) for the next event named `what`; panics after `within`.
    async fn expect(&mut self, what: &str, within: Duration) -> CallEvent {
        let deadline = Instant::now() + within;
        loop {
            let e = tokio::time::timeout_at(deadline, self.sub.recv())
                .await
                .unwrap_or_else(|_| panic!("no `{what}` within {within:?}; saw {:?}", self.names()))
                .unwrap_or_else(|| {
                    panic!("subscription ended before `{what}`: {:?}", self.names())
                });
            self.seen.push(e.clone());
            if name(&e) == what {
                return e;
            }
        }
    }

    /// Events received so far plus everything queued now.
    fn drain(&mut self) -> Vec<&'static str> {
        while let Ok(Some(e)) =
            tokio::time::timeout(Duration::ZERO, self.sub.recv()).now_or_never_ok()
        {
            self.seen.push(e);
        }
        self.names()
    }

    fn names(&self) -> Vec<&'static str> {
        self.seen.iter().map(name).collect()
    }

    async fn answer(&mut self) {
        self.cmd(CallCommand::Answer(AnswerOptions::default()))
            .await;
        self.expect("answer", Duration::from_secs(1)).await;
    }

    async fn tts(&self, text: &str, play_id: Option<&str>) {
        self.cmd(CallCommand::Tts(TtsRequest {
            text: text.into(),
            play_id: play_id.map(str::to_string),
            ..Default::default()
        }))
        .await;
    }

    /// Delivers caller frames, moving the clock by hand: while a blocking task runs (a held ASR
    /// engine) tokio does not advance a paused clock by itself.
    async fn speak_advancing(&mut self, frames: &[AudioFrame]) {
        for f in frames {
            self.port.audio(f.clone()).await.unwrap();
            self.caller_frames += 1;
            settle(MS(20)).await;
        }
    }

    /// Delivers caller frames in real-time pacing (virtual clock).
    async fn speak(&mut self, frames: &[AudioFrame]) {
        for f in frames {
            self.port.audio(f.clone()).await.unwrap();
            self.log
                .lock()
                .unwrap()
                .push(Log::Caller(self.caller_frames));
            self.caller_frames += 1;
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn bot_frames(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| **l == Log::Bot)
            .count()
    }

    fn log(&self) -> Vec<Log> {
        self.log.lock().unwrap().clone()
    }
}

/// `timeout(ZERO, recv())` as a poll: `Ok(Some(e))` when an event is ready now.
trait NowOrNever {
    type Out;
    fn now_or_never_ok(self) -> Result<Option<Self::Out>, ()>;
}

impl<F: std::future::Future<Output = Result<Option<CallEvent>, tokio::time::error::Elapsed>>>
    NowOrNever for F
{
    type Out = CallEvent;
    fn now_or_never_ok(self) -> Result<Option<CallEvent>, ()> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(self);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(e)) => Ok(e),
            _ => Err(()),
        }
    }
}

/// Advances the paused clock by `d` and lets every task run.
async fn settle(d: Duration) {
    tokio::time::advance(d).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

// ---- tests --------------------------------------------------------------------------------

/// Barge-in fires on the caller frame that completes `barge_in_ms` (200 ms) of voiced speech,
/// stops bot audio at that frame, tells the leg to clear, and reports the position played.
#[tokio::test(start_paused = true)]
async fn barge_in_fires_200_ms_after_speech_onset() {
    for blocking_vad in [false, true] {
        let (core, _) = core(Setup {
            blocking_vad,
            ..Setup::default()
        });
        let mut c = call(&core, "barge", LegSetup::default()).await;
        c.answer().await;
        c.tts(&"x".repeat(200), Some("menu")).await; // 4 s of bot audio
        c.expect("trackStart", S(1)).await;
        c.speak(&vec![quiet(); 10]).await;
        c.speak(&vec![loud(); 20]).await;
        let int = c.expect("interruption", S(1)).await;
        let log = c.log();
        let clear = log
            .iter()
            .position(|l| *l == Log::Cmd(LegCommand::Clear))
            .expect("the leg was told to clear");
        let last_caller = log[..clear]
            .iter()
            .rev()
            .find_map(|l| match l {
                Log::Caller(n) => Some(*n),
                _ => None,
            })
            .unwrap();
        // Caller frames 10..: the 10th voiced frame (index 19) completes 200 ms. An off-task VAD
        // may take one more frame to report.
        let slack = usize::from(blocking_vad);
        assert!(
            (19..=19 + slack).contains(&last_caller),
            "barge-in after caller frame {last_caller} (blocking VAD: {blocking_vad})"
        );
        assert!(
            !log[clear..].contains(&Log::Bot),
            "bot audio after the interruption"
        );
        let played = log[..clear].iter().filter(|l| **l == Log::Bot).count() as u64;
        let EventKind::Interruption {
            track_id, position, ..
        } = int.kind
        else {
            unreachable!()
        };
        assert_eq!((track_id.as_str(), position), ("menu", played * 20));
        c.expect("trackEnd", S(1)).await;
        // The speech that interrupted is transcribed.
        c.speak(&vec![quiet(); 40]).await;
        let fin = c.expect("asrFinal", S(5)).await;
        assert!(
            matches!(fin.kind, EventKind::AsrFinal { ref text, .. } if text.ends_with("ms of speech"))
        );
    }
}

/// The final transcript is computed 200 ms into the silence, before endpointing (600 ms) ends the
/// utterance, and is not computed again; when the caller speaks on after that pause, the
/// speculation is void and the final covers the whole utterance.
#[tokio::test(start_paused = true)]
async fn a_final_is_speculated_before_endpointing() {
    let runs: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let (core, store) = core(Setup {
        asr_runs: runs.clone(),
        ..Setup::default()
    });
    let count = || runs.load(std::sync::atomic::Ordering::SeqCst);
    let mut c = call(&core, "spec", LegSetup::default()).await;
    c.answer().await;
    c.speak(&vec![loud(); 25]).await; // 500 ms of speech
    c.speak(&vec![quiet(); 12]).await; // 240 ms: speculated at 200
    settle(MS(20)).await;
    assert_eq!(count(), 1, "transcribed 200 ms into the silence");
    assert!(!c.drain().contains(&"silence"), "before endpointing");
    c.speak(&vec![quiet(); 30]).await;
    let fin = c.expect("asrFinal", S(1)).await;
    assert_eq!(count(), 1, "the speculation was the final");
    let EventKind::AsrFinal { text, .. } = fin.kind else {
        unreachable!()
    };
    // 500 ms of speech (the call starts with it: no pre-roll) and the 200 ms tail.
    assert_eq!(text, "700 ms of speech");
    assert_eq!(store.transcripts.lock().unwrap().len(), 1);

    // A pause of 240 ms, then more speech: the first speculation is void.
    c.speak(&vec![loud(); 25]).await;
    c.speak(&vec![quiet(); 12]).await;
    c.speak(&vec![loud(); 10]).await;
    c.speak(&vec![quiet(); 40]).await;
    let fin = c.expect("asrFinal", S(1)).await;
    let EventKind::AsrFinal { text, index, .. } = fin.kind else {
        unreachable!()
    };
    assert_eq!((index, text.as_str()), (2, "1380 ms of speech"));
    assert_eq!(count(), 3, "two speculations, the second one confirmed");
    let t = store.transcripts.lock().unwrap().clone();
    assert_eq!(
        t.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        ["700 ms of speech", "1380 ms of speech"]
    );
}

/// A speculation the caller spoke on after is kept as the utterance's head: the final transcribes
/// only the audio after that pause and prepends the head's text.
#[tokio::test(start_paused = true)]
async fn a_final_after_a_pause_transcribes_only_the_last_phrase() {
    let runs: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let (core, store) = core(Setup {
        asr_runs: runs.clone(),
        ..Setup::default()
    });
    let mut c = call(&core, "head", LegSetup::default()).await;
    c.answer().await;
    c.speak(&vec![loud(); 50]).await; // 1 s of speech
    c.speak(&vec![quiet(); 12]).await; // 240 ms: speculated at 200 (1200 ms of audio)
    settle(MS(20)).await;
    c.speak(&vec![loud(); 20]).await; // 400 ms more
    c.speak(&vec![quiet(); 40]).await;
    let fin = c.expect("asrFinal", S(1)).await;
    let EventKind::AsrFinal { text, .. } = fin.kind else {
        unreachable!()
    };
    // The head (1000 + 200 ms) and the tail: 40 ms of the pause, 400 ms of speech, 200 ms tail.
    assert_eq!(text, "1200 ms of speech 640 ms of speech");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    settle(MS(50)).await;
    let t = store.transcripts.lock().unwrap().clone();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].text, text);

    // A pause under 1 s into the utterance is not a head: the final covers the whole utterance.
    c.speak(&vec![loud(); 10]).await;
    c.speak(&vec![quiet(); 12]).await;
    settle(MS(20)).await;
    c.speak(&vec![loud(); 10]).await;
    c.speak(&vec![quiet(); 40]).await;
    let fin = c.expect("asrFinal", S(1)).await;
    let EventKind::AsrFinal { text, .. } = fin.kind else {
        unreachable!()
    };
    assert!(!text.contains(" ms of speech "), "{text}");
}

/// Adaptive endpointing: the speculative transcript sets the silence that ends the turn — 300 ms
/// after a complete sentence, 1,200 ms after a trailing "and", the configured 600 ms otherwise or
/// with the option off.
#[tokio::test(start_paused = true)]
async fn endpointing_adapts_to_the_transcript() {
    for (suffix, adaptive, want) in [
        (".", true, 300),
        (" and", true, 1200),
        ("", true, 600),
        (".", false, 600),
    ] {
        let (core, _) = core(Setup {
            asr_suffix: suffix,
            ..Setup::default()
        });
        let mut c = call(&core, "adaptive", LegSetup::default()).await;
        c.cmd(CallCommand::Answer(AnswerOptions {
            media: MediaOptions {
                adaptive_endpointing: adaptive,
                min_silence_ms: None,
                ..Default::default()
            },
            ..Default::default()
        }))
        .await;
        c.expect("answer", S(1)).await;
        c.speak(&vec![loud(); 25]).await;
        for _ in 0..80 {
            c.speak(&[quiet()]).await;
            settle(MS(1)).await;
        }
        let e = c.expect("silence", S(1)).await;
        let EventKind::Silence { duration, .. } = e.kind else {
            unreachable!()
        };
        assert_eq!(
            duration, want,
            "transcript ending {suffix:?}, adaptive {adaptive}"
        );
        let fin = c.expect("asrFinal", S(1)).await;
        let EventKind::AsrFinal { text, .. } = fin.kind else {
            unreachable!()
        };
        assert_eq!(text, format!("700 ms of speech{suffix}"));
    }
}

/// With `false_interruption_resume`, caller speech pauses the bot at once (200 ms into it); a
/// backchannel or a wordless noise resumes it where it stopped (the track then plays in full),
/// words interrupt it, and speech still going on 1 s after the pause interrupts it before any
/// transcript.
#[tokio::test(start_paused = true)]
async fn barge_in_waits_for_words() {
    for (text, long, resumed) in [
        (Some("Mm-hmm."), false, true),
        (Some(""), false, true),
        (Some("What about Sunday?"), false, false),
        (Some("Mm-hmm."), true, false),
    ] {
        let (core, _) = core(Setup {
            asr_text: text,
            ..Setup::default()
        });
        let mut c = call(&core, "words", LegSetup::default()).await;
        c.cmd(CallCommand::Answer(AnswerOptions {
            media: MediaOptions {
                false_interruption_resume: true,
                ..Default::default()
            },
            ..Default::default()
        }))
        .await;
        c.expect("answer", S(1)).await;
        c.tts(&"x".repeat(100), Some("menu")).await; // 2 s of bot audio
        c.expect("trackStart", S(1)).await;
        c.speak(&vec![loud(); if long { 75 } else { 15 }]).await;
        let paused_at = c.bot_frames();
        if long {
            // 1.5 s of speech: interrupted 1 s after the pause, while the caller still speaks.
            c.drain();
            assert!(
                c.names().contains(&"interruption"),
                "{text:?}: {:?}",
                c.names()
            );
            assert!(!c.names().contains(&"asrFinal"));
            continue;
        }
        c.speak(&vec![quiet(); 5]).await;
        assert!(
            c.bot_frames() <= paused_at + 1,
            "the bot is paused while the caller speaks"
        );
        assert!(
            !c.drain().contains(&"interruption"),
            "not before the words are known"
        );
        c.speak(&vec![quiet(); 40]).await;
        if resumed {
            let m = c.expect("metrics", S(2)).await;
            let EventKind::Metrics { key, .. } = &m.kind else {
                unreachable!()
            };
            assert_eq!(key, "interruption.resumed");
            let end = c.expect("trackEnd", S(5)).await;
            let EventKind::TrackEnd { duration, .. } = end.kind else {
                unreachable!()
            };
            assert_eq!(duration, 2000, "{text:?}: the whole track was played");
            assert!(!c.names().contains(&"interruption"));
        } else {
            let int = c.expect("interruption", S(2)).await;
            let EventKind::Interruption { position, .. } = int.kind else {
                unreachable!()
            };
            assert!(position < 600, "cut where it paused: {position} ms");
        }
    }
}

/// With `speculative_transcripts`, the speculation's transcript is reported while endpointing
/// waits, and the final that confirms it has the same index and text; a speculation the caller
/// speaks on after is reported too, but its final is a longer utterance.
#[tokio::test(start_paused = true)]
async fn speculative_transcripts_come_before_endpointing() {
    let (core, _) = core(Setup::default());
    let mut c = call(&core, "spec-events", LegSetup::default()).await;
    c.cmd(CallCommand::Answer(AnswerOptions {
        media: MediaOptions {
            speculative_transcripts: true,
            ..Default::default()
        },
        ..Default::default()
    }))
    .await;
    c.expect("answer", S(1)).await;
    c.speak(&vec![loud(); 25]).await;
    c.speak(&vec![quiet(); 15]).await; // 300 ms: speculated at 200, endpointing waits for 600
    let spec = c.expect("asrSpeculative", S(1)).await;
    assert!(!c.names().contains(&"silence"), "before endpointing");
    c.speak(&vec![quiet(); 20]).await;
    let fin = c.expect("asrFinal", S(1)).await;
    let (
        EventKind::AsrSpeculative {
            index: a, text: t, ..
        },
        EventKind::AsrFinal {
            index: b, text: u, ..
        },
    ) = (spec.kind, fin.kind)
    else {
        unreachable!()
    };
    assert_eq!((a, t.as_str()), (b, u.as_str()));
    // Without the option nothing is reported early.
    let mut d = call(&core, "no-spec-events", LegSetup::default()).await;
    d.answer().await;
    d.speak(&vec![loud(); 25]).await;
    d.speak(&vec![quiet(); 40]).await;
    d.expect("asrFinal", S(1)).await;
    assert!(!d.names().contains(&"asrSpeculative"));
}

/// With a slow engine, speculations queue up behind each other: one confirmed while running and
/// one confirmed while still queued both come out as finals, in order, and are stored.
#[tokio::test(start_paused = true)]
async fn speculations_confirmed_while_busy_are_not_lost() {
    let gate = Gate::closed();
    let (core, store) = core(Setup {
        asr_gate: Some(gate.clone()),
        ..Setup::default()
    });
    let mut c = call(&core, "busy-spec", LegSetup::default()).await;
    c.answer().await;
    for _ in 0..2 {
        c.speak_advancing(&vec![loud(); 25]).await;
        c.speak_advancing(&vec![quiet(); 40]).await;
    }
    assert!(!c.drain().contains(&"asrFinal"));
    gate.open();
    let a = c.expect("asrFinal", S(5)).await;
    let b = c.expect("asrFinal", S(5)).await;
    let idx = |e: &CallEvent| match &e.kind {
        EventKind::AsrFinal { index, .. } => *index,
        _ => unreachable!(),
    };
    assert_eq!((idx(&a), idx(&b)), (1, 2));
    settle(MS(100)).await;
    assert_eq!(store.transcripts.lock().unwrap().len(), 2);
}

/// Barge-in is off when the controller says so, and a quieter voice run shorter than the
/// threshold does not interrupt.
#[tokio::test(start_paused = true)]
async fn barge_in_respects_its_options() {
    let (core, _) = core(Setup::default());
    let mut c = call(&core, "no-barge", LegSetup::default()).await;
    c.cmd(CallCommand::Answer(AnswerOptions {
        media: MediaOptions {
            barge_in: false,
            ..Default::default()
        },
        ..Default::default()
    }))
    .await;
    c.expect("answer", S(1)).await;
    c.tts(&"x".repeat(100), None).await;
    c.expect("trackStart", S(1)).await;
    c.speak(&vec![loud(); 30]).await;
    c.expect("trackEnd", S(3)).await;
    assert!(!c.names().contains(&"interruption"));

    let mut c = call(&core, "short-burst", LegSetup::default()).await;
    c.answer().await;
    c.tts(&"x".repeat(100), None).await;
    c.expect("trackStart", S(1)).await;
    c.speak(&vec![loud(); 9]).await; // 180 ms
    c.speak(&vec![quiet(); 5]).await;
    c.speak(&vec![loud(); 9]).await;
    c.expect("trackEnd", S(3)).await;
    assert!(!c.names().contains(&"interruption"), "{:?}", c.names());
}

/// Pause holds the position, resume continues; `interrupt` on a paused player leaves it
/// playing for the next track (it used to stay paused: the next track was silent).
#[tokio::test(start_paused = true)]
async fn pause_resume_and_interrupt_resumes_for_the_next_track() {
    let (core, _) = core(Setup::default());
    let mut c = call(&core, "pause", LegSetup::default()).await;
    c.answer().await;
    c.tts(&"x".repeat(100), Some("a")).await;
    c.expect("trackStart", S(1)).await;
    sleep(MS(200)).await;
    c.cmd(CallCommand::Pause).await;
    sleep(MS(20)).await;
    let paused_at = c.bot_frames();
    sleep(MS(500)).await;
    assert_eq!(c.bot_frames(), paused_at, "audio while paused");
    c.cmd(CallCommand::Resume).await;
    sleep(MS(200)).await;
    assert!(c.bot_frames() >= paused_at + 9, "no audio after resume");
    c.cmd(CallCommand::Pause).await;
    c.cmd(CallCommand::Interrupt).await;
    let int = c.expect("interruption", S(1)).await;
    let EventKind::Interruption { position, .. } = int.kind else {
        unreachable!()
    };
    assert_eq!(position as usize, c.bot_frames() * 20);
    let before = c.bot_frames();
    c.tts("Next one.", Some("b")).await;
    c.expect("trackStart", S(1)).await;
    c.expect("trackEnd", S(2)).await;
    assert_eq!(c.bot_frames() - before, 9, "the next track plays in full");
}

/// The same `playId` as a track still being produced appends to it; another interrupts it.
#[tokio::test(start_paused = true)]
async fn play_id_appends_or_replaces() {
    let (core, _) = core(Setup::default());
    let mut c = call(&core, "playid", LegSetup::default()).await;
    c.answer().await;
    let streamed = |text: &str, end: bool| {
        CallCommand::Tts(TtsRequest {
            text: text.into(),
            play_id: Some("a".into()),
            streaming: true,
            end_of_stream: end,
            ..Default::default()
        })
    };
    c.cmd(streamed("Hello there", false)).await;
    sleep(MS(100)).await;
    assert_eq!(c.bot_frames(), 0, "no sentence is complete yet");
    c.cmd(streamed(" friend. How", false)).await;
    c.cmd(streamed(" are you?", false)).await;
    c.cmd(streamed(" Bye", true)).await;
    let end = c.expect("trackEnd", S(3)).await;
    let EventKind::TrackEnd {
        track_id, duration, ..
    } = end.kind
    else {
        unreachable!()
    };
    let chars = "Hello there friend.".len() + "How are you?".len() + "Bye".len();
    assert_eq!((track_id.as_str(), duration), ("a", chars as u64 * 20));
    assert_eq!(c.names().iter().filter(|n| **n == "trackStart").count(), 1);
    assert!(!c.names().contains(&"interruption"));

    c.tts(&"y".repeat(100), Some("b")).await;
    c.expect("trackStart", S(1)).await;
    sleep(MS(100)).await;
    c.tts("Other.", Some("c")).await;
    let int = c.expect("interruption", S(1)).await;
    assert!(matches!(int.kind, EventKind::Interruption { ref track_id, .. } if track_id == "b"));
    let start = c.expect("trackStart", S(1)).await;
    assert!(matches!(start.kind, EventKind::TrackStart { ref track_id, .. } if track_id == "c"));
}

/// `autoHangup` ends the call once the track is played: at once on a leg that plays as it
/// receives, after the far end's mark echo on one that buffers (Twilio), or after its backlog
/// plus a grace time when no echo comes.
#[tokio::test(start_paused = true)]
async fn auto_hangup_after_the_track_is_heard() {
    let (core, store) = core(Setup::default());
    let bye = || {
        CallCommand::Tts(TtsRequest {
            text: "Goodbye.".into(),
            auto_hangup: true,
            ..Default::default()
        })
    };
    let mut c = call(&core, "plain", LegSetup::default()).await;
    c.answer().await;
    c.cmd(bye()).await;
    let end = c.expect("trackEnd", S(2)).await;
    let h = c.expect("hangup", S(1)).await;
    assert!(h.timestamp - end.timestamp < 100);
    assert!(
        matches!(h.kind, EventKind::Hangup { ref reason, ref initiator } if reason == "autohangup" && initiator == "system")
    );
    assert!(c.log().contains(&Log::Closed("autohangup".into())));

    let buffered = LegSetup {
        caps: LegCaps {
            playout_marks: true,
            ..Default::default()
        },
        backlog_ms: 300,
        ..Default::default()
    };
    let mut c = call(&core, "echo", buffered.clone()).await;
    c.answer().await;
    c.cmd(bye()).await;
    c.expect("trackEnd", S(2)).await;
    sleep(MS(20)).await;
    let mark = c
        .log()
        .into_iter()
        .find_map(|l| match l {
            Log::Cmd(LegCommand::Mark(n)) => Some(n),
            _ => None,
        })
        .expect("a mark sent to the leg");
    sleep(S(1)).await;
    assert!(
        !c.drain().contains(&"hangup"),
        "hung up before the far end played the track"
    );
    c.port.event(LegEvent::MarkPlayed(mark)).await.unwrap();
    c.expect("hangup", MS(100)).await;

    let mut c = call(&core, "no-echo", buffered).await;
    c.answer().await;
    c.cmd(bye()).await;
    c.expect("trackEnd", S(2)).await;
    let t0 = Instant::now();
    c.expect("hangup", S(10)).await;
    let waited = t0.elapsed();
    assert!(
        (MS(3300)..MS(3400)).contains(&waited),
        "waited {waited:?} for a mark that never came"
    );
    core.shutdown(S(1), S(1)).await;
    let rec = store.calls.lock().unwrap()["no-echo"].clone();
    assert_eq!(rec.hangup_reason.as_deref(), Some("autohangup"));
    assert_eq!(
        rec.quality,
        Some(serde_json::json!({ "closed": "autohangup" }))
    );
}

/// `mark` is reported when the audio queued before it has played (at once when idle), through
/// the far end's echo when the leg buffers; `interrupt` reports marks that will never play.
#[tokio::test(start_paused = true)]
async fn marks_follow_playout() {
    let (core, _) = core(Setup::default());
    let mut c = call(&core, "marks", LegSetup::default()).await;
    c.answer().await;
    c.cmd(CallCommand::Mark("idle".into())).await;
    let m = c.expect("mark", MS(100)).await;
    assert!(matches!(m.kind, EventKind::Mark { ref name } if name == "idle"));
    c.tts("Hello.", None).await;
    c.cmd(CallCommand::Mark("after-hello".into())).await;
    c.tts("More.", Some("more")).await; // interrupts "Hello." and the mark behind it
    c.expect("interruption", S(1)).await;
    let m = c.expect("mark", S(1)).await;
    assert!(matches!(m.kind, EventKind::Mark { ref name } if name == "after-hello"));
    c.cmd(CallCommand::Mark("after-more".into())).await;
    let end = c.expect("trackEnd", S(1)).await;
    assert!(matches!(end.kind, EventKind::TrackEnd { ref track_id, .. } if track_id == "more"));
    let m = c.expect("mark", MS(100)).await;
    assert!(matches!(m.kind, EventKind::Mark { ref name } if name == "after-more"));

    let mut c = call(
        &core,
        "marks-echo",
        LegSetup {
            caps: LegCaps {
                playout_marks: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    c.answer().await;
    c.tts("Hello.", None).await;
    c.cmd(CallCommand::Mark("m".into())).await;
    c.expect("trackEnd", S(1)).await;
    sleep(MS(40)).await;
    assert!(c.log().contains(&Log::Cmd(LegCommand::Mark("m".into()))));
    assert!(
        !c.drain().contains(&"mark"),
        "reported before the far end played it"
    );
    c.port
        .event(LegEvent::MarkPlayed("m".into()))
        .await
        .unwrap();
    c.expect("mark", MS(100)).await;
}

fn utterance() -> Vec<AudioFrame> {
    let mut v = vec![loud(); 50]; // 1 s of speech
    v.extend(vec![quiet(); 35]); // endpointing needs 600 ms
    v
}

/// A hang-up waits for pending transcripts: the final transcript comes before `hangup` and is
/// stored; speech cut off by the hang-up is transcribed too.
#[tokio::test(start_paused = true)]
async fn hangup_drains_pending_transcripts() {
    let (core, store) = core(Setup::default());
    let mut c = call(&core, "drain", LegSetup::default()).await;
    c.answer().await;
    c.speak(&utterance()).await;
    c.speak(&vec![loud(); 30]).await; // hung up mid-sentence
    c.cmd(CallCommand::Hangup {
        reason: Some("done".into()),
        initiator: None,
        headers: Vec::new(),
    })
    .await;
    c.expect("hangup", S(20)).await;
    let names = c.names();
    assert_eq!(
        names.iter().filter(|n| **n == "asrFinal").count(),
        2,
        "{names:?}"
    );
    let metrics = names.iter().rposition(|n| *n == "metrics").unwrap();
    assert!(
        names.iter().position(|n| *n == "asrFinal").unwrap() < metrics,
        "the leg's figures come at the end: {names:?}"
    );
    let t: Vec<String> = store
        .transcripts
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.text.clone())
        .collect();
    assert_eq!(t.len(), 2, "{t:?}");
    let rec = store.calls.lock().unwrap()["drain"].clone();
    assert_eq!(
        (
            rec.hangup_reason.as_deref(),
            rec.hangup_initiator.as_deref()
        ),
        (Some("done"), Some("user"))
    );
    assert_eq!(rec.caller.as_deref(), Some("alice"));
    assert_eq!(rec.codec.as_deref(), Some("pcmu"));
}

/// On a busy machine the drain time ends before the transcript is ready: `hangup` goes out at
/// the deadline, and the transcript is still finished and stored afterwards.
#[tokio::test(start_paused = true)]
async fn a_transcript_late_for_the_drain_is_still_stored() {
    let gate = Gate::closed();
    let (core, store) = core(Setup {
        asr_gate: Some(gate.clone()),
        ..Setup::default()
    });
    let mut c = call(&core, "late", LegSetup::default()).await;
    c.answer().await;
    c.speak_advancing(&utterance()).await;
    c.cmd(CallCommand::Hangup {
        reason: None,
        initiator: None,
        headers: Vec::new(),
    })
    .await;
    settle(MS(100)).await;
    assert!(
        !c.drain().contains(&"hangup"),
        "hung up without waiting for the transcript"
    );
    settle(S(15)).await;
    c.expect("hangup", S(1)).await;
    assert!(!c.names().contains(&"asrFinal"));
    assert!(store.transcripts.lock().unwrap().is_empty());
    gate.open();
    assert!(core.shutdown(S(1), S(30)).await, "background work finished");
    let t = store.transcripts.lock().unwrap().clone();
    assert_eq!(t.len(), 1, "the late transcript was stored");
    assert_eq!(t[0].text, "1200 ms of speech");
}

/// `end` (kill, shutdown) never waits for room in the inbox and wins over queued input.
#[tokio::test(start_paused = true)]
async fn kill_does_not_wait_for_a_full_inbox() {
    let (core, _) = core(Setup::default());
    let mut c = call(&core, "full", LegSetup::default()).await;
    let mut queued = 0;
    while c.h.try_command(CallCommand::Pause).is_ok() {
        queued += 1;
    }
    assert_eq!(queued, INBOX);
    assert!(c.h.end("killed", "system"));
    let h = c.expect("hangup", S(1)).await;
    assert!(matches!(h.kind, EventKind::Hangup { ref reason, .. } if reason == "killed"));
    c.h.ended().await;
    assert!(!c.h.end("again", "system"));
    assert!(core.get("full").is_none());
}

/// A subscriber that stops reading is dropped; the call and the other subscribers go on. An
/// audio tap that is not read loses frames, never the call's time.
#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_never_stalls_the_call() {
    let (core, _) = core(Setup::default());
    let mut c = call(&core, "slow", LegSetup::default()).await;
    let (stuck, stuck_sub) = channel(3, 0);
    let (tap, mut tap_sub) = channel(1000, 5);
    c.h.subscribe(stuck).await.unwrap();
    c.h.subscribe(tap).await.unwrap();
    c.cmd(CallCommand::Answer(AnswerOptions {
        media: MediaOptions {
            barge_in: false,
            ..Default::default()
        },
        ..Default::default()
    }))
    .await;
    c.expect("answer", S(1)).await;
    c.tts(&"x".repeat(50), None).await;
    c.speak(&utterance()).await;
    c.expect("trackEnd", S(2)).await;
    c.expect("asrFinal", S(2)).await;
    assert!(stuck_sub.lagged(), "the stuck subscriber was dropped");
    assert!(tap_sub.audio_dropped() > 50, "{}", tap_sub.audio_dropped());
    let mut tapped = Vec::new();
    while let Ok(Some(x)) = tokio::time::timeout(MS(1), tap_sub.recv_audio()).await {
        tapped.push(x.0);
    }
    assert_eq!(tapped.len(), 5);
    assert_eq!(c.bot_frames(), 50, "bot audio went out in full");
    c.cmd(CallCommand::Hangup {
        reason: None,
        initiator: None,
        headers: Vec::new(),
    })
    .await;
    c.expect("hangup", S(1)).await;
    assert!(!tap_sub.lagged());
}

/// An inbound leg that rings is announced with `incoming`; answering is asynchronous; a second
/// leg offered to the call is refused `busy`; a used id is refused.
#[tokio::test(start_paused = true)]
async fn incoming_answer_busy_and_id_reuse() {
    let (core, store) = core(Setup::default());
    let mut c = call(
        &core,
        "in-1",
        LegSetup {
            ringing: true,
            async_answer: true,
            ..Default::default()
        },
    )
    .await;
    let inc = c.expect("incoming", MS(100)).await;
    assert!(
        matches!(inc.kind, EventKind::Incoming { ref caller, ref sdp, ref headers, .. } if caller == "alice" && sdp == "v=0" && headers == &[("X-Account-Id".to_string(), "42".to_string())])
    );
    c.cmd(CallCommand::Tts(TtsRequest {
        text: "too early".into(),
        ..Default::default()
    }))
    .await;
    let e = c.expect("error", MS(100)).await;
    assert!(
        matches!(e.kind, EventKind::Error { ref sender, code: Some(400), .. } if sender == "tts")
    );
    c.cmd(CallCommand::Answer(AnswerOptions::default())).await;
    sleep(MS(100)).await;
    assert!(!c.drain().contains(&"answer"));
    c.port
        .event(LegEvent::Answered {
            sdp: Some("v=0 answer".into()),
            codec: "g722".into(),
        })
        .await
        .unwrap();
    let a = c.expect("answer", MS(100)).await;
    assert!(matches!(a.kind, EventKind::Answer { sdp: Some(ref s), .. } if s == "v=0 answer"));
    let other_log: SharedLog = Arc::default();
    let (p, _) = pending(LegSetup::default(), &other_log);
    c.h.attach(p).await.ok().unwrap();
    sleep(MS(20)).await;
    assert_eq!(
        *other_log.lock().unwrap(),
        vec![Log::Refused("busy".into())]
    );
    c.cmd(CallCommand::Dial(DialOptions::default())).await;
    let e = c.expect("error", MS(100)).await;
    assert!(matches!(e.kind, EventKind::Error { ref error, .. } if error.contains("already")));
    c.port
        .event(LegEvent::Ended {
            reason: "bye".into(),
            initiator: "caller".into(),
        })
        .await
        .unwrap();
    let h = c.expect("hangup", S(1)).await;
    assert!(
        matches!(h.kind, EventKind::Hangup { ref reason, ref initiator } if reason == "bye" && initiator == "caller")
    );
    c.h.ended().await;

    // The id was used: a new call with it is refused, and its leg too.
    let log: SharedLog = Arc::default();
    let (p, _) = pending(LegSetup::default(), &log);
    let r = core
        .start(CallSpec {
            id: Some("in-1".into()),
            kind: "fake",
            leg: Some(p),
            subscribers: vec![],
            ..Default::default()
        })
        .await;
    assert_eq!(r.unwrap_err(), StartError::Conflict("in-1".into()));
    assert_eq!(*log.lock().unwrap(), vec![Log::Refused("busy".into())]);
    assert_eq!(
        store.calls.lock().unwrap()["in-1"].codec.as_deref(),
        Some("g722"),
        "the first call's record is untouched"
    );
}

/// Without a leg: `accept` has nothing to answer, `dial` needs a dialer; a pending leg attaches
/// later (a `/call/sip` client offered an inbound call); unanswered, `hangup` refuses it with
/// the controller's reason.
#[tokio::test(start_paused = true)]
async fn a_call_without_a_leg_waits_for_one() {
    let (core, _) = core(Setup::default());
    let (s, mut sub) = channel(100, 0);
    let h = core
        .start(CallSpec {
            id: None,
            kind: "sip",
            leg: None,
            subscribers: vec![s],
            ..Default::default()
        })
        .await
        .unwrap();
    h.command(CallCommand::Answer(AnswerOptions::default()))
        .await
        .unwrap();
    let e = sub.recv().await.unwrap();
    assert!(
        matches!(e.kind, EventKind::Error { ref error, .. } if error.contains("`accept` needs an inbound call"))
    );
    h.command(CallCommand::Dial(DialOptions::default()))
        .await
        .unwrap();
    let e = sub.recv().await.unwrap();
    assert!(matches!(
        e.kind,
        EventKind::Error {
            code: Some(503),
            ..
        }
    ));
    let log: SharedLog = Arc::default();
    let (p, _) = pending(
        LegSetup {
            ringing: true,
            ..Default::default()
        },
        &log,
    );
    h.attach(p).await.ok().unwrap();
    let e = sub.recv().await.unwrap();
    assert!(matches!(e.kind, EventKind::Incoming { .. }));
    h.command(CallCommand::Hangup {
        reason: Some("busy".into()),
        initiator: None,
        headers: Vec::new(),
    })
    .await
    .unwrap();
    loop {
        let e = sub.recv().await.unwrap();
        if let EventKind::Hangup { reason, .. } = e.kind {
            assert_eq!(reason, "busy");
            break;
        }
    }
    assert!(log.lock().unwrap().contains(&Log::Closed("busy".into())));
}

/// DTMF: RFC 4733 through a leg that supports it, in-band tones (a bot track) otherwise;
/// `play` failures are `error` events and the call goes on.
#[tokio::test(start_paused = true)]
async fn dtmf_and_play() {
    let (core, _) = core(Setup::default());
    let mut c = call(
        &core,
        "dtmf-4733",
        LegSetup {
            caps: LegCaps {
                rfc4733: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    c.answer().await;
    c.cmd(CallCommand::SendDtmf {
        keys: "12#".into(),
        duration_ms: 100,
    })
    .await;
    sleep(MS(20)).await;
    assert!(c.log().contains(&Log::Cmd(LegCommand::SendDtmf {
        keys: "12#".into(),
        duration_ms: 100
    })));
    assert_eq!(c.bot_frames(), 0);

    let mut c = call(&core, "dtmf-inband", LegSetup::default()).await;
    c.answer().await;
    c.cmd(CallCommand::SendDtmf {
        keys: "12".into(),
        duration_ms: 100,
    })
    .await;
    c.expect("trackEnd", S(1)).await;
    assert_eq!(c.bot_frames(), 20, "two keys of 100 ms tone + 100 ms pause");
    c.cmd(CallCommand::Play(PlayRequest {
        url: "/missing.wav".into(),
        ..Default::default()
    }))
    .await;
    let e = c.expect("error", S(1)).await;
    assert!(matches!(e.kind, EventKind::Error { ref sender, .. } if sender == "play"));
    c.cmd(CallCommand::Play(PlayRequest {
        url: "/a.wav".into(),
        play_id: Some("clip".into()),
        auto_hangup: true,
    }))
    .await;
    let end = c.expect("trackEnd", S(2)).await;
    assert!(matches!(
        end.kind,
        EventKind::TrackEnd { duration: 1000, .. }
    ));
    c.expect("hangup", S(1)).await;
}

/// A leg that stops sending while the caller is mid-utterance (silence suppression, a client
/// that stops streaming): the call counts the gap as silence, so the utterance ends and is
/// transcribed without waiting for more audio.
#[tokio::test(start_paused = true)]
async fn a_leg_that_goes_quiet_ends_the_utterance() {
    let (core, _) = core(Setup::default());
    let mut c = call(&core, "dtx", LegSetup::default()).await;
    c.answer().await;
    c.speak(&vec![loud(); 40]).await;
    // `speak` sleeps 20 ms after the last frame.
    let t0 = Instant::now() - MS(20);
    let silence = c.expect("silence", S(3)).await;
    let waited = t0.elapsed();
    assert!(
        (MS(600)..MS(800)).contains(&waited),
        "endpointing took {waited:?} without audio"
    );
    assert!(matches!(
        silence.kind,
        EventKind::Silence { duration: 600, .. }
    ));
    let fin = c.expect("asrFinal", S(2)).await;
    let EventKind::AsrFinal { text, .. } = fin.kind else {
        unreachable!()
    };
    // The utterance: 800 ms of speech and the 200 ms kept after it.
    assert_eq!(text, "1000 ms of speech");
    // No speech, no timer: nothing more happens while the leg stays quiet.
    sleep(S(5)).await;
    assert_eq!(c.drain().iter().filter(|n| **n == "silence").count(), 1);
}

/// Seed 003 `audio`: application audio is queued (never interrupts), and a mark behind it is
/// reported only once all of it has been played out.
#[tokio::test(start_paused = true)]
async fn application_audio_queues_and_marks_follow_it() {
    let (core, _) = core(Setup::default());
    let mut c = call(&core, "app-audio", LegSetup::default()).await;
    c.cmd(CallCommand::Audio(vec![1000; 320])).await;
    let e = c.expect("error", MS(100)).await;
    assert!(matches!(e.kind, EventKind::Error { ref sender, .. } if sender == "media"));
    c.answer().await;
    let t0 = Instant::now();
    // 3 × 100 ms, sent as three commands: one after the other, nothing interrupted.
    for _ in 0..3 {
        c.cmd(CallCommand::Audio(vec![1000; 1600])).await;
    }
    c.cmd(CallCommand::Mark("cp".into())).await;
    c.expect("mark", S(2)).await;
    let played = t0.elapsed();
    assert!(
        played >= MS(280),
        "mark after {played:?}: before the audio was played"
    );
    assert!(!c.names().contains(&"interruption"), "{:?}", c.names());
    // Interrupt drops what is queued: a mark behind it comes at once.
    c.cmd(CallCommand::Audio(vec![1000; 16000])).await;
    c.expect("trackStart", MS(100)).await;
    c.cmd(CallCommand::Interrupt).await;
    let t1 = Instant::now();
    c.cmd(CallCommand::Mark("after".into())).await;
    c.expect("mark", MS(100)).await;
    assert!(t1.elapsed() <= MS(40));
}

/// Early media (issue 10): a ringing inbound leg is asked for it, bot audio reaches the leg
/// before the answer (and through the answer), caller audio is not processed until then, and
/// it is refused twice or for a leg that does not ring.
#[tokio::test(start_paused = true)]
async fn early_media_plays_before_the_answer() {
    let (core, _) = core(Setup::default());
    let mut c = call(
        &core,
        "early-1",
        LegSetup {
            ringing: true,
            async_answer: true,
            ..Default::default()
        },
    )
    .await;
    c.expect("incoming", MS(100)).await;
    c.cmd(CallCommand::EarlyMedia(AnswerOptions::default()))
        .await;
    c.port
        .event(LegEvent::Ringing { early_media: true })
        .await
        .unwrap();
    let r = c.expect("ringing", MS(100)).await;
    assert!(matches!(
        r.kind,
        EventKind::Ringing {
            early_media: true,
            ..
        }
    ));
    c.tts("please hold", None).await;
    c.expect("trackStart", S(1)).await;
    settle(MS(200)).await;
    let bot_before = c.log().iter().filter(|l| **l == Log::Bot).count();
    assert!(
        bot_before >= 5,
        "bot frames before the answer: {bot_before}"
    );
    assert!(c
        .log()
        .contains(&Log::Cmd(LegCommand::EarlyMedia { codec: None })));
    // Caller audio before the answer is not transcribed or endpointed.
    for _ in 0..30 {
        c.port.audio(loud()).await.unwrap();
    }
    settle(MS(100)).await;
    assert!(!c.drain().contains(&"speaking"), "{:?}", c.names());
    c.cmd(CallCommand::EarlyMedia(AnswerOptions::default()))
        .await;
    let e = c.expect("error", MS(100)).await;
    assert!(matches!(
        e.kind,
        EventKind::Error {
            code: Some(400),
            ..
        }
    ));
    c.cmd(CallCommand::Answer(AnswerOptions::default())).await;
    c.port
        .event(LegEvent::Answered {
            sdp: Some("v=0 same answer".into()),
            codec: "pcmu".into(),
        })
        .await
        .unwrap();
    c.expect("answer", MS(100)).await;
    c.tts("thanks for holding", None).await;
    c.expect("trackStart", S(1)).await;

    // A leg that does not ring (a `/call` WebSocket) gets no early media.
    let mut d = call(&core, "early-2", LegSetup::default()).await;
    d.cmd(CallCommand::EarlyMedia(AnswerOptions::default()))
        .await;
    let e = d.expect("error", MS(100)).await;
    assert!(matches!(
        e.kind,
        EventKind::Error {
            code: Some(400),
            ..
        }
    ));
    assert!(!d
        .log()
        .contains(&Log::Cmd(LegCommand::EarlyMedia { codec: None })));
}
