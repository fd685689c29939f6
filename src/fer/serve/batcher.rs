//! Dynamic batching: faces from concurrent requests meet on one worker thread
//! that owns the model, and go to the GPU together.
//!
//! A request hands each of its faces to the worker over a bounded channel,
//! with a one-shot channel for the answer. The worker blocks for the first
//! face, then keeps collecting until it holds `max_batch` faces or `max_wait`
//! has passed since the first one, runs ONE batched inference, and answers
//! each face on its own one-shot channel (so answers cannot cross between
//! requests). A single thread means a single device queue: the GPU never sees
//! two inferences racing for it. With `max_batch` 1 every face is its own
//! inference (the baseline batching is measured against).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::fer::image_input::FACE_PIXELS;

/// How batches are formed.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    /// Most faces in one inference.
    pub max_batch: usize,
    /// Longest the first face of a batch waits for company.
    pub max_wait: Duration,
    /// Faces that may wait in the queue; past this, requests are turned away
    /// (503) instead of piling up without bound.
    pub queue: usize,
}

/// One batch: the pixels of `count` faces (48x48 u8 each, one after the
/// other) in, `count` x classes probabilities out.
pub trait Infer: FnMut(&[u8], usize) -> anyhow::Result<Vec<f32>> + Send + 'static {}
impl<F: FnMut(&[u8], usize) -> anyhow::Result<Vec<f32>> + Send + 'static> Infer for F {}

/// Why a face got no answer.
#[derive(Debug, PartialEq)]
pub enum ClassifyError {
    /// The queue is full.
    Busy,
    /// The worker is gone (the server is stopping, or it died).
    Stopped,
    /// The inference failed; the message says how.
    Failed(String),
}

/// What the worker has done, for the log line at shutdown and for tests.
#[derive(Default, Debug)]
pub struct Stats {
    pub batches: AtomicU64,
    pub faces: AtomicU64,
    pub largest_batch: AtomicU64,
}

impl Stats {
    fn record(&self, faces: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.faces.fetch_add(faces as u64, Ordering::Relaxed);
        self.largest_batch
            .fetch_max(faces as u64, Ordering::Relaxed);
    }

    /// "N faces in M batches (mean X, largest Y)".
    pub fn summary(&self) -> String {
        let batches = self.batches.load(Ordering::Relaxed);
        let faces = self.faces.load(Ordering::Relaxed);
        let mean = if batches == 0 {
            0.0
        } else {
            faces as f64 / batches as f64
        };
        format!(
            "{faces} faces in {batches} batches (mean {mean:.1}, largest {})",
            self.largest_batch.load(Ordering::Relaxed)
        )
    }
}

/// A face waiting for its answer.
struct Job {
    pixels: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<f32>, ClassifyError>>,
}

/// The requests' side of the worker: cheap to clone, one per handler.
#[derive(Clone)]
pub struct Batcher {
    jobs: SyncSender<Job>,
    pub stats: Arc<Stats>,
}

impl Batcher {
    /// Start the worker thread; it owns `infer` (and so the model) and stops
    /// when every `Batcher` clone is dropped.
    pub fn start(settings: BatchSettings, infer: impl Infer) -> anyhow::Result<Batcher> {
        let (jobs, queue) = mpsc::sync_channel(settings.queue.max(1));
        let stats = Arc::new(Stats::default());
        let worker_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("wgfer-gpu".into())
            .spawn(move || work(queue, settings, infer, &worker_stats))?;
        Ok(Batcher { jobs, stats })
    }

    /// The probabilities of each face (48x48 u8 pixels), in order. All the
    /// faces are queued before the first answer is awaited, so they can share
    /// a batch.
    pub async fn classify(&self, faces: Vec<Vec<u8>>) -> Result<Vec<Vec<f32>>, ClassifyError> {
        let mut answers = Vec::with_capacity(faces.len());
        for pixels in faces {
            debug_assert_eq!(pixels.len(), FACE_PIXELS);
            let (reply, answer) = oneshot::channel();
            self.jobs
                .try_send(Job { pixels, reply })
                .map_err(|e| match e {
                    TrySendError::Full(_) => ClassifyError::Busy,
                    TrySendError::Disconnected(_) => ClassifyError::Stopped,
                })?;
            answers.push(answer);
        }
        let mut probabilities = Vec::with_capacity(answers.len());
        for answer in answers {
            probabilities.push(answer.await.map_err(|_| ClassifyError::Stopped)??);
        }
        Ok(probabilities)
    }
}

/// The worker: batch after batch until every sender is gone.
fn work(queue: Receiver<Job>, settings: BatchSettings, mut infer: impl Infer, stats: &Stats) {
    while let Some(mut batch) = next_batch(&queue, settings.max_batch, settings.max_wait) {
        // A client that gave up (timed out, disconnected) needs no answer.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let faces: Vec<&[u8]> = batch.iter().map(|j| j.pixels.as_slice()).collect();
        let answers = run_batch(&faces, settings.max_batch, &mut infer);
        stats.record(batch.len());
        match answers {
            Ok(answers) => {
                for (job, p) in batch.into_iter().zip(answers) {
                    let _ = job.reply.send(Ok(p));
                }
            }
            Err(why) => {
                eprintln!("error: {why}");
                for job in batch {
                    let _ = job.reply.send(Err(ClassifyError::Failed(why.clone())));
                }
            }
        }
    }
}

/// One inference for `faces`, padded with blank faces to a bucket size: the
/// engine keeps its buffers per tensor size, so a handful of batch sizes
/// keeps its memory bounded where every size from 1 to max_batch would not.
/// The padding's answers are dropped.
fn run_batch(
    faces: &[&[u8]],
    max_batch: usize,
    infer: &mut impl Infer,
) -> Result<Vec<Vec<f32>>, String> {
    let padded = bucket(faces.len(), max_batch);
    let mut pixels = Vec::with_capacity(padded * FACE_PIXELS);
    for face in faces {
        pixels.extend_from_slice(face);
    }
    pixels.resize(padded * FACE_PIXELS, 0);
    // A panic in the inference must not take the worker (and with it every
    // later request) down: it fails this batch only.
    let probs = match catch_unwind(AssertUnwindSafe(|| infer(&pixels, padded))) {
        Ok(Ok(probs)) => probs,
        Ok(Err(e)) => return Err(format!("the inference failed: {e:#}")),
        Err(_) => return Err("the inference panicked".to_string()),
    };
    if probs.is_empty() || probs.len() % padded != 0 {
        return Err(format!(
            "the inference gave {} values for {padded} faces",
            probs.len()
        ));
    }
    let classes = probs.len() / padded;
    Ok(probs
        .chunks(classes)
        .take(faces.len())
        .map(<[f32]>::to_vec)
        .collect())
}

/// The batch size `count` faces are run at: the next power of two, or
/// `max_batch` when that is smaller.
fn bucket(count: usize, max_batch: usize) -> usize {
    count.next_power_of_two().min(max_batch).max(count)
}

/// Block for the first job, then gather more until there are `max_batch` or
/// `max_wait` has passed since the first. Jobs already queued join even when
/// the wait is over (under load a full batch forms without waiting). None
/// when every sender is gone and the queue is empty.
fn next_batch(queue: &Receiver<Job>, max_batch: usize, max_wait: Duration) -> Option<Vec<Job>> {
    let first = queue.recv().ok()?;
    let deadline = Instant::now() + max_wait;
    let mut batch = vec![first];
    while batch.len() < max_batch {
        let job = match queue.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match queue.recv_timeout(left) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        batch.push(job);
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A stand-in model: each face's "probabilities" are its first pixel and
    /// the batch size, so a test sees which answer went where and how the
    /// faces were grouped.
    fn echo(sizes: Arc<Mutex<Vec<usize>>>) -> impl Infer {
        move |pixels: &[u8], count: usize| {
            assert_eq!(pixels.len(), count * FACE_PIXELS);
            sizes.lock().unwrap().push(count);
            std::thread::sleep(Duration::from_millis(5));
            Ok(pixels
                .chunks(FACE_PIXELS)
                .flat_map(|face| [face[0] as f32, count as f32])
                .collect())
        }
    }

    fn settings(max_batch: usize, max_wait_ms: u64) -> BatchSettings {
        BatchSettings {
            max_batch,
            max_wait: Duration::from_millis(max_wait_ms),
            queue: 1024,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// 40 concurrent requests with distinct faces: each gets its own answer,
    /// and they share batches of at most `max_batch`.
    #[test]
    fn concurrent_faces_are_batched_and_answered_each_their_own() {
        let sizes = Arc::new(Mutex::new(vec![]));
        let batcher = Batcher::start(settings(8, 200), echo(Arc::clone(&sizes))).unwrap();
        let answers = runtime().block_on(async {
            let tasks: Vec<_> = (0..40u8)
                .map(|i| {
                    let b = batcher.clone();
                    tokio::spawn(async move { b.classify(vec![vec![i; FACE_PIXELS]]).await })
                })
                .collect();
            let mut out = vec![];
            for t in tasks {
                out.push(t.await.unwrap().unwrap());
            }
            out
        });
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a.len(), 1);
            assert_eq!(a[0][0], i as f32, "request {i} got another's answer");
        }
        let sizes = sizes.lock().unwrap();
        assert!(sizes.iter().sum::<usize>() >= 40, "{sizes:?}");
        assert!(
            sizes.iter().all(|&s| [1, 2, 4, 8].contains(&s)),
            "{sizes:?}"
        );
        // A 200 ms window with 40 faces arriving at once forms full batches.
        assert!(sizes.len() <= 10, "faces were not batched: {sizes:?}");
        assert_eq!(batcher.stats.faces.load(Ordering::Relaxed), 40);
    }

    #[test]
    fn batches_are_padded_to_a_few_sizes() {
        let sizes: Vec<usize> = (1..=12).map(|n| bucket(n, 12)).collect();
        assert_eq!(sizes, [1, 2, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12]);
        assert_eq!(bucket(1, 1), 1);
        assert_eq!(bucket(33, 64), 64);
    }

    /// Three faces run as a batch of four; the blank fourth's answer is dropped.
    #[test]
    fn padding_answers_are_dropped() {
        let sizes = Arc::new(Mutex::new(vec![]));
        let batcher = Batcher::start(settings(8, 100), echo(Arc::clone(&sizes))).unwrap();
        let faces: Vec<Vec<u8>> = (1..=3u8).map(|i| vec![i; FACE_PIXELS]).collect();
        let answers = runtime().block_on(batcher.classify(faces)).unwrap();
        assert_eq!(answers, [vec![1.0, 4.0], vec![2.0, 4.0], vec![3.0, 4.0]]);
        assert_eq!(*sizes.lock().unwrap(), [4]);
        assert_eq!(batcher.stats.faces.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn max_batch_one_runs_every_face_alone() {
        let sizes = Arc::new(Mutex::new(vec![]));
        let batcher = Batcher::start(settings(1, 50), echo(Arc::clone(&sizes))).unwrap();
        let faces: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; FACE_PIXELS]).collect();
        let answers = runtime().block_on(batcher.classify(faces)).unwrap();
        let firsts: Vec<f32> = answers.iter().map(|a| a[0]).collect();
        assert_eq!(firsts, [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(*sizes.lock().unwrap(), [1, 1, 1, 1, 1]);
    }

    /// A lone face does not wait longer than `max_wait` for company.
    #[test]
    fn a_lone_face_waits_at_most_max_wait() {
        let sizes = Arc::new(Mutex::new(vec![]));
        let batcher = Batcher::start(settings(64, 30), echo(Arc::clone(&sizes))).unwrap();
        let start = Instant::now();
        runtime()
            .block_on(batcher.classify(vec![vec![7; FACE_PIXELS]]))
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(*sizes.lock().unwrap(), [1]);
    }

    /// A failing or panicking inference fails its batch; the worker lives on.
    #[test]
    fn failures_are_reported_and_the_worker_survives() {
        let mut calls = 0;
        let infer = move |_: &[u8], count: usize| {
            calls += 1;
            match calls {
                1 => anyhow::bail!("device lost"),
                2 => panic!("bug"),
                _ => Ok(vec![0.5; count * 2]),
            }
        };
        let batcher = Batcher::start(settings(4, 0), infer).unwrap();
        let rt = runtime();
        let face = || vec![vec![1; FACE_PIXELS]];
        match rt.block_on(batcher.classify(face())) {
            Err(ClassifyError::Failed(m)) => assert!(m.contains("device lost"), "{m}"),
            other => panic!("{other:?}"),
        }
        match rt.block_on(batcher.classify(face())) {
            Err(ClassifyError::Failed(m)) => assert!(m.contains("panicked"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rt.block_on(batcher.classify(face())),
            Ok(vec![vec![0.5, 0.5]])
        );
    }

    /// A full queue turns requests away at once rather than growing.
    #[test]
    fn a_full_queue_answers_busy() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let worker_gate = Arc::clone(&gate);
        let infer = move |_: &[u8], count: usize| {
            drop(worker_gate.lock().unwrap());
            Ok(vec![1.0; count])
        };
        let s = BatchSettings {
            max_batch: 1,
            max_wait: Duration::ZERO,
            queue: 2,
        };
        let batcher = Batcher::start(s, infer).unwrap();
        let rt = runtime();
        // One face in the worker (blocked on the gate), two in the queue,
        // the fourth is refused.
        let face = || vec![0; FACE_PIXELS];
        let b = batcher.clone();
        let in_worker = rt.spawn(async move { b.classify(vec![face()]).await });
        std::thread::sleep(Duration::from_millis(200));
        let b = batcher.clone();
        let queued = rt.spawn(async move { b.classify(vec![face(), face()]).await });
        std::thread::sleep(Duration::from_millis(200));
        let refused = rt.block_on(batcher.classify(vec![face()]));
        assert_eq!(refused, Err(ClassifyError::Busy));
        drop(held);
        assert_eq!(rt.block_on(in_worker).unwrap().unwrap().len(), 1);
        let done = rt.block_on(queued).unwrap().unwrap();
        assert_eq!(done.len(), 2);
    }
}
