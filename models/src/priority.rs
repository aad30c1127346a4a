//! Model threads run below the async runtime's OS scheduling priority: under `SCHED_IDLE` by
//! default (`server.model_threads`), at nice +10 in any case.
//!
//! A model uses every core for seconds at a time; the tokio runtime's threads, which acknowledge
//! webhooks and send replies, must still get the CPU at once. So every thread that does model
//! compute is lowered to about nice +10 when it starts: the [`crate::worker::ModelWorker`]
//! threads, rayon's global pool (candle's matmuls and quantized kernels run there) and any
//! per-model pool built with [`model_pool_builder`] (Whisper's). The runtime keeps the process's
//! priority. Linux only; elsewhere these functions do nothing.
//!
//! The nice level is a documented constant rather than a setting: nobody has needed another,
//! and the operator can still start the whole process with `nice` (a thread is never raised
//! above the priority it inherited; a process started at nice 10 or more keeps its threads as
//! they are, without `SCHED_IDLE`). candle's own worker threads (its "barrier pool") are created
//! by the first model thread that multiplies, and inherit its policy and nice value.

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
            })
            .and_then(|()| match super::model_threads() {
                super::ModelThreads::Nice => Ok(()),
                super::ModelThreads::Idle => {
                    let param = libc::sched_param { sched_priority: 0 };
                    // SAFETY: plain syscall on the calling thread (pid 0) with a valid param;
                    // the nice value set above is kept.
                    match unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } {
                        0 => Ok(()),
                        _ => Err(format!("SCHED_IDLE: {}", std::io::Error::last_os_error())),
                    }
                }
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

/// How model threads give way to the runtime (`server.model_threads`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelThreads {
    /// `SCHED_IDLE`: a model thread runs only when no normal thread wants the core, so a webhook
    /// is acknowledged at once even while every core computes. Measured with
    /// `scripts/bench-concurrency.sh` (500 signed webhooks/s while 8 conversations generate, 2
    /// cores): p99 ack 3.2 ms against 8.2 ms at nice +10. The cost: other busy processes on
    /// the machine (a build, a backup) take the cores from the models entirely while they run.
    #[default]
    Idle,
    /// Nice +10 only: the models keep a share of the cores next to other busy processes; the
    /// runtime waits a little longer for a core.
    Nice,
}

static MODEL_THREADS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Chooses how threads lowered from now on run; the binary calls it from its config before
/// any model starts.
pub fn set_model_threads(m: ModelThreads) {
    let v = match m {
        ModelThreads::Idle => 0,
        ModelThreads::Nice => 1,
    };
    MODEL_THREADS.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// The current choice (see [`set_model_threads`]).
pub fn model_threads() -> ModelThreads {
    match MODEL_THREADS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => ModelThreads::Idle,
        _ => ModelThreads::Nice,
    }
}

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
        // And, by default, under SCHED_IDLE: they take only cores nobody else wants. (Asked of
        // the kernel: glibc's pthread_getschedparam answers from its own cache.)
        // SAFETY: plain syscall about the calling thread.
        let policies = pool.broadcast(|_| unsafe { libc::sched_getscheduler(0) });
        assert_eq!(policies, vec![libc::SCHED_IDLE; 2]);
    }
}
