//! Is Sandra addressed? Pure text matching for group messages: a name mention on word
//! boundaries, case- and accent-insensitively, and an `@<business number>` mention.
//!
//! WhatsApp's Cloud API has no mention field (see /docs: the group webhook carries only the text
//! body), so a mention is whatever the text says. Names are compared as sequences of words:
//! both sides are folded (Unicode canonical decomposition, combining marks dropped, lowercased:
//! "Sándra" is "sandra") and cut into words by the Unicode word-boundary rules (UAX #29, the
//! `unicode-segmentation` crate), so "Sandra," "SANDRA?" and "@Sandra" match and "Alessandra",
//! "sandrawich" and "Sandr a" do not. UAX #29 keeps an apostrophe inside a word, so the
//! possessive "Sandra's" is not an address, which is what a group means by it ("Sandra's answer
//! was wrong" talks about her, not to her).

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use unicode_segmentation::UnicodeSegmentation;

/// `s` without accents, lowercased: "Sándra" → "sandra".
fn fold(s: &str) -> String {
    s.nfd()
        .filter(|c| !is_combining_mark(*c))
        .collect::<String>()
        .to_lowercase()
}

/// Whether `text` names `name` as whole words (a multi-word name as consecutive words).
pub fn mentions_name(text: &str, name: &str) -> bool {
    let name = fold(name);
    let wanted: Vec<&str> = name.unicode_words().collect();
    if wanted.is_empty() {
        return false;
    }
    let text = fold(text);
    let words: Vec<&str> = text.unicode_words().collect();
    words.windows(wanted.len()).any(|w| w == wanted.as_slice())
}

/// Whether `text` holds `@<number>`: digits as WhatsApp renders a mention of a number, with or
/// without `+`, and with the spaces, dashes, dots or parentheses of a formatted number
/// ("@+1 555-078-3881"). The number must end there: "@155507838812" is another number.
pub fn mentions_number(text: &str, number: &str) -> bool {
    let want: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    if want.is_empty() {
        return false;
    }
    let chars: Vec<char> = text.chars().collect();
    chars.iter().enumerate().any(|(at, c)| {
        if *c != '@' && *c != '\u{FF20}' {
            return false;
        }
        let mut i = at + 1;
        if chars.get(i) == Some(&'+') {
            i += 1;
        }
        let mut got = 0;
        while got < want.len() {
            match chars.get(i) {
                Some(d) if *d == want[got] => got += 1,
                // Separators only after the first digit ("@ 1555..." is not a mention).
                Some(' ' | '-' | '.' | '(' | ')' | '\u{A0}') if got > 0 => {}
                _ => return false,
            }
            i += 1;
        }
        !chars.get(i).is_some_and(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_whole_words_in_any_case_and_accent() {
        for text in [
            "Sandra",
            "sandra, what's the weather?",
            "SANDRA?",
            "hey Sándra!",
            "@Sandra can you help",
            "ok (sandra) fine",
            "¿Sandra, me ayudas?",
            "thanks sandra.",
        ] {
            assert!(
                mentions_name(text, "Sandra"),
                "{text:?} should address Sandra"
            );
        }
        // An accented configured name matches the plain spelling too.
        assert!(mentions_name("hi sandra", "Sándra"));
        // A two-word name is matched as consecutive words.
        assert!(mentions_name("ask Sandra  Bot please", "Sandra Bot"));
        assert!(!mentions_name("ask Sandra please, bot", "Sandra Bot"));
    }

    #[test]
    fn near_misses_do_not_match() {
        for text in [
            "Alessandra is coming",
            "a sandrawich for lunch",
            "I sent it to Sandr a",
            "Cassandra said so",
            "sandra_bot",
            "Sandra's answer was wrong",
            "",
        ] {
            assert!(
                !mentions_name(text, "Sandra"),
                "{text:?} must not address Sandra"
            );
        }
        assert!(!mentions_name("anything", ""), "no name configured: never");
    }

    #[test]
    fn numbers_match_as_whatsapp_may_render_them() {
        let n = "15550783881";
        for text in [
            "@15550783881 hi",
            "hi @+15550783881",
            "@+1 555-078-3881 what now?",
            "@1 (555) 078.3881",
            "(@15550783881)",
        ] {
            assert!(
                mentions_number(text, n),
                "{text:?} should address the number"
            );
        }
        // The display number may itself be formatted.
        assert!(mentions_number("@15550783881", "+1 555-078-3881"));
        for text in [
            "15550783881 without the at",
            "@155507838812 is longer",
            "@1555078388 is shorter",
            "@ 15550783881",
            "email@15550783880",
        ] {
            assert!(
                !mentions_number(text, n),
                "{text:?} must not address the number"
            );
        }
        assert!(!mentions_number("@15550783881", ""));
    }
}
