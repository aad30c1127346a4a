//! Text made for reading, turned into text made for speaking, then cut into sentences.
//!
//! A chat reply is written for the eye: Markdown marks, emoji, links, code. Read aloud by a
//! phonemiser they become noise ("asterisk asterisk", "h t t p s colon slash slash", an emoji's
//! name, every brace of a code block). [`speakable`] keeps what a person would say: the words of
//! emphasis and links, a link's host name instead of its whole address, nothing of code blocks
//! or emoji. Lines that end without punctuation (list items, headings) end a sentence, so the
//! voice pauses where the eye would.
//!
//! [`sentences`] then cuts the result into sentences, so a long answer is synthesised (and can
//! be sent) a sentence at a time, and no single model run is unboundedly long.

/// A sentence longer than this (characters) is cut further at its clause marks (`,;:`), then
/// at spaces: one model run per piece keeps memory and latency bounded.
pub const MAX_SENTENCE_CHARS: usize = 400;

/// Abbreviations whose full stop does not end a sentence (compared without case).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "approx", "no",
    "fig", "inc", "ltd", "co", "mt", "ave",
];

/// The text of a chat reply as it should be spoken: Markdown marks, emoji and code removed,
/// links reduced to their words or host, one sentence per line at least.
pub fn speakable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_fence = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with("```") || line.starts_with("~~~") {
            // A code block is for copying, not for listening: skipped whole.
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let line = strip_line_marks(line);
        let line = clean_inline(line);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(line);
        // A heading or list item has no full stop of its own; without one the voice would run
        // it into the next line.
        if !line.ends_with(['.', '!', '?', ':', ';', ',', '…']) {
            out.push('.');
        }
    }
    out
}

/// Heading marks, quote marks, list bullets and numbers, and table pipes at a line's start.
fn strip_line_marks(line: &str) -> &str {
    let mut l = line;
    loop {
        let before = l;
        l = l
            .trim_start_matches('#')
            .trim_start_matches('>')
            .trim_start();
        for bullet in ["- ", "* ", "+ ", "• "] {
            if let Some(rest) = l.strip_prefix(bullet) {
                l = rest.trim_start();
            }
        }
        // "1. " or "2) ": a numbered item's number is layout, not content.
        let digits = l.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && digits <= 3 {
            let rest = &l[digits..];
            if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
                l = r.trim_start();
            }
        }
        if l == before {
            return l;
        }
    }
}

/// Inline Markdown, links, URLs and emoji of one line.
fn clean_inline(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // [words](address) and ![alt](address): the words.
        if c == '[' || (c == '!' && chars.get(i + 1) == Some(&'[')) {
            let open = if c == '!' { i + 1 } else { i };
            if let Some((label, next)) = link_at(&chars, open) {
                out.push_str(&clean_inline(&label));
                i = next;
                continue;
            }
        }
        // A bare address: its host, which is what a person reads out ("example.com").
        if starts_url(&chars[i..]) && (i == 0 || !chars[i - 1].is_alphanumeric()) {
            let end = (i..chars.len())
                .find(|&j| chars[j].is_whitespace())
                .unwrap_or(chars.len());
            let url: String = chars[i..end].iter().collect();
            let (host, trailing) = url_host(&url);
            out.push_str(&host);
            out.push_str(trailing);
            i = end;
            continue;
        }
        match c {
            // Emphasis, strike-through, inline-code and table marks.
            '*' | '_' | '~' | '`' | '|' => {
                // An underscore inside a word (snake_case) reads as a space.
                if c == '_'
                    && i > 0
                    && chars[i - 1].is_alphanumeric()
                    && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric())
                {
                    out.push(' ');
                }
            }
            _ if is_emoji(c) => {}
            _ => out.push(c),
        }
        i += 1;
    }
    // Marks removed can leave doubled spaces, and a space before punctuation.
    let mut tidy = String::with_capacity(out.len());
    for w in out.split_whitespace() {
        if !tidy.is_empty() && !w.starts_with([',', '.', '!', '?', ';', ':']) {
            tidy.push(' ');
        }
        tidy.push_str(w);
    }
    tidy
}

/// `[label](target)` starting at `open` (the `[`): the label and the index after `)`.
fn link_at(chars: &[char], open: usize) -> Option<(String, usize)> {
    let close = (open + 1..chars.len()).find(|&j| chars[j] == ']')?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let end = (close + 2..chars.len()).find(|&j| chars[j] == ')')?;
    Some((chars[open + 1..close].iter().collect(), end + 1))
}

fn starts_url(chars: &[char]) -> bool {
    let head: String = chars
        .iter()
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with("https://") || head.starts_with("http://") || head.starts_with("www.")
}

/// An address's host without `www.`, plus any sentence punctuation that followed it.
fn url_host(url: &str) -> (String, &str) {
    let body = url.trim_end_matches(['.', ',', '!', '?', ';', ':', ')']);
    let trailing = &url[body.len()..];
    let no_scheme = body.split_once("://").map(|(_, rest)| rest).unwrap_or(body);
    let host = no_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("")
        .trim_start_matches("www.");
    // Drop a port or credentials: nobody says them.
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host);
    (host.to_string(), trailing.trim_start_matches(')'))
}

/// Pictographs, symbols and the invisible characters that build emoji sequences (joiners,
/// variation selectors, skin tones, flag letters, tags).
fn is_emoji(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF   // pictographs, emoticons, transport, flags' regional letters, skin tones
        | 0x2600..=0x27BF   // miscellaneous symbols and dingbats
        | 0x2B00..=0x2BFF   // arrows and stars (⭐, ⬆)
        | 0x2190..=0x21FF   // arrows
        | 0x2300..=0x23FF   // technical (⌚, ⏰)
        | 0x200D            // zero-width joiner
        | 0x20E3            // combining keycap
        | 0xFE00..=0xFE0F   // variation selectors
        | 0xE0020..=0xE007F // tag characters (subdivision flags)
    )
}

/// Cuts speakable text into sentences (each keeps its final punctuation). A full stop after a
/// known abbreviation, an initial or inside a number does not end a sentence. Sentences longer
/// than [`MAX_SENTENCE_CHARS`] are cut at clause marks, then at spaces.
pub fn sentences(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '.' | '!' | '?' | '…') {
            // Take the whole run of terminal marks and closing quotes ("?!", "...", `."`).
            let mut end = i + 1;
            while end < chars.len()
                && matches!(
                    chars[end],
                    '.' | '!' | '?' | '…' | '"' | '\'' | ')' | '”' | '’'
                )
            {
                end += 1;
            }
            let at_break = end == chars.len() || chars[end].is_whitespace();
            if at_break && !(c == '.' && end == i + 1 && is_abbreviation(&chars[start..i])) {
                push_sentence(&mut out, &chars[start..end]);
                start = end;
            }
            i = end;
            continue;
        }
        i += 1;
    }
    push_sentence(&mut out, &chars[start..]);
    out
}

/// Whether the word before a full stop is an abbreviation or a single letter (an initial).
fn is_abbreviation(before: &[char]) -> bool {
    let word: String = before
        .iter()
        .rev()
        .take_while(|c| !c.is_whitespace())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let word = word.trim_start_matches(['(', '"', '\'']).to_lowercase();
    (word.chars().count() == 1 && word.chars().all(char::is_alphabetic))
        || ABBREVIATIONS.contains(&word.as_str())
}

fn push_sentence(out: &mut Vec<String>, chars: &[char]) {
    let s: String = chars.iter().collect();
    let s = s.trim();
    if !s.chars().any(char::is_alphanumeric) {
        return;
    }
    if s.chars().count() <= MAX_SENTENCE_CHARS {
        out.push(s.to_string());
        return;
    }
    // Too long for one model run: clause marks first, then any space.
    let mut piece = String::new();
    for word in s.split_inclusive(' ') {
        piece.push_str(word);
        let n = piece.chars().count();
        let clause_end = word.trim_end().ends_with([',', ';', ':']);
        if (clause_end && n >= MAX_SENTENCE_CHARS / 2) || n >= MAX_SENTENCE_CHARS {
            out.push(piece.trim().to_string());
            piece.clear();
        }
    }
    if piece.chars().any(char::is_alphanumeric) {
        out.push(piece.trim().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_marks_are_not_spoken_but_their_words_are() {
        assert_eq!(
            speakable("**Bold** and *italic* and ~~gone~~ and `ls -l` here."),
            "Bold and italic and gone and ls -l here."
        );
        assert_eq!(speakable("# Title\nText"), "Title. Text.");
        assert_eq!(
            speakable("Steps:\n- first thing\n- second thing\n1. numbered"),
            "Steps: first thing. second thing. numbered."
        );
        assert_eq!(speakable("> quoted words"), "quoted words.");
    }

    #[test]
    fn code_blocks_are_skipped_whole() {
        let t = "Run this:\n```rust\nfn main() { println!(\"hi\"); }\n```\nThen wait.";
        assert_eq!(speakable(t), "Run this: Then wait.");
    }

    #[test]
    fn links_keep_their_words_and_urls_their_host() {
        assert_eq!(
            speakable("See [the docs](https://example.com/a/b?c=d) now."),
            "See the docs now."
        );
        assert_eq!(
            speakable("Go to https://www.example.org/path/x?y=1. Then call."),
            "Go to example.org. Then call."
        );
        assert_eq!(speakable("Visit www.rust-lang.org"), "Visit rust-lang.org.");
    }

    #[test]
    fn emoji_and_their_joiners_vanish() {
        assert_eq!(
            speakable("Great job 👍🏽! 👨‍👩‍👧 Family ❤️ time 🇪🇸"),
            "Great job! Family time."
        );
    }

    #[test]
    fn snake_case_reads_as_words() {
        assert_eq!(speakable("set max_wait high"), "set max wait high.");
    }

    #[test]
    fn sentences_split_at_terminal_marks_but_not_abbreviations_or_numbers() {
        assert_eq!(
            sentences("Hello there. Dr. Smith costs 3.50 dollars! Really?! Yes… ok"),
            vec![
                "Hello there.",
                "Dr. Smith costs 3.50 dollars!",
                "Really?!",
                "Yes…",
                "ok"
            ]
        );
        assert_eq!(
            sentences("J. R. R. Tolkien wrote it."),
            vec!["J. R. R. Tolkien wrote it."]
        );
        assert_eq!(
            sentences("He said \"stop.\" Then left."),
            vec!["He said \"stop.\"", "Then left."]
        );
    }

    #[test]
    fn punctuation_alone_is_no_sentence() {
        assert!(sentences(" ... !! ").is_empty());
        assert!(sentences("").is_empty());
    }

    #[test]
    fn long_sentences_are_cut_at_clauses_within_the_limit() {
        let clause = "this clause has a few words in it, ";
        let long = clause.repeat(30) + "end.";
        let parts = sentences(&long);
        assert!(parts.len() > 1, "{parts:?}");
        for p in &parts {
            assert!(p.chars().count() <= MAX_SENTENCE_CHARS, "{} chars", p.len());
        }
        assert_eq!(parts.concat().replace(' ', ""), long.replace(' ', ""));
        // No clause marks at all: cut at spaces.
        let words = "word ".repeat(300);
        for p in sentences(&words) {
            assert!(p.chars().count() <= MAX_SENTENCE_CHARS);
        }
    }
}
