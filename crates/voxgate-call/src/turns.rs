//! Turn-taking rules on transcripts (issue 9, seed 001 agents): adaptive endpointing and
//! backchannels. Pure functions on text; the actor applies them.
//!
//! # Adaptive endpointing
//! The pipeline transcribes each utterance speculatively [`FINAL_TAIL_MS`] into a silence (see
//! `voxgate_media::pipeline`). With [`crate::MediaOptions::adaptive_endpointing`] on, that
//! transcript sets how much silence ends the utterance:
//!
//! | the transcript so far | silence that ends the turn |
//! |---|---|
//! | a complete sentence: ends in `?` or `!` (and not in a filler), or in `.` after a word that does not need a continuation | [`COMPLETE_SILENCE_MS`] (300 ms), or as soon as the transcript is ready when that is later |
//! | a hesitation: ends in a filler (`um`, `uh`, `er`, `hmm`...) or `...`; or in a conjunction, article or preposition (`and`, `but`, `because`, `the`, `to`, `of`...) unless `?`/`!` follows; or, with no closing punctuation, in a word that rarely ends a turn (`is`, `was`, `that`, `for`, `in`...) | [`HESITANT_SILENCE_MS`] (1,200 ms) |
//! | anything else (e.g. a trailing comma) | the configured `min_silence_ms` (600 ms by default) |
//!
//! [`FINAL_TAIL_MS`]: voxgate_media::pipeline::FINAL_TAIL_MS

/// Caller speech still going on this long after it paused the bot (ms) is a real interruption
/// (see [`crate::MediaOptions::false_interruption_resume`]).
pub const FALSE_INTERRUPTION_MS: u64 = 1_000;
/// A pause no transcript resolved (ASR failed or is far behind) resumes after this long, ms.
pub const BARGE_PAUSE_LIMIT_MS: u64 = 3_000;

/// Silence that ends a turn whose transcript is a complete sentence, ms.
pub const COMPLETE_SILENCE_MS: u32 = 300;
/// Silence that ends a turn whose transcript trails off in a hesitation, ms.
pub const HESITANT_SILENCE_MS: u32 = 1_200;

/// How an utterance's transcript so far ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnEnd {
    /// A complete sentence: end the turn soon.
    Complete,
    /// A filler or a word that needs a continuation: wait longer.
    Hesitant,
    /// Neither: the configured endpointing.
    Open,
}

/// Fillers: a turn that ends in one is unfinished, whatever the punctuation.
const FILLERS: &[&str] = &["um", "umm", "uh", "uhh", "er", "erm", "hmm", "ah"];

/// Words that need a continuation even when the recogniser closed the sentence after them
/// ("I need a table and."): conjunctions, articles, prepositions that take an object, possessives.
const CONTINUATIONS: &[&str] = &[
    "and", "but", "or", "so", "because", "cause", "if", "then", "the", "a", "an", "to", "of",
    "with", "my", "your", "like", "which",
];

/// Words that rarely end an *unpunctuated* turn but often end a finished sentence ("than he
/// was.", "what are you looking for?"): hesitant only without a full stop, `?` or `!`.
const OPEN_ENDINGS: &[&str] = &[
    "for", "that", "who", "is", "are", "was", "i", "we", "it's", "i'm", "in", "on", "at",
];

/// The lower-case words of `text`, without punctuation (apostrophes and inner hyphens kept).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace())
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Classifies a transcript by how it ends (see the module doc).
pub fn turn_end(text: &str) -> TurnEnd {
    let t = text.trim();
    let Some(last) = words(t).pop() else {
        return TurnEnd::Open;
    };
    let last = last.as_str();
    if t.ends_with("...") || t.ends_with('…') || FILLERS.contains(&last) {
        return TurnEnd::Hesitant;
    }
    // A question or an exclamation is finished whatever its last word.
    if t.ends_with(['?', '!']) {
        return TurnEnd::Complete;
    }
    if CONTINUATIONS.contains(&last) {
        return TurnEnd::Hesitant;
    }
    if t.ends_with('.') {
        TurnEnd::Complete
    } else if OPEN_ENDINGS.contains(&last) {
        TurnEnd::Hesitant
    } else {
        TurnEnd::Open
    }
}

/// Backchannels: what a listener says to show attention, not to take the turn.
const BACKCHANNELS: &[&str] = &[
    "mhm",
    "mm",
    "mmm",
    "hmm",
    "mm-hmm",
    "mmhmm",
    "uh-huh",
    "uhhuh",
    "uh",
    "um",
    "ah",
    "oh",
    "yeah",
    "yes",
    "yep",
    "yup",
    "ok",
    "okay",
    "right",
    "sure",
    "alright",
    "i see",
    "got it",
    "uh huh",
    "mm hmm",
    "oh okay",
    "okay okay",
    "yeah yeah",
    "right right",
    "oh yeah",
    "ah okay",
];

/// Whether `text` (a whole utterance's transcript) is only a backchannel ("mhm", "yeah",
/// "okay", "uh-huh", "I see"...) or has no words at all (a cough, a click, noise): something that
/// should not take the turn from a speaking agent.
pub fn is_backchannel(text: &str) -> bool {
    let w = words(text);
    if w.is_empty() {
        return true;
    }
    if w.len() > 3 {
        return false;
    }
    BACKCHANNELS.contains(&w.join(" ").as_str())
        || w.iter().all(|x| BACKCHANNELS.contains(&x.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_ends() {
        assert_eq!(turn_end("What time do you open?"), TurnEnd::Complete);
        assert_eq!(
            turn_end("He might even have been made amiable himself."),
            TurnEnd::Complete
        );
        assert_eq!(turn_end("I would like to book, um"), TurnEnd::Hesitant);
        assert_eq!(turn_end("I need a table and."), TurnEnd::Hesitant);
        assert_eq!(turn_end("Let me think..."), TurnEnd::Hesitant);
        // Punctuation closes a sentence that ends in a verb or a preposition...
        assert_eq!(
            turn_end("He might have been made still more respectable than he was."),
            TurnEnd::Complete
        );
        assert_eq!(turn_end("What are you looking for?"), TurnEnd::Complete);
        assert_eq!(turn_end("So the answer is"), TurnEnd::Hesitant);
        // ...but not one that ends in a conjunction or a filler.
        assert_eq!(turn_end("Is it open on Sunday, um?"), TurnEnd::Hesitant);
        assert_eq!(turn_end("I'd like the soup or the."), TurnEnd::Hesitant);
        assert_eq!(
            turn_end("He was not an ill-disposed young man,"),
            TurnEnd::Open
        );
        assert_eq!(turn_end(""), TurnEnd::Open);
    }

    #[test]
    fn backchannels() {
        for b in [
            "Mm-hmm.",
            "Yeah.",
            "Okay, okay.",
            "Uh-huh",
            "I see.",
            "",
            " . ",
        ] {
            assert!(is_backchannel(b), "{b:?}");
        }
        for q in [
            "What time do you open?",
            "No.",
            "Yeah, but what about Sunday?",
            "Stop.",
        ] {
            assert!(!is_backchannel(q), "{q:?}");
        }
    }
}
