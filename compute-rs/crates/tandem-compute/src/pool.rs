//! The bounded CPU pool. At most `workers` jobs run at once (on blocking
//! threads, never on the async I/O threads) and at most `queue_depth` more
//! wait for a worker; past that a request is answered OVERLOADED at once.

use std::sync::Arc;

use tandem_core::{Error, catch_panic};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Suggested retry delay for OVERLOADED answers.
pub(crate) const RETRY_AFTER_MS: u64 = 100;

/// The pool: admission (running + waiting) and workers (running). Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Permits for running + waiting requests (workers + queue_depth).
    admission: Arc<Semaphore>,
    /// Permits for running requests (workers).
    workers: Arc<Semaphore>,
    n_workers: usize,
}

/// A request admitted to the pool and holding a worker.
#[derive(Debug)]
pub struct Slot {
    _admission: OwnedSemaphorePermit,
    _workers: Vec<OwnedSemaphorePermit>,
}

impl Slot {
    /// Number of workers held.
    pub fn width(&self) -> usize {
        self._workers.len()
    }
}

impl Pool {
    /// A pool of `workers` (at least 1) with room for `queue_depth` waiting
    /// requests.
    pub fn new(workers: usize, queue_depth: usize) -> Self {
        let workers = workers.max(1);
        Pool {
            admission: Arc::new(Semaphore::new(workers + queue_depth)),
            workers: Arc::new(Semaphore::new(workers)),
            n_workers: workers,
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.n_workers
    }

    /// Workers currently running something.
    pub fn busy(&self) -> usize {
        self.n_workers - self.workers.available_permits()
    }

    /// Admits a request to the pool (running or waiting), or fails
    /// OVERLOADED at once when workers and wait queue are all taken.
    pub fn try_admit(&self) -> Result<Admitted, Error> {
        self.admission
            .clone()
            .try_acquire_owned()
            .map(Admitted)
            .map_err(|_| Error::Overloaded { retry_after_ms: RETRY_AFTER_MS })
    }

    /// Waits for one worker; then grabs up to `want - 1` more idle workers
    /// without waiting (for batches).
    pub async fn wait_worker(&self, admitted: Admitted, want: usize) -> Result<Slot, Error> {
        let first = self.workers.clone().acquire_owned().await.map_err(|_| Error::ShuttingDown)?;
        let mut workers = vec![first];
        while workers.len() < want.max(1) {
            match self.workers.clone().try_acquire_owned() {
                Ok(p) => workers.push(p),
                Err(_) => break,
            }
        }
        Ok(Slot { _admission: admitted.0, _workers: workers })
    }
}

/// A request admitted to the pool, not yet holding a worker.
#[derive(Debug)]
pub struct Admitted(OwnedSemaphorePermit);

/// Runs `f` on a blocking thread; a panic becomes `Error::Internal`
/// ([`tandem_core::catch_panic`]; the process's panic hook logs it). The
/// slot (if given) is released only when `f` returns, even if the caller
/// stopped waiting.
pub async fn run_blocking<T, F>(slot: Option<Slot>, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    // The one place CPU work leaves the async threads (clippy.toml bans
    // spawn_blocking elsewhere).
    #[allow(clippy::disallowed_methods)]
    let handle = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        catch_panic(f)
    });
    handle.await.map_err(|e| Error::Internal { detail: format!("worker task failed: {e}") })?
}
