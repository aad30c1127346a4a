//! A model on its own OS thread, behind a bounded queue.
//!
//! Model compute (candle forward passes) is long, CPU-bound and stateful (KV caches), so it never
//! runs on the async runtime. [`ModelWorker::spawn`] starts one dedicated thread that *loads* the
//! model and then serves jobs one at a time; load failures come back to the caller before
//! `spawn` returns (the "ready" channel), so a bad model path fails start-up cleanly instead of
//! leaving a zombie worker. [`ModelWorker::run`] refuses work with [`WorkerError::Busy`] when the
//! queue is full instead of queueing without bound, and a panic inside one job is caught, reported
//! as [`WorkerError::Panicked`] for that job, and the thread goes on serving the next one.
//!
//! Cancellation: a caller that stops waiting (its future dropped, e.g. a turn aborted on
//! timeout) is not computed for. A queued job whose caller has gone is skipped (counted in
//! [`skipped_jobs`]), and a job already running can poll [`cancelled`] between steps (the chat
//! model does between tokens) and stop early.
//!
//! Queue wait: given a histogram ([`ModelWorker::observe_queue_wait`]), the thread records how
//! long each job waited behind the others before it started (skipped jobs are not recorded).

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

/// Why a job did not produce a result.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WorkerError {
    /// The queue is full: the caller should shed load or retry later.
    #[error("model worker {0} is busy (queue full)")]
    Busy(&'static str),
    /// The worker thread has stopped (its model failed or the process is shutting down).
    #[error("model worker {0} has stopped")]
    Stopped(&'static str),
    /// The job panicked inside the model code; the worker survives and serves the next job.
    #[error("model worker {0} panicked: {1}")]
    Panicked(&'static str, String),
}

type Job<M, Out> = (
    Box<dyn FnOnce(&mut M) -> Out + Send>,
    oneshot::Sender<Out>,
    tracing::Span,
    Arc<AtomicBool>,
    std::time::Instant,
);

/// Jobs skipped in this process because their caller had gone before they started.
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// How many jobs every worker of this process skipped because nobody waited for them anymore.
pub fn skipped_jobs() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

thread_local! {
    /// The running job's "caller has gone" flag, on a worker thread while a job runs.
    static CURRENT: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Inside a job: true once its caller stopped waiting, so long work can stop early (its result
/// would be thrown away). Always false outside a worker job.
pub fn cancelled() -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    })
}

/// Counts a job skipped because its caller had gone (the chat scheduler skips its own).
pub(crate) fn count_skipped() {
    SKIPPED.fetch_add(1, Ordering::Relaxed);
}

/// Lives in the caller's future: dropping it before the reply arrived raises the job's flag.
pub(crate) struct CancelOnDrop(pub(crate) Option<Arc<AtomicBool>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Cloneable async handle to a model that lives on a dedicated thread.
pub struct ModelWorker<M, Out> {
    name: &'static str,
    tx: mpsc::Sender<Job<M, Out>>,
    /// Shared with the thread (and every clone): set once, by whoever owns the metrics.
    queue_wait: Arc<OnceLock<metrics::Histogram>>,
}

impl<M, Out> Clone for ModelWorker<M, Out> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            tx: self.tx.clone(),
            queue_wait: self.queue_wait.clone(),
        }
    }
}

impl<M: 'static, Out: Send + 'static> ModelWorker<M, Out> {
    /// Starts the thread, runs `load` on it and waits for the outcome. `queue` bounds the jobs
    /// waiting behind the one in progress.
    pub fn spawn<E, L>(name: &'static str, queue: usize, load: L) -> Result<Self, E>
    where
        L: FnOnce() -> Result<M, E> + Send + 'static,
        E: Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Job<M, Out>>(queue.max(1));
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<(), E>>(1);
        // Before the model loads: candle's first matmul would otherwise build rayon's global
        // pool at the runtime's priority.
        crate::priority::init_global_pool();
        let queue_wait: Arc<OnceLock<metrics::Histogram>> = Arc::default();
        let waits = queue_wait.clone();
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || {
                crate::priority::lower_current_thread();
                let mut model = match load() {
                    Ok(m) => {
                        let _ = ready_tx.send(Ok(()));
                        m
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some((job, reply, span, gone, queued)) = rx.blocking_recv() {
                    let _entered = span.enter();
                    if reply.is_closed() || gone.load(Ordering::Relaxed) {
                        SKIPPED.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(worker = name, "job skipped: its caller has gone");
                        continue;
                    }
                    if let Some(h) = waits.get() {
                        h.record(queued.elapsed().as_secs_f64());
                    }
                    CURRENT.with(|c| *c.borrow_mut() = Some(gone));
                    let result = catch_unwind(AssertUnwindSafe(|| job(&mut model)));
                    CURRENT.with(|c| *c.borrow_mut() = None);
                    match result {
                        Ok(out) => {
                            let _ = reply.send(out);
                        }
                        Err(panic) => {
                            let msg = panic_message(&panic);
                            tracing::error!(worker = name, panic = %msg, "model job panicked");
                            // Dropping `reply` tells the caller; see `run`.
                            drop(reply);
                        }
                    }
                }
                tracing::debug!(worker = name, "model worker thread exits");
            })
            .expect("spawning a model thread");
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                name,
                tx,
                queue_wait,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => panic!("model worker {name} died while loading"),
        }
    }

    /// Runs `job` on the model thread and awaits its output.
    pub async fn run<F>(&self, job: F) -> Result<Out, WorkerError>
    where
        F: FnOnce(&mut M) -> Out + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let flag = Arc::new(AtomicBool::new(false));
        let mut gone = CancelOnDrop(Some(flag.clone()));
        self.tx
            .try_send((
                Box::new(job),
                reply_tx,
                tracing::Span::current(),
                flag,
                std::time::Instant::now(),
            ))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WorkerError::Busy(self.name),
                mpsc::error::TrySendError::Closed(_) => WorkerError::Stopped(self.name),
            })?;
        let out = reply_rx
            .await
            .map_err(|_| WorkerError::Panicked(self.name, "job aborted".into()));
        // Answered (or the job is over): nothing left to cancel.
        gone.0 = None;
        out
    }

    /// Records, from now on, how long each job waits in the queue before it starts (seconds).
    /// Only the first histogram given to a worker (or any clone of it) is used.
    pub fn observe_queue_wait(&self, histogram: metrics::Histogram) {
        let _ = self.queue_wait.set(histogram);
    }

    /// Number of free slots in the queue (for readiness and metrics).
    pub fn free_slots(&self) -> usize {
        self.tx.capacity()
    }
}

/// What a caught panic said (its `&str` or `String` payload), for logs and failure reasons.
pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Model compute must not compete with the runtime threads that ack webhooks.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn worker_thread_runs_below_the_callers_priority() {
        let caller = crate::priority::current_nice().expect("nice readable on Linux");
        let w = ModelWorker::<(), Option<i32>>::spawn("nice", 1, || Ok::<_, ()>(())).unwrap();
        let worker = w
            .run(|_| crate::priority::current_nice())
            .await
            .unwrap()
            .unwrap();
        // Below the caller (nice 10 against the usual 0); a caller already started at nice 10
        // or more is never raised, so its worker stays at the caller's level.
        assert_eq!(
            worker,
            caller.max(crate::priority::MODEL_NICE),
            "caller {caller}"
        );
        if caller < crate::priority::MODEL_NICE {
            assert!(worker > caller);
        }
    }

    #[tokio::test]
    async fn load_failure_is_reported_by_spawn() {
        let r = ModelWorker::<u32, u32>::spawn("t", 1, || Err::<u32, _>("no such file"));
        assert_eq!(r.err(), Some("no such file"));
    }

    #[tokio::test]
    async fn queue_waits_are_recorded_for_each_job_run() {
        struct Waits(std::sync::Mutex<Vec<f64>>);
        impl metrics::HistogramFn for Waits {
            fn record(&self, value: f64) {
                self.0.lock().unwrap().push(value);
            }
        }
        let waits = Arc::new(Waits(Default::default()));
        let w = ModelWorker::<u32, u32>::spawn("t", 2, || Ok::<_, ()>(1)).unwrap();
        // Set through a clone: the worker and all its clones share the histogram.
        w.clone()
            .observe_queue_wait(metrics::Histogram::from_arc(waits.clone()));
        assert_eq!(w.run(|m| *m + 1).await.unwrap(), 2);
        assert_eq!(w.run(|m| *m + 2).await.unwrap(), 3);
        let got = waits.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "one wait per job run: {got:?}");
        assert!(got.iter().all(|s| s.is_finite() && *s >= 0.0));
    }

    #[tokio::test]
    async fn panic_in_a_job_does_not_stop_the_worker() {
        let w = ModelWorker::<u32, u32>::spawn("t", 2, || Ok::<_, ()>(41)).unwrap();
        let err = w.run(|_| panic!("boom")).await.unwrap_err();
        assert!(matches!(err, WorkerError::Panicked(..)));
        assert_eq!(
            w.run(|m| {
                *m += 1;
                *m
            })
            .await
            .unwrap(),
            42
        );
    }

    /// A queued job whose caller stopped waiting is never run, and counted; a running job sees
    /// its caller go through `cancelled()`.
    #[tokio::test]
    async fn jobs_whose_caller_has_gone_are_skipped_or_see_cancellation() {
        let (gate_tx, gate_rx) = std_mpsc::channel::<()>();
        let gate_rx = std::sync::Mutex::new(gate_rx);
        let (seen_tx, seen_rx) = std_mpsc::channel::<bool>();
        let w = ModelWorker::<u32, u32>::spawn("t", 4, || Ok::<_, ()>(0)).unwrap();
        // Job 1 holds the thread until the gate opens, then reports whether it was cancelled.
        let w1 = w.clone();
        let first = tokio::spawn(async move {
            w1.run(move |_| {
                gate_rx.lock().unwrap().recv().unwrap();
                let _ = seen_tx.send(cancelled());
                1
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Job 2 queues behind it; its caller gives up before it starts.
        let ran = Arc::new(AtomicBool::new(false));
        let ran2 = ran.clone();
        let w2 = w.clone();
        let second = tokio::spawn(async move {
            w2.run(move |m| {
                ran2.store(true, Ordering::SeqCst);
                *m
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        second.abort();
        assert!(second.await.unwrap_err().is_cancelled());
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let skipped_before = skipped_jobs();
        gate_tx.send(()).unwrap();
        assert!(seen_rx.recv().unwrap(), "the running job saw its caller go");
        // The worker is free again, and job 2 never ran.
        assert_eq!(w.run(|m| *m + 7).await.unwrap(), 7);
        assert!(!ran.load(Ordering::SeqCst));
        assert!(skipped_jobs() > skipped_before);
    }

    #[tokio::test]
    async fn full_queue_refuses_work() {
        let (gate_tx, gate_rx) = std_mpsc::channel::<()>();
        let gate_rx = std::sync::Mutex::new(gate_rx);
        let w = ModelWorker::<(), ()>::spawn("t", 1, || Ok::<_, ()>(())).unwrap();
        // First job blocks the thread, second fills the queue, third is refused.
        let w1 = w.clone();
        let first = tokio::spawn(async move {
            w1.run(move |_| {
                gate_rx.lock().unwrap().recv().unwrap();
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let w2 = w.clone();
        let second = tokio::spawn(async move { w2.run(|_| ()).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(w.run(|_| ()).await, Err(WorkerError::Busy("t")));
        gate_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
    }
}
