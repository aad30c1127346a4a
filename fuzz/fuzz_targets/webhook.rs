//! The webhook path on untrusted bytes: the HMAC check (`sandra_actors::ingest::signature_valid`) and the
//! payload parser (`sandra_actors::whatsapp::parse_webhook`).
//!
//! Properties:
//! - neither function panics, whatever the body or header;
//! - a body signed with the app secret is accepted, and so is a body whose non-ASCII text a proxy
//!   un-escaped after Meta signed its `\uXXXX` form (the verifier's documented fallback);
//! - an empty secret accepts nothing, and a header cut from the body itself is (practically)
//!   never a valid signature;
//! - parsing is deterministic: the same body gives the same batch.
#![no_main]

use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-app-secret";

fn sign(secret: &[u8], data: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key size");
    mac.update(data);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Meta's form of a body: every non-ASCII char as `\uXXXX` UTF-16 code units, lowercase hex.
fn meta_escaped(text: &str) -> String {
    let mut out = String::new();
    for ch in text.chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            let mut units = [0u16; 2];
            for u in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

fuzz_target!(|body: &[u8]| {
    use sandra_actors::ingest::signature_valid;

    let good = sign(SECRET, body);
    assert!(
        signature_valid(SECRET, body, Some(&good)),
        "own signature refused"
    );
    // Header whitespace is tolerated (proxies pad it).
    assert!(signature_valid(SECRET, body, Some(&format!(" {good} "))));
    assert!(
        !signature_valid(b"", body, Some(&good)),
        "empty secret accepted"
    );
    assert!(!signature_valid(SECRET, body, None));

    if let Ok(text) = std::str::from_utf8(body)
        && !text.is_ascii()
    {
        let escaped_sig = sign(SECRET, meta_escaped(text).as_bytes());
        assert!(
            signature_valid(SECRET, body, Some(&escaped_sig)),
            "signature over Meta's escaped form refused for the un-escaped body"
        );
    }

    // Arbitrary header: the first line of the input, checked against the rest.
    let split = body.iter().position(|b| *b == b'\n').unwrap_or(body.len());
    if let Ok(header) = std::str::from_utf8(&body[..split]) {
        let rest = body.get(split + 1..).unwrap_or_default();
        if signature_valid(SECRET, rest, Some(header)) {
            // Only possible if the fuzzer found the real MAC (it will not) or the fallback form.
            let h = header.trim();
            let ok = h.eq_ignore_ascii_case(&sign(SECRET, rest))
                || std::str::from_utf8(rest).is_ok_and(|t| {
                    h.eq_ignore_ascii_case(&sign(SECRET, meta_escaped(t).as_bytes()))
                });
            assert!(ok, "accepted a signature that is not the MAC of the body");
        }
    }

    let first = sandra_actors::whatsapp::parse_webhook(body);
    let second = sandra_actors::whatsapp::parse_webhook(body);
    match (first, second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "parse is not deterministic"
            );
            for m in &a.messages {
                // Every accepted message belongs to a chat: the parser drops sender-less ones.
                assert!(m.chat_id().is_some(), "message without a chat: {m:?}");
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("parse is not deterministic"),
    }
});
