//! `sandra_actors::sender::split_message(text, limit)`: how a long reply becomes WhatsApp-sized
//! messages.
//!
//! Input: two bytes of limit (1..=4096; production uses 4096, small limits exercise the cut
//! logic far more), then the text (lossy UTF-8).
//!
//! The splitter trims the whole text, cuts it into parts, trims each part's end and the next
//! rest's start, and never drops anything else. So the properties are:
//! - it never panics or loops;
//! - every part is non-empty, has at most `limit` chars and no leading/trailing whitespace;
//! - the input is exactly `ws0 part1 ws1 part2 … partN wsN` where every `ws` is whitespace
//!   (`char::is_whitespace`, what `str::trim` uses), possibly empty: nothing but whitespace is
//!   lost, nothing is duplicated or reordered;
//! - text that fits (after trimming) is one part, unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandra_actors::sender::split_message;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limit = 1 + (u16::from_le_bytes([data[0], data[1]]) as usize % 4096);
    let text = String::from_utf8_lossy(&data[2..]);
    let parts = split_message(&text, limit);

    let mut rest: &str = &text;
    for (i, part) in parts.iter().enumerate() {
        let n = part.chars().count();
        assert!(n > 0, "part {i} is empty");
        assert!(n <= limit, "part {i} has {n} chars > limit {limit}");
        assert_eq!(part.trim(), part, "part {i} is not trimmed");
        rest = rest.trim_start();
        assert!(
            rest.starts_with(part.as_str()),
            "part {i} {part:?} is not the next text of the input (next: {:?})",
            rest.chars().take(40).collect::<String>()
        );
        rest = &rest[part.len()..];
    }
    assert!(
        rest.chars().all(char::is_whitespace),
        "non-whitespace text dropped at the end: {:?}",
        rest.chars().take(40).collect::<String>()
    );
    let trimmed = text.trim();
    if trimmed.chars().count() <= limit {
        let want: Vec<String> = if trimmed.is_empty() {
            vec![]
        } else {
            vec![trimmed.to_string()]
        };
        assert_eq!(parts, want, "text that fits was split");
    }
});
