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
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the flag: the work stops at its next [`Ctx::checkpoint`].
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether [`CancelFlag::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What an op may look at besides its input and params: the limits, and
/// whether it should stop ([`Ctx::checkpoint`]).
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    /// The limits of the registry running the op.
    pub limits: &'a Limits,
    /// Set when the call is gone: the client cancelled or left, its deadline
    /// passed, or the server's drain timeout cut it off.
    pub cancel: Option<&'a CancelFlag>,
    /// The call's deadline (gRPC `grpc-timeout`), if it has one.
    pub deadline: Option<Instant>,
    /// The job's attempt number (1-based; 0 for direct calls).
    pub attempt: u32,
}

impl<'a> Ctx<'a> {
    /// A context with no cancellation and no deadline.
    pub fn new(limits: &'a Limits) -> Self {
        Ctx { limits, cancel: None, deadline: None, attempt: 0 }
    }

    /// Fails with `Cancelled` or `Timeout` when the work should stop. Cheap
    /// (an atomic load and a clock read): call it between chunks of work
    /// (about every millisecond; [`crate::ops::CHUNK`] of input) and return
    /// its error with `?`. A blocking thread cannot be stopped any other
    /// way: an op that never calls it holds its pool worker to the end.
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
