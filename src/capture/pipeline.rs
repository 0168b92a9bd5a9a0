//! Runs [`process`] off the async runtime, a bounded number at a time, and contains decoder
//! panics.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{CaptureError, ImageKind, Limits, Processed, process};

/// Cheap to clone: every clone shares one set of permits.
#[derive(Clone, Debug)]
pub struct Pipeline {
    limits: Limits,
    permits: Arc<Semaphore>,
}

impl Pipeline {
    /// `concurrency` is how many images may be decoding at once (at least one). Each decode can
    /// hold up to the pixel budget of [`Limits`] in memory, so this bounds the memory uploads can
    /// take as much as the CPU.
    pub fn new(limits: Limits, concurrency: usize) -> Self {
        Self {
            limits,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// [`process`] on the blocking pool. Waits for a permit first, so a burst of uploads queues
    /// here instead of filling the blocking pool and memory. `bytes` is anything that owns the
    /// upload (`Bytes` from the multipart body, a `Vec<u8>`, an `Arc<[u8]>`) so it is not copied.
    pub async fn process<B>(&self, bytes: B, kind: ImageKind) -> Result<Processed, CaptureError>
    where
        B: AsRef<[u8]> + Send + 'static,
    {
        let limits = self.limits;
        self.run(move || process(bytes.as_ref(), kind, &limits))
            .await
    }

    /// The permit-and-contain logic, separate from [`process`] so tests can inject a job that
    /// panics or records how many run at once.
    async fn run<T, F>(&self, job: F) -> Result<T, CaptureError>
    where
        F: FnOnce() -> Result<T, CaptureError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| CaptureError::Internal("capture pipeline closed".into()))?;
        let task = tokio::task::spawn_blocking(move || {
            // The permit lives in the blocking task, not in this future: if the upload request is
            // cancelled, the decode still runs to its end and its permit is released only then,
            // so the bound holds for the work actually running.
            let _permit = permit;
            // The decoders parse hostile input; a panic in one must refuse this image, not bring
            // down the process or poison anything shared. Nothing is shared with the job but what
            // it owns, so observing it after an unwind is sound.
            catch_unwind(AssertUnwindSafe(job))
        });
        match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(payload)) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %message, "image decoder panicked");
                Err(CaptureError::DecoderPanic)
            }
            // catch_unwind leaves only cancellation at runtime shutdown to land here (or a panic,
            // were the crate ever built with panic = "abort", when nothing would land anywhere).
            Err(e) if e.is_panic() => Err(CaptureError::DecoderPanic),
            Err(e) => Err(CaptureError::Internal(format!("capture task: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::testimg;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn processes_on_the_blocking_pool() {
        let pipeline = Pipeline::new(Limits::default(), 2);
        let bytes = testimg::encode(&testimg::scene(400, 300), ImageKind::Webp);
        let p = pipeline
            .process(axum::body::Bytes::from(bytes), ImageKind::Webp)
            .await
            .unwrap();
        assert_eq!((p.width, p.height), (400, 300));
        let err = pipeline
            .process(b"\x89PNG\r\n\x1a\nnot really".to_vec(), ImageKind::Png)
            .await
            .unwrap_err();
        assert!(matches!(err, CaptureError::Corrupt(_)));
    }

    #[tokio::test]
    async fn a_panicking_decoder_becomes_decode_failed() {
        let pipeline = Pipeline::new(Limits::default(), 1);
        let err = pipeline
            .run(|| -> Result<(), CaptureError> { panic!("decoder bug on hostile input") })
            .await
            .unwrap_err();
        assert_eq!(err, CaptureError::DecoderPanic);
        assert_eq!(err.code(), "decode_failed");
        // The permit came back and the pipeline still works.
        assert_eq!(pipeline.run(|| Ok(7)).await, Ok(7));
    }

    #[tokio::test]
    async fn the_semaphore_bounds_concurrency() {
        for permits in [1usize, 2] {
            let pipeline = Pipeline::new(Limits::default(), permits);
            let running = Arc::new(AtomicUsize::new(0));
            let max_seen = Arc::new(AtomicUsize::new(0));
            let jobs = (0..6).map(|_| {
                let (running, max_seen) = (Arc::clone(&running), Arc::clone(&max_seen));
                let pipeline = pipeline.clone();
                async move {
                    pipeline
                        .run(move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            max_seen.fetch_max(now, Ordering::SeqCst);
                            // Real blocking work, long enough that unbounded jobs would overlap.
                            std::thread::sleep(Duration::from_millis(30));
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .await
                }
            });
            let results = futures_util::future::join_all(jobs).await;
            assert!(results.iter().all(Result::is_ok));
            assert_eq!(
                max_seen.load(Ordering::SeqCst),
                permits,
                "permits {permits}"
            );
        }
    }

    #[test]
    fn zero_concurrency_still_makes_progress() {
        let pipeline = Pipeline::new(Limits::default(), 0);
        assert_eq!(pipeline.permits.available_permits(), 1);
    }
}
