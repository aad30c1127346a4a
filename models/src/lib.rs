//! `sandra-models`: Sandra's local models (chat LLM, Whisper, vision) and the media decoding they
//! need. It knows candle, audio and image formats; it knows nothing of WhatsApp, HTTP routes or
//! ractor. Every model runs on its own thread behind a bounded queue ([`worker`]).

mod attention;
pub mod audio;
mod busy;
pub mod catalog;
pub mod chat;
pub mod device;
#[cfg(feature = "install")]
pub mod install;
pub mod priority;
pub mod speech;
// Tiny random-weight models that tests build; the runtime never needs them, so they compile only
// for this crate's unit tests and for dependents that enable the `testing` feature.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing_scene;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing_vision;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing_whisper;
pub mod vision;
pub mod whisper;
pub mod worker;

/// The allocator of every program that links this crate (Sandra, its tests and benches).
/// Reading a prompt allocates and frees tensors of several megabytes per layer and product;
/// glibc's malloc returns each to the OS and the next one is faulted in and zeroed again, which
/// `perf` showed as ~10% of prefill time (page faults) plus munmap. mimalloc keeps the memory
/// for the next product. Measured with `bench_llm` (184-token prompt, five prefills a run, three
/// runs alternating): fastest prefill 0.81–1.29 s against 1.13–1.51 s; peak RSS +6%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
