//! A model on its own OS thread, behind a bounded queue.
//!
//! Model compute (candle forward passes) is long, CPU-bound and stateful (KV caches), so it never
//! runs on the async runtime. [`ModelWorker::spawn`] starts one dedicated thread that *loads* the
//! model and then serves jobs one at a time; load failures come back to the caller before
//! `spawn` returns (the "ready" channel), so a bad model path fails start-up cleanly instead of
//! leaving a zombie worker. [`ModelWorker::run`] refuses work with [`WorkerError::Busy`] when the
//! queue is full instead of queueing without bound, and a panic inside one job is caught, reported
//! as [`WorkerError::Panicked`] for that job, and the thread goes on serving the next one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc as std_mpsc;

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
);

/// Cloneable async handle to a model that lives on a dedicated thread.
pub struct ModelWorker<M, Out> {
    name: &'static str,
    tx: mpsc::Sender<Job<M, Out>>,
}

impl<M, Out> Clone for ModelWorker<M, Out> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            tx: self.tx.clone(),
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
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || {
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
                while let Some((job, reply, span)) = rx.blocking_recv() {
                    let _entered = span.enter();
                    match catch_unwind(AssertUnwindSafe(|| job(&mut model))) {
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
            Ok(Ok(())) => Ok(Self { name, tx }),
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
        self.tx
            .try_send((Box::new(job), reply_tx, tracing::Span::current()))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WorkerError::Busy(self.name),
                mpsc::error::TrySendError::Closed(_) => WorkerError::Stopped(self.name),
            })?;
        reply_rx
            .await
            .map_err(|_| WorkerError::Panicked(self.name, "job aborted".into()))
    }

    /// Number of free slots in the queue (for readiness and metrics).
    pub fn free_slots(&self) -> usize {
        self.tx.capacity()
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
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

    #[tokio::test]
    async fn load_failure_is_reported_by_spawn() {
        let r = ModelWorker::<u32, u32>::spawn("t", 1, || Err::<u32, _>("no such file"));
        assert_eq!(r.err(), Some("no such file"));
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
