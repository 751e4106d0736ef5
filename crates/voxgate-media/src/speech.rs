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

/// Splits text into sentences for streaming synthesis: a sentence ends at `.`, `!`, `?`, `;` or a
/// newline followed by whitespace (or the end, when `final_chunk`). Returns the complete sentences
/// and leaves the unfinished rest in `buf`.
pub fn take_sentences(buf: &mut String, final_chunk: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = buf.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        let ends = matches!(c, '.' | '!' | '?' | ';' | '\n' | '。' | '！' | '？');
        let next_is_space = chars.get(k + 1).is_none_or(|&(_, n)| n.is_whitespace());
        let at_end = k + 1 == chars.len();
        if ends && next_is_space && (!at_end || final_chunk || c == '\n') {
            let end = i + c.len_utf8();
            let s = buf[start..end].trim();
            if s.chars().any(|c| c.is_alphanumeric()) {
                out.push(s.to_string());
            }
            start = end;
        }
    }
    // A sentence-final mark at the very end of a non-final chunk also closes the sentence.
    if !final_chunk {
        let tail = buf[start..].trim_end();
        if tail.ends_with(['.', '!', '?']) && tail.chars().any(|c| c.is_alphanumeric()) {
            out.push(tail.trim().to_string());
            start = buf.len();
        }
    }
    let rest = buf[start..].to_string();
    *buf = rest;
    if final_chunk {
        let s = buf.trim().to_string();
        if s.chars().any(|c| c.is_alphanumeric()) {
            out.push(s);
        }
        buf.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
