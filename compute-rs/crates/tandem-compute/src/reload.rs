//! Values loaded from files and reloaded when a file changes (TLS
//! certificates and keys, token files): rotation with no restart.
//!
//! Every [`RELOAD_INTERVAL`] the files are read again (each is small and
//! bounded by [`MAX_FILE_BYTES`]) and compared with what was read last time.
//! Comparing contents rather than mtimes catches a replacement within the
//! same timestamp tick, an atomic rename and a Kubernetes secret's symlink
//! swap alike. When they differ the value is built anew and swapped in for
//! later connections and calls; when that fails (a half-written file, a key
//! that does not match its certificate) the error is logged, the previous
//! value stays, and the next change is tried again.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::pool::run_blocking;

/// How often watched files are read again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The largest certificate, key, CA bundle or token file read (1 MiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// One file a value is loaded from: the flag that names it, for messages,
/// and its path.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub flag: &'static str,
    pub path: PathBuf,
}

/// The current value; cheap to clone, every clone sees the reloads.
#[derive(Debug)]
pub struct Reloading<T> {
    current: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Reloading { current: self.current.clone() }
    }
}

impl<T> Reloading<T> {
    /// A value that never changes (unit tests).
    pub fn fixed(value: T) -> Self {
        Reloading { current: Arc::new(RwLock::new(Arc::new(value))) }
    }

    /// The value as last loaded.
    pub fn current(&self) -> Arc<T> {
        // A poisoned lock still holds a whole Arc: the swap cannot panic half-way.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.current.write() {
            Ok(mut g) => *g = value,
            Err(p) => *p.into_inner() = value,
        }
    }
}

/// Reads `source` whole, refusing a file over [`MAX_FILE_BYTES`]; the error
/// names the flag, the path and the limit.
pub(crate) fn read(source: &Source) -> Result<Vec<u8>, String> {
    let Source { flag, path } = source;
    let what = |e: &dyn std::fmt::Display| format!("{flag} {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| what(&e))?;
    let mut buf = Vec::new();
    // Bounded by the take (read_capped is for op output and needs an op's Ctx).
    #[allow(clippy::disallowed_methods)]
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).map_err(|e| what(&e))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(what(&format_args!("larger than the limit of {MAX_FILE_BYTES} bytes")));
    }
    Ok(buf)
}

fn read_all(sources: &[Source]) -> Result<Vec<Vec<u8>>, String> {
    sources.iter().map(read).collect()
}

/// Loads a value from `sources` with `load` (an error names the flag and
/// the file: the server does not start), then watches them: see the module
/// docs. `what` labels the log lines and the `tandem_compute_reloads_total`
/// metric. The watcher runs on the current Tokio runtime and ends once every
/// clone of the returned value is gone.
pub(crate) fn watch<T, F>(
    what: &'static str,
    sources: Vec<Source>,
    metrics: Metrics,
    load: F,
) -> Result<Reloading<T>, String>
where
    T: Send + Sync + 'static,
    F: Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync + 'static,
{
    let contents = read_all(&sources)?;
    let value = Reloading::fixed(load(&contents)?);
    let weak = Arc::downgrade(&value.current);
    tokio::spawn(poll(what, sources, metrics, Arc::new(load), weak, Ok(contents)));
    Ok(value)
}

async fn poll<T, F>(
    what: &'static str,
    sources: Vec<Source>,
    metrics: Metrics,
    load: Arc<F>,
    weak: Weak<RwLock<Arc<T>>>,
    mut last: Result<Vec<Vec<u8>>, String>,
) where
    T: Send + Sync + 'static,
    F: Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync + 'static,
{
    let sources = Arc::new(sources);
    loop {
        tokio::time::sleep(RELOAD_INTERVAL).await;
        if weak.strong_count() == 0 {
            return;
        }
        // File reads and parsing (PEM, keys) off the async threads.
        let s = sources.clone();
        let Ok(now) = run_blocking(None, move || Ok(read_all(&s))).await else { continue };
        if now == last {
            continue;
        }
        let loaded = match &now {
            Err(e) => Err(e.clone()),
            Ok(contents) => {
                let (l, c) = (load.clone(), contents.clone());
                run_blocking(None, move || Ok(l(&c))).await.unwrap_or_else(|e| Err(e.to_string()))
            }
        };
        let files = paths(&sources);
        match loaded {
            Err(e) => {
                metrics.reloads.with_label_values(&[what, "error"]).inc();
                tracing::error!(what, files = %files, error = %e, "reload failed: keeping the previous {what}");
            }
            Ok(value) => {
                let Some(current) = weak.upgrade() else { return };
                Reloading { current }.set(value);
                metrics.reloads.with_label_values(&[what, "ok"]).inc();
                tracing::info!(what, files = %files, "reloaded {what}");
            }
        }
        last = now;
    }
}

fn paths(sources: &[Source]) -> String {
    sources.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>().join(",")
}
