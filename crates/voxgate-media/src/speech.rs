//! Ports for speech engines (ASR and TTS). Offline engines (Moonshine, Piper, flite) live in the
//! `voxgate-speech` crate; cloud engines implement the same traits.
//!
//! Both interfaces are blocking and CPU-bound: the call core runs them on a blocking thread pool,
//! never on its tick. Streaming is done by the call core around them: ASR is fed utterances cut by
//! the VAD (and growing utterances for partial results), TTS is fed sentence by sentence.

use crate::types::AudioFrame;

/// Error from a speech engine, with the engine's message. The call core reports it as an `error`
/// event with `sender: "asr"` or `"tts"`; the call goes on.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SpeechError {
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("engine failed: {0}")]
    Engine(String),
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

/// Speech recognition over one utterance.
pub trait Transcriber: Send + Sync {
    /// Engine name used in metrics keys (`ttfb.asr.<name>`), e.g. `moonshine`.
    fn name(&self) -> &str;
    /// Transcribes mono 16 kHz samples (f32 in −1..1), typically 0.2–30 s, to text.
    ///
    /// # Errors
    /// [`SpeechError`] when the engine fails; empty audio gives `Ok("")`.
    fn transcribe(&self, samples_16k: &[f32]) -> Result<String, SpeechError>;
}

/// Speech synthesis of one sentence or clause.
pub trait Synthesizer: Send + Sync {
    /// Engine name used in metrics keys (`ttfb.tts.<name>`), e.g. `piper`.
    fn name(&self) -> &str;
    /// Synthesises `text` with an optional voice (`speaker` of the `tts` command) to mono audio at
    /// the engine's native rate (Piper 22 050 Hz, flite 16 000 Hz).
    ///
    /// # Errors
    /// [`SpeechError::BadInput`] for an unknown voice; [`SpeechError::Engine`] when synthesis fails.
    fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<AudioFrame, SpeechError>;
}

/// Longest text a [`SentenceSplitter`] holds without a sentence end, in characters. Past it, the
/// text is cut at the last clause or word boundary and synthesised: an LLM that streams text
/// without punctuation must not grow the buffer without bound.
pub const MAX_PENDING_CHARS: usize = 300;

/// Words a first clause needs before it is cut off ([`SentenceSplitter::first_clause`]): "Well,"
/// alone sounds clipped.
pub const FIRST_CLAUSE_WORDS: usize = 3;

/// Words after which a later clause is cut off too (with [`SentenceSplitter::first_clause`]): a
/// long sentence from a slow LLM would otherwise leave the caller in silence until its full stop.
pub const LONG_CLAUSE_WORDS: usize = 10;

/// Openers a reply may speak on their own before the first clause is complete ("Sure, ...",
/// "Of course, ..."): they stand as a phrase, and their audio covers the synthesis of what
/// follows. "Well," is not one (alone it sounds clipped).
const OPENERS: &[&str] = &[
    "sure",
    "yes",
    "yeah",
    "okay",
    "ok",
    "of course",
    "certainly",
    "absolutely",
    "great",
    "alright",
    "all right",
    "right",
    "no",
    "hi",
    "hello",
    "thanks",
    "thank you",
    "good morning",
    "good afternoon",
    "good evening",
    "perfect",
    "got it",
    "understood",
    "i see",
];

fn is_opener(clause: &str) -> bool {
    let c = clause.trim().to_lowercase();
    OPENERS.contains(&c.as_str())
}

fn ends_sentence(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ';' | '\n' | '。' | '！' | '？')
}

fn worth_speaking(s: &str) -> bool {
    s.chars().any(|c| c.is_alphanumeric())
}

/// Cuts streamed text (e.g. LLM tokens of a `tts` command with `streaming: true`) into sentences
/// for synthesis, as they complete.
///
/// A sentence ends at `.`, `!`, `?`, `;`, a newline, or `。！？`, followed by whitespace; a chunk
/// that ends with `.`, `!`, `?` or a newline also closes its sentence (a streamed sentence is
/// spoken without waiting for the next token). Pieces without a letter or digit (`"..."`) are
/// dropped. Each character is scanned once, and at most [`MAX_PENDING_CHARS`] (or the configured
/// bound) wait for a sentence end: longer text is cut at its last `,` `:` or space.
///
/// With [`SentenceSplitter::first_clause`], the first piece ends at the first `,` or `:`
/// followed by whitespace once it has [`FIRST_CLAUSE_WORDS`] words, or right after an opener
/// ("Sure,", "Of course,"): the first audio of a streamed reply starts at its first clause instead
/// of its first full stop. Later pieces end at a `,` or `:` once they have [`LONG_CLAUSE_WORDS`]
/// words, so that a long sentence streamed slowly is spoken clause by clause.
#[derive(Debug, Clone)]
pub struct SentenceSplitter {
    buf: String,
    first_clause: bool,
    emitted: bool,
    /// Byte offset in `buf` from which no decision has been made yet.
    scan_from: usize,
    max_chars: usize,
}

impl Default for SentenceSplitter {
    fn default() -> Self {
        Self::new(MAX_PENDING_CHARS)
    }
}

impl SentenceSplitter {
    /// A splitter that holds at most `max_chars` characters (at least 16) without a sentence end.
    pub fn new(max_chars: usize) -> Self {
        SentenceSplitter {
            buf: String::new(),
            first_clause: false,
            emitted: false,
            scan_from: 0,
            max_chars: max_chars.max(16),
        }
    }

    /// Cut the first piece at its first clause boundary (see the type's doc).
    pub fn first_clause(mut self, on: bool) -> Self {
        self.first_clause = on;
        self
    }

    /// Text received but not yet part of a complete sentence.
    pub fn pending(&self) -> &str {
        &self.buf
    }

    /// Appends `text` and returns the sentences it completes, in order. With `final_chunk`, the
    /// rest is returned too (the stream ended) and the splitter is empty afterwards.
    pub fn push(&mut self, text: &str, final_chunk: bool) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        let mut start = 0usize;
        let mut undecided: Option<usize> = None;
        let mut iter = self.buf[self.scan_from..].char_indices().peekable();
        while let Some((off, c)) = iter.next() {
            let first = !self.emitted && out.is_empty();
            let clause = self.first_clause && matches!(c, ',' | ':');
            if !ends_sentence(c) && !clause {
                continue;
            }
            let at = self.scan_from + off;
            let end = at + c.len_utf8();
            let closes = if clause {
                let piece = &self.buf[start..at];
                let words = piece.split_whitespace().count();
                matches!(iter.peek(), Some(&(_, n)) if n.is_whitespace())
                    && if first {
                        words >= FIRST_CLAUSE_WORDS || is_opener(piece)
                    } else {
                        words >= LONG_CLAUSE_WORDS
                    }
            } else {
                match iter.peek() {
                    Some(&(_, n)) => n.is_whitespace(),
                    // The mark ends the chunk: `.!?` and newlines close the sentence now; `;` and
                    // the CJK marks wait for what follows unless the stream ended.
                    None => final_chunk || matches!(c, '.' | '!' | '?' | '\n'),
                }
            };
            if closes {
                let s = self.buf[start..end].trim();
                if worth_speaking(s) {
                    out.push(s.to_string());
                }
                start = end;
            } else if iter.peek().is_none() {
                undecided = Some(at);
            }
        }
        let scanned_to = undecided.unwrap_or(self.buf.len());
        self.emitted |= !out.is_empty();
        self.buf.drain(..start);
        self.scan_from = scanned_to - start;
        if final_chunk {
            let s = self.buf.trim();
            if worth_speaking(s) {
                out.push(s.to_string());
            }
            self.buf.clear();
            self.scan_from = 0;
            return out;
        }
        // Bound the text that waits for a sentence end.
        while self.buf.chars().count() > self.max_chars {
            let limit = self
                .buf
                .char_indices()
                .nth(self.max_chars)
                .map_or(self.buf.len(), |(i, _)| i);
            let head = &self.buf[..limit];
            let cut = head
                .rfind([',', ':'])
                .map(|i| i + 1)
                .or_else(|| head.rfind(char::is_whitespace))
                .filter(|&i| i > 0)
                .unwrap_or(limit);
            let s = self.buf[..cut].trim();
            if worth_speaking(s) {
                out.push(s.to_string());
            }
            self.buf.drain(..cut);
            self.scan_from = self.scan_from.saturating_sub(cut);
        }
        out
    }
}

/// Splits `buf` into complete sentences with a fresh [`SentenceSplitter`] (see its rules), leaving
/// the unfinished rest in `buf`. For one-off text; a stream keeps one splitter.
pub fn take_sentences(buf: &mut String, final_chunk: bool) -> Vec<String> {
    let mut s = SentenceSplitter::new(usize::MAX);
    let out = s.push(buf, final_chunk);
    *buf = s.buf;
    out
}

/// The pieces a one-off `tts` text is synthesised in, in order: what a fresh track's splitter
/// makes of it (first clause first, then sentences; see [`SentenceSplitter`]). A controller that
/// knows what it will say (an agent's first message) can synthesise them ahead through a
/// [`CachedSynthesizer`].
pub fn tts_pieces(text: &str) -> Vec<String> {
    SentenceSplitter::new(MAX_PENDING_CHARS)
        .first_clause(true)
        .push(text, true)
}

/// Longest piece a [`CachedSynthesizer`] keeps, in characters: prompts and first messages are
/// short; an LLM's long sentences are rarely said twice.
pub const CACHE_MAX_CHARS: usize = 200;

type CacheCell = std::sync::Arc<std::sync::OnceLock<Result<AudioFrame, SpeechError>>>;

/// A [`Synthesizer`] that remembers the audio of its last `capacity` short pieces (at most
/// [`CACHE_MAX_CHARS`] characters), keyed by text and voice: a repeated prompt, holding phrase or
/// first message costs no synthesis, and a piece synthesised ahead ([`tts_pieces`]) is ready when
/// the call asks for it. Two threads asking for the same piece at once share one synthesis (the
/// second waits for the first). Failures are not kept. Memory: a 3 s piece from Piper (22 050 Hz,
/// 16-bit) is ~130 kB.
pub struct CachedSynthesizer {
    inner: std::sync::Arc<dyn Synthesizer>,
    capacity: usize,
    /// Least recently used first.
    cells: std::sync::Mutex<std::collections::VecDeque<((String, String), CacheCell)>>,
}

impl CachedSynthesizer {
    /// Wraps `inner`, keeping up to `capacity` pieces (0 keeps none).
    pub fn new(inner: std::sync::Arc<dyn Synthesizer>, capacity: usize) -> Self {
        CachedSynthesizer {
            inner,
            capacity,
            cells: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The cell for `key`, made most recently used (created when missing).
    fn cell(&self, key: (String, String)) -> CacheCell {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let cell = match cells.iter().position(|(k, _)| *k == key) {
            Some(i) => cells.remove(i).expect("position").1,
            None => CacheCell::default(),
        };
        cells.push_back((key, cell.clone()));
        while cells.len() > self.capacity {
            cells.pop_front();
        }
        cell
    }

    fn forget(&self, key: &(String, String)) {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells.retain(|(k, _)| k != key);
    }
}

impl Synthesizer for CachedSynthesizer {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<AudioFrame, SpeechError> {
        if self.capacity == 0 || text.chars().count() > CACHE_MAX_CHARS {
            return self.inner.synthesize(text, voice);
        }
        let key = (voice.unwrap_or_default().to_string(), text.to_string());
        let cell = self.cell(key.clone());
        let r = cell
            .get_or_init(|| self.inner.synthesize(text, voice))
            .clone();
        if r.is_err() {
            self.forget(&key);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts syntheses; fails on "fail"; slow enough for two threads to overlap.
    struct Counting(std::sync::atomic::AtomicUsize);
    impl Synthesizer for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn synthesize(&self, text: &str, _: Option<&str>) -> Result<AudioFrame, SpeechError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            if text == "fail" {
                return Err(SpeechError::Engine("no".into()));
            }
            Ok(AudioFrame::mono(
                crate::SampleRate::HZ_16000,
                vec![text.len() as i16; 160],
            ))
        }
    }

    #[test]
    fn the_cache_synthesises_a_piece_once() {
        let inner = std::sync::Arc::new(Counting(Default::default()));
        let c = std::sync::Arc::new(CachedSynthesizer::new(inner.clone(), 2));
        let n = || inner.0.load(std::sync::atomic::Ordering::SeqCst);
        // Two threads at once share one synthesis.
        let t: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.synthesize("Hello there.", None).unwrap())
            })
            .collect();
        for t in t {
            assert_eq!(t.join().unwrap().samples[0], 12);
        }
        assert_eq!(n(), 1);
        // Another voice is another piece.
        c.synthesize("Hello there.", Some("b")).unwrap();
        assert_eq!(n(), 2);
        c.synthesize("Hello there.", None).unwrap();
        assert_eq!(n(), 2);
        // Capacity 2: a third piece evicts the least recently used (voice "b").
        c.synthesize("Bye.", None).unwrap();
        c.synthesize("Hello there.", Some("b")).unwrap();
        assert_eq!(n(), 4);
        // Failures are not kept; long pieces are not cached.
        assert!(c.synthesize("fail", None).is_err());
        assert!(c.synthesize("fail", None).is_err());
        assert_eq!(n(), 6);
        let long = "word ".repeat(60);
        c.synthesize(&long, None).unwrap();
        c.synthesize(&long, None).unwrap();
        assert_eq!(n(), 8);
    }

    #[test]
    fn a_long_streamed_sentence_is_spoken_clause_by_clause() {
        let mut s = SentenceSplitter::default().first_clause(true);
        let mut out = Vec::new();
        for w in "Sure, the clinic opens at nine on weekdays and at ten on Saturdays, but on Sundays, it is closed. Bye."
            .split_inclusive(' ')
        {
            out.extend(s.push(w, false));
        }
        out.extend(s.push("", true));
        assert_eq!(
            out,
            [
                "Sure,",
                // Ten words: cut at its comma...
                "the clinic opens at nine on weekdays and at ten on Saturdays,",
                // ...but a short clause waits for the sentence's end.
                "but on Sundays, it is closed.",
                "Bye."
            ]
        );
    }

    #[test]
    fn tts_pieces_start_with_the_first_clause() {
        assert_eq!(
            tts_pieces(
                "Hello, this is the clinic calling about your appointment. Is now a good time?"
            ),
            [
                "Hello,",
                "this is the clinic calling about your appointment.",
                "Is now a good time?"
            ]
        );
        assert_eq!(
            tts_pieces("Good morning Sarah, this is the clinic. Do you have a minute?"),
            [
                "Good morning Sarah,",
                "this is the clinic.",
                "Do you have a minute?"
            ]
        );
    }

    #[test]
    fn sentences_stream_out_as_they_complete() {
        let mut b = String::from("Hello there. How are");
        assert_eq!(take_sentences(&mut b, false), vec!["Hello there."]);
        assert_eq!(b, " How are");
        b.push_str(" you? Fine");
        assert_eq!(take_sentences(&mut b, false), vec!["How are you?"]);
        assert_eq!(take_sentences(&mut b, true), vec!["Fine"]);
        assert!(b.is_empty());
        let mut c = String::from("It costs 3.50 dollars.");
        assert_eq!(
            take_sentences(&mut c, false),
            vec!["It costs 3.50 dollars."]
        );
    }

    #[test]
    fn splitter_streams_tokens_and_scans_once() {
        let mut s = SentenceSplitter::default();
        let mut got = Vec::new();
        for tok in [
            "Hel",
            "lo the",
            "re",
            ". How",
            " are you",
            "?",
            " Fine; th",
            "anks",
        ] {
            got.extend(s.push(tok, false));
        }
        assert_eq!(got, vec!["Hello there.", "How are you?", "Fine;"]);
        assert_eq!(s.pending(), " thanks");
        assert_eq!(s.push("", true), vec!["thanks"]);
        assert_eq!(s.pending(), "");
        // Pieces without words are dropped; a `;` at the end of a chunk waits for more.
        assert_eq!(s.push("... ok; ", false), vec!["ok;"]);
        assert!(s.push("wait;", false).is_empty());
        assert_eq!(s.push(" go", true), vec!["wait;", "go"]);
    }

    #[test]
    fn a_streamed_reply_starts_at_its_first_clause() {
        let mut s = SentenceSplitter::default().first_clause(true);
        // Too short a clause waits; the comma at the end of a chunk waits for what follows.
        assert!(s.push("Well, our clinic", false).is_empty());
        assert!(s.push(" opens at nine,", false).is_empty());
        assert_eq!(
            s.push(" and closes", false),
            ["Well, our clinic opens at nine,"]
        );
        // Only the first piece is a clause; then whole sentences again.
        assert!(s.push(" at five, on weekdays", false).is_empty());
        assert_eq!(
            s.push(". Bye", true),
            ["and closes at five, on weekdays.", "Bye"]
        );
        // An opener stands on its own.
        let mut o = SentenceSplitter::default().first_clause(true);
        assert_eq!(o.push("Of course, ", false), ["Of course,"]);
        assert!(o.push("we open at nine, and", false).is_empty());
        // Off by default.
        let mut d = SentenceSplitter::default();
        assert!(d
            .push("Well, our clinic opens at nine, and", false)
            .is_empty());
    }

    #[test]
    fn text_without_punctuation_stays_bounded() {
        let mut s = SentenceSplitter::new(50);
        let mut spoken = Vec::new();
        for _ in 0..1000 {
            spoken.extend(s.push("word ", false));
            assert!(s.pending().chars().count() <= 50, "{}", s.pending().len());
        }
        assert!(spoken.len() >= 90, "{}", spoken.len());
        assert!(spoken
            .iter()
            .all(|p| p.split_whitespace().all(|w| w == "word")));
        // A clause boundary is preferred to a word boundary.
        let mut s = SentenceSplitter::new(20);
        assert_eq!(
            s.push("one two, three four five six", false),
            vec!["one two,"]
        );
        assert_eq!(s.pending(), " three four five six");
    }
}
