//! Model threads run below the async runtime's OS scheduling priority.
//!
//! A model uses every core for seconds at a time; the tokio runtime's threads, which acknowledge
//! webhooks and send replies, must still get the CPU at once. So every thread that does model
//! compute is lowered to about nice +10 when it starts: the [`crate::worker::ModelWorker`]
//! threads, rayon's global pool (candle's matmuls and quantized kernels run there) and any
//! per-model pool built with [`model_pool_builder`] (Whisper's). The runtime keeps the process's
//! priority. Linux only; elsewhere these functions do nothing.
//!
//! The level is a documented constant rather than a setting: nobody has needed another, and the
//! operator can still start the whole process with `nice` (a thread is never raised above the
//! priority it inherited).

#[cfg(target_os = "linux")]
mod linux {
    use thread_priority::{ThreadPriority, ThreadPriorityValue, set_current_thread_priority};

    /// [`super::MODEL_NICE`] on the crate's portable 0..=99 scale (higher is more urgent), which
    /// it maps onto the nice range -20..=19 for normal (SCHED_OTHER) threads: 22 becomes nice 10.
    const MODEL_PRIORITY: u8 = 22;

    pub fn lower_current_thread() {
        // Never raise: a process started with `nice 15` keeps its model threads at 15 (and an
        // unprivileged raise would fail anyway).
        if current_nice().is_some_and(|n| n >= super::MODEL_NICE) {
            return;
        }
        let result = ThreadPriorityValue::try_from(MODEL_PRIORITY)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                set_current_thread_priority(ThreadPriority::Crossplatform(v))
                    .map_err(|e| format!("{e:?}"))
            });
        if let Err(error) = result {
            // Not fatal: the model still works, it just competes with the runtime as before.
            tracing::warn!(%error, "could not lower a model thread's scheduling priority");
        }
    }

    /// The calling thread's nice value, from `/proc/thread-self/stat` (field 19). The
    /// `thread-priority` crate sets niceness on Linux but reads back only the static priority,
    /// which is 0 for every normal thread.
    pub fn current_nice() -> Option<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces; count after it.
        let after_name = &stat[stat.rfind(')')? + 1..];
        after_name.split_whitespace().nth(16)?.parse().ok()
    }
}

/// The nice value model threads run at on Linux (the runtime runs at the process's, usually 0).
pub const MODEL_NICE: i32 = 10;

/// Lowers the calling thread to [`MODEL_NICE`]. Called at the start of every model thread.
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    linux::lower_current_thread();
}

/// The calling thread's nice value (Linux; `None` elsewhere).
pub fn current_nice() -> Option<i32> {
    #[cfg(target_os = "linux")]
    return linux::current_nice();
    #[cfg(not(target_os = "linux"))]
    None
}

/// A rayon pool builder whose threads start lowered, for pools that run model compute.
pub fn model_pool_builder() -> rayon::ThreadPoolBuilder {
    rayon::ThreadPoolBuilder::new().start_handler(|_| lower_current_thread())
}

/// Builds rayon's global pool (where candle runs its matmuls) with lowered threads, once per
/// process. It must run before anything first uses the global pool, which would build it with
/// default threads; [`crate::worker::ModelWorker::spawn`] calls it before loading any model.
/// If the pool already exists, model compute there keeps the runtime's priority (logged).
pub fn init_global_pool() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(error) = model_pool_builder()
            .thread_name(|i| format!("model-rayon-{i}"))
            .build_global()
        {
            tracing::warn!(%error, "rayon's global pool already existed: candle's threads keep the runtime's priority");
        }
    });
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn model_pool_threads_run_below_the_caller() {
        let caller = current_nice().expect("nice readable on Linux");
        let pool = model_pool_builder().num_threads(2).build().unwrap();
        let nices = pool.broadcast(|_| current_nice().unwrap());
        assert_eq!(nices.len(), 2);
        for n in nices {
            assert_eq!(n, caller.max(MODEL_NICE), "caller {caller}");
        }
    }
}
