//! The real Piper voice, when installed (`scripts/fetch-models.sh voice` puts en_US-joe-medium
//! under `<repo>/.models/piper/`; or set `$SANDRA_MODELS_DIR`). Otherwise each test prints a
//! visible `skipped:` line and passes. The pure parts (text cleanup, phoneme ids, Ogg/Opus
//! framing) are unit-tested in `sandra_models::speech` without weights.

use std::path::PathBuf;

use sandra_models::audio::decode_to_pcm16k;
use sandra_models::speech::{
    InferenceConfig, PiperVoice, Speaker, SpeechError, SpeechOptions, VoiceNote, espeak,
};

/// The joe voice's `.onnx`, if installed.
pub fn joe_voice() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("SANDRA_MODELS_DIR") {
        candidates.push(PathBuf::from(d).join("piper/en_US-joe-medium.onnx"));
    }
    candidates.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.models/piper/en_US-joe-medium.onnx"),
    );
    candidates
        .into_iter()
        .find(|p| p.is_file() && p.with_extension("onnx.json").is_file())
}

macro_rules! voice_or_skip {
    ($name:literal) => {
        match joe_voice() {
            Some(p) => p,
            None => {
                println!(
                    "skipped: {}: no Piper voice (run scripts/fetch-models.sh voice or set SANDRA_MODELS_DIR)",
                    $name
                );
                return;
            }
        }
    };
}

/// RMS of a stretch of audio.
fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

#[test]
fn joe_speaks_a_sentence_into_a_voice_note_sandra_can_play_back() {
    let path = voice_or_skip!("joe_speaks_a_sentence_into_a_voice_note_sandra_can_play_back");
    let voice = PiperVoice::load(&path).unwrap();
    assert_eq!(voice.sample_rate(), 22050);
    let note = voice
        .voice_note(
            "**Hello!** The meeting is at three o'clock, see https://example.com 👍",
            None,
        )
        .unwrap();
    // About eleven words: a few seconds of speech, not silence and not a runaway.
    assert!(
        (1.5..8.0).contains(&note.seconds),
        "{} s of speech",
        note.seconds
    );
    let pcm = decode_to_pcm16k(&note.ogg, VoiceNote::MIME, 60.0).unwrap();
    assert!((pcm.seconds - note.seconds).abs() < 0.01);
    assert!(rms(&pcm.samples) > 0.02, "rms {}", rms(&pcm.samples));
}

#[test]
fn with_the_noise_off_the_same_ids_give_the_same_audio() {
    let path = voice_or_skip!("with_the_noise_off_the_same_ids_give_the_same_audio");
    let voice = PiperVoice::load(&path).unwrap();
    let ipa = espeak::phonemize("Good morning.", &voice.config().espeak.voice).unwrap();
    let (ids, unknown) = voice.config().phoneme_ids(&ipa);
    assert_eq!(unknown, 0, "{ipa}");
    let still = InferenceConfig {
        noise_scale: 0.0,
        length_scale: 1.0,
        noise_w: 0.0,
    };
    let a = voice.synthesize(&ids, still, None).unwrap();
    let b = voice.synthesize(&ids, still, None).unwrap();
    assert_eq!(a, b);
    // Twice the length scale makes much longer audio: the scales reach the graph.
    let slow = voice
        .synthesize(
            &ids,
            InferenceConfig {
                length_scale: 2.0,
                ..still
            },
            None,
        )
        .unwrap();
    assert!(
        slow.len() as f32 > a.len() as f32 * 1.6,
        "{} vs {}",
        slow.len(),
        a.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_speaker_answers_in_languages_it_has_a_voice_for_only() {
    let path = voice_or_skip!("the_speaker_answers_in_languages_it_has_a_voice_for_only");
    let speaker = Speaker::load(
        SpeechOptions {
            voices: vec![path],
            threads: 2,
        },
        2,
    )
    .unwrap();
    assert_eq!(speaker.languages(), ["en".to_string()]);
    assert!(speaker.speaks("en_US"));
    let note = speaker.speak("It works.".into(), "en").await.unwrap();
    assert!(note.seconds > 0.3);
    let e = speaker.speak("Hola.".into(), "es").await.unwrap_err();
    assert!(matches!(e, SpeechError::NoVoice(ref l) if l == "es"), "{e}");
    let e = speaker.speak("🙂🙂".into(), "en").await.unwrap_err();
    assert!(matches!(e, SpeechError::Nothing), "{e}");
}

/// Ten replies of the kind Sandra sends.
const ROUND_TRIP: [&str; 10] = [
    "Good morning, the weather today is sunny and warm.",
    "Your meeting with the dentist has been moved to Friday afternoon.",
    "I found three recipes that use chicken, rice and green peppers.",
    "Please remember to take your umbrella because it may rain later.",
    "The train to the airport leaves every twenty minutes from the main station.",
    "Thank you for your message, I will answer your question in a moment.",
    "Drinking enough water is important, especially when you exercise.",
    "The library closes at eight o'clock on weekdays and at noon on Saturday.",
    "Could you tell me which color you prefer for the new kitchen?",
    "Your package was delivered to the front door this afternoon.",
];

/// The round trip: Sandra's voice speaks ten replies (voice notes as sent), Sandra's own Whisper
/// (whisper-base, as `scripts/fetch-whisper.sh` installs it) hears them back through Sandra's
/// Ogg/Opus decoder. The word error rate says whether the voice is understandable; the goal is
/// at most 10%.
#[tokio::test(flavor = "multi_thread")]
async fn whisper_understands_sandras_voice() {
    let path = voice_or_skip!("whisper_understands_sandras_voice");
    let Some(whisper) = crate::whisper_real::model_dir() else {
        println!(
            "skipped: whisper_understands_sandras_voice: no Whisper weights (run scripts/fetch-whisper.sh)"
        );
        return;
    };
    let speaker = Speaker::load(
        SpeechOptions {
            voices: vec![path],
            threads: 2,
        },
        1,
    )
    .unwrap();
    let t = sandra_models::whisper::Transcriber::load(
        &whisper,
        sandra_models::whisper::WhisperOptions {
            language: Some("en".into()),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let (mut errors, mut words) = (0.0f32, 0usize);
    for sentence in ROUND_TRIP {
        let note = speaker.speak(sentence.into(), "en").await.unwrap();
        let pcm = decode_to_pcm16k(&note.ogg, VoiceNote::MIME, 60.0).unwrap();
        let heard = t.transcribe(pcm.samples).await.unwrap().text;
        let n = crate::whisper_real::words(sentence).len();
        let w = crate::whisper_real::wer(sentence, &heard);
        println!(
            "WER {w:.2} ({:.1} s): {sentence:?} -> {heard:?}",
            note.seconds
        );
        errors += w * n as f32;
        words += n;
    }
    let wer = errors / words as f32;
    println!(
        "round trip: WER {:.1}% over {words} words ({})",
        wer * 100.0,
        whisper.display()
    );
    assert!(wer <= 0.10, "round-trip WER {wer}");
}
