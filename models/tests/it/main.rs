//! The models crate's integration tests, one binary so that candle is linked once (they were
//! seven binaries). One module per area; `support` holds what they share.

mod audio;
mod chat;
mod chat_batch;
mod chat_install;
mod chat_real;
mod chat_remote;
mod ocr;
mod scene;
mod speech_real;
mod support;
mod vision_input;
mod voice_install;
mod whisper;
mod whisper_real;
