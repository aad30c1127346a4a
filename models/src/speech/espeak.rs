//! Text → IPA phonemes with libespeak-ng, in process (no shell-out per message).
//!
//! Piper voices were trained on espeak-ng's IPA, so the same library makes their input. The
//! binding is three `extern "C"` functions of `speak_lib.h` (Debian `libespeak-ng-dev` to link,
//! `libespeak-ng1` + `espeak-ng-data` to run); no bindgen, no `-sys` crate.
//!
//! libespeak-ng keeps global state (the selected voice, its translator, static buffers for the
//! returned string), so every call goes through one process-wide lock, and the library is
//! initialised once. espeak's `TextToPhonemes` drops punctuation, which Piper voices need for
//! their pauses and intonation: [`phonemize`] cuts a sentence at its clause marks itself,
//! phonemises each clause and puts the mark back, as Piper's own phonemiser does.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::Mutex;

use super::SpeechError;

#[link(name = "espeak-ng")]
unsafe extern "C" {
    fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_TextToPhonemes(
        textptr: *mut *const c_void,
        textmode: c_int,
        phonememode: c_int,
    ) -> *const c_char;
}

/// `AUDIO_OUTPUT_SYNCHRONOUS`: no audio thread is started (only phonemes are asked for).
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// `espeakINITIALIZE_DONT_EXIT`: without it a missing data directory calls `exit(1)`.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
const CHARS_UTF8: c_int = 1;
const PHONEMES_IPA: c_int = 0x02;
const EE_OK: c_int = 0;

/// The library's state: `None` until initialised, then the voice selected last.
static ESPEAK: Mutex<Option<Result<String, String>>> = Mutex::new(None);

/// Clause marks inside a sentence that Piper voices have ids for.
const CLAUSE_MARKS: [char; 3] = [',', ';', ':'];

/// The IPA of one sentence in `voice` (an espeak-ng voice name such as `en-us`), with its
/// clause and sentence punctuation kept (`həlˈoʊ, wˈɜːld.`).
pub fn phonemize(sentence: &str, voice: &str) -> Result<String, SpeechError> {
    let mut guard = ESPEAK.lock().unwrap_or_else(|p| p.into_inner());
    select_voice(&mut guard, voice)?;
    let mut out = String::new();
    for (clause, mark) in clauses(sentence) {
        let ipa = clause_ipa(&clause)?;
        if ipa.is_empty() && mark.is_none() {
            continue;
        }
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        out.push_str(&ipa);
        if let Some(m) = mark {
            out.push(m);
        }
    }
    Ok(out.trim_end().to_string())
}

/// Initialises the library once and selects `voice` when another one is current.
fn select_voice(
    state: &mut Option<Result<String, String>>,
    voice: &str,
) -> Result<(), SpeechError> {
    if state.is_none() {
        // SAFETY: a null path asks for the compiled-in data directory (or $ESPEAK_DATA_PATH);
        // called once, under the lock, before any other espeak function.
        let rate = unsafe {
            espeak_Initialize(
                AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                std::ptr::null(),
                INITIALIZE_DONT_EXIT,
            )
        };
        *state = Some(if rate > 0 {
            Ok(String::new())
        } else {
            Err("libespeak-ng could not initialise (is espeak-ng-data installed?)".into())
        });
    }
    match state {
        Some(Ok(current)) if current == voice => Ok(()),
        Some(Ok(current)) => {
            let name = CString::new(voice)
                .map_err(|_| SpeechError::Phonemes(format!("bad espeak voice name {voice:?}")))?;
            // SAFETY: a NUL-terminated string that outlives the call; under the lock.
            let rc = unsafe { espeak_SetVoiceByName(name.as_ptr()) };
            if rc != EE_OK {
                return Err(SpeechError::Phonemes(format!(
                    "espeak-ng has no voice {voice:?} (error {rc})"
                )));
            }
            *current = voice.to_string();
            Ok(())
        }
        Some(Err(e)) => Err(SpeechError::Phonemes(e.clone())),
        None => unreachable!("initialised above"),
    }
}

/// The IPA of a clause (espeak may still see several clauses in it; they are joined by a
/// space). The caller holds the lock.
fn clause_ipa(text: &str) -> Result<String, SpeechError> {
    let text =
        CString::new(text.replace('\0', " ")).map_err(|e| SpeechError::Phonemes(e.to_string()))?;
    let mut ptr = text.as_ptr().cast::<c_void>();
    let mut out = String::new();
    // Each call consumes one espeak clause and advances `ptr`, setting it to null at the end;
    // the bound only guards against a library that would never advance.
    for _ in 0..=text.as_bytes().len() {
        if ptr.is_null() {
            break;
        }
        // SAFETY: `ptr` points into `text` (NUL-terminated, alive for the whole loop) or is
        // the position espeak returned; the returned string is copied before the next call,
        // which overwrites espeak's static buffer. The lock is held by the caller.
        let piece = unsafe {
            let p = espeak_TextToPhonemes(&mut ptr, CHARS_UTF8, PHONEMES_IPA);
            if p.is_null() {
                break;
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        let piece = piece.trim();
        if !piece.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(piece);
        }
    }
    Ok(out)
}

/// A sentence's clauses with the mark that ends each: `,;:` followed by a space inside, and
/// the sentence's own final mark (`.`, `!`, `?`; an ellipsis counts as `.`).
pub(crate) fn clauses(sentence: &str) -> Vec<(String, Option<char>)> {
    let s = sentence.trim();
    let body = s.trim_end_matches(['.', '!', '?', '…', '"', '\'', ')', '”', '’']);
    let tail = &s[body.len()..];
    let final_mark = tail.chars().find_map(|c| match c {
        '.' | '…' => Some('.'),
        '!' => Some('!'),
        '?' => Some('?'),
        _ => None,
    });
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = body.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let next_is_space = chars.get(i + 1).is_none_or(|n| n.is_whitespace());
        if CLAUSE_MARKS.contains(&c) && next_is_space {
            out.push((cur.trim().to_string(), Some(c)));
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    out.push((cur.trim().to_string(), final_mark));
    out.retain(|(text, mark)| !text.is_empty() || mark.is_some());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_keep_their_marks_and_numbers_stay_whole() {
        assert_eq!(
            clauses("Well, at 3:45 we paid 1,000 dollars; ok!"),
            vec![
                ("Well".to_string(), Some(',')),
                ("at 3:45 we paid 1,000 dollars".to_string(), Some(';')),
                ("ok".to_string(), Some('!')),
            ]
        );
        assert_eq!(clauses("No mark"), vec![("No mark".to_string(), None)]);
        assert_eq!(clauses("Wait…"), vec![("Wait".to_string(), Some('.'))]);
    }

    /// Needs libespeak-ng's data at run time (Debian `espeak-ng-data`): the phonemes Piper's
    /// English voices were trained on.
    #[test]
    fn english_ipa_with_punctuation() {
        let ipa = phonemize("Hello, world.", "en-us").expect("espeak-ng-data installed");
        assert_eq!(ipa, "həlˈoʊ, wˈɜːld.");
        // Abbreviations are expanded by espeak, a question keeps its mark.
        let ipa = phonemize("Is Dr. Smith in?", "en-us").unwrap();
        assert!(ipa.contains("dˈɑːktɚ"), "{ipa}");
        assert!(ipa.ends_with('?'), "{ipa}");
    }

    #[test]
    fn an_unknown_voice_is_an_error_not_a_crash() {
        let e = phonemize("Hello.", "xx-nowhere").unwrap_err();
        assert!(e.to_string().contains("xx-nowhere"), "{e}");
        // The library still works afterwards.
        assert_eq!(phonemize("Hello.", "en-us").unwrap(), "həlˈoʊ.");
    }
}
