//! Real Whisper weights, when installed (`scripts/fetch-whisper.sh` puts whisper-base under
//! `<repo>/.models/whisper-base`; or set `$SANDRA_MODELS_DIR`). A sentence spoken by espeak-ng
//! goes the whole voice-note way: wav → Ogg/Opus → our decoder → Transcriber. Otherwise the test
//! prints a visible `skipped:` line and passes.

use std::path::PathBuf;

use sandra_models::audio::decode_to_pcm16k;
use sandra_models::whisper::{Transcriber, WhisperOptions};

pub(crate) fn model_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("SANDRA_MODELS_DIR") {
        let d = PathBuf::from(d);
        candidates.push(d.join("whisper-base"));
        candidates.push(d);
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.models/whisper-base"));
    candidates
        .into_iter()
        .find(|d| d.join("config.json").is_file() && d.join("tokenizer.json").is_file())
}

pub(crate) fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Word error rate (Levenshtein over words / reference length).
pub(crate) fn wer(reference: &str, hyp: &str) -> f32 {
    let (r, h) = (words(reference), words(hyp));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f32 / r.len().max(1) as f32
}

use sandra_models::testing_whisper::spoken_voice_note as voice_note;

#[tokio::test(flavor = "multi_thread")]
async fn whisper_base_transcribes_a_spoken_sentence() {
    let Some(dir) = model_dir() else {
        println!(
            "skipped: whisper_base_transcribes_a_spoken_sentence: no weights (run scripts/fetch-whisper.sh or set SANDRA_MODELS_DIR)"
        );
        return;
    };
    let text =
        "The quick brown fox jumps over the lazy dog. Please send me the report before Friday.";
    let Some(note) = voice_note(text, "en") else {
        println!("skipped: whisper_base_transcribes_a_spoken_sentence: espeak-ng/opusenc missing");
        return;
    };
    let pcm = decode_to_pcm16k(&note, "audio/ogg; codecs=opus", 900.0).unwrap();
    let t = Transcriber::load(&dir, WhisperOptions::default(), 1).unwrap();
    let started = std::time::Instant::now();
    let out = t.transcribe(pcm.samples).await.unwrap();
    let w = wer(text, &out.text);
    println!(
        "{} ({:?}): {:?} in {:.2} s for {:.1} s of audio, WER {w:.2}",
        t.info().expect("a local model").weights.display(),
        out.language,
        out.text,
        started.elapsed().as_secs_f32(),
        out.audio_seconds
    );
    assert_eq!(out.language.as_deref(), Some("en"));
    assert!(w <= 0.2, "WER {w}: {:?}", out.text);

    // Silence and faint noise: no invented words.
    let silence = t.transcribe(vec![0.0; 3 * 16_000]).await.unwrap();
    assert_eq!(silence.text, "");
    let mut seed = 1u32;
    let noise: Vec<f32> = (0..3 * 16_000)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 0.02 - 0.01
        })
        .collect();
    let noisy = t.transcribe(noise).await.unwrap();
    println!("faint noise: {:?}", noisy.text);

    // Language detection on a Spanish note.
    if let Some(note) = voice_note("Hola, ¿cómo estás? Mañana te llamo por teléfono.", "es") {
        let pcm = decode_to_pcm16k(&note, "audio/ogg", 900.0).unwrap();
        let out = t.transcribe(pcm.samples).await.unwrap();
        println!("es: {:?} {:?}", out.language, out.text);
        assert_eq!(out.language.as_deref(), Some("es"));
    }
}
