//! Cancellation and deadlines for CPU work. Dropping a future never stops a
//! blocking thread, so long ops call [`Ctx::checkpoint`] between chunks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::limits::Limits;

/// A flag that the caller sets to stop the work (e.g. when the gRPC call is
/// dropped). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What an op may look at besides its input and params.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    pub limits: &'a Limits,
    pub cancel: Option<&'a CancelFlag>,
    pub deadline: Option<Instant>,
    /// The job's attempt number (1-based; 0 for direct calls).
    pub attempt: u32,
}

impl<'a> Ctx<'a> {
    /// A context with no cancellation and no deadline.
    pub fn new(limits: &'a Limits) -> Self {
        Ctx { limits, cancel: None, deadline: None, attempt: 0 }
    }

    /// Fails with `Cancelled` or `Timeout` when the work should stop.
    pub fn checkpoint(&self) -> Result<()> {
        if self.cancel.is_some_and(CancelFlag::is_cancelled) {
            return Err(Error::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::Timeout { started: true });
        }
        Ok(())
    }
}
