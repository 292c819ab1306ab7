//! What a pipelined call (`Client.call_async`) leaves behind while it is under way: its
//! client's queue ([`Pipeline`]), its place in it ([`Queued`]), whether its callback is still due
//! ([`Ticket`]), and the handle Python holds ([`PendingCall`]). `pipeline.rs` sends the calls;
//! this holds no client, so the client handle can own its queue.
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;

use crate::batch::Batcher;
use crate::proto::CallRequest;

/// One client's pipelined calls: the queue, and whether its server has answered a `CallBatch`.
#[derive(Debug, Default)]
pub struct Pipeline {
    pub(crate) queue: Batcher<Queued>,
    /// Until a batch was answered, its requests are kept to be sent singly after an UNIMPLEMENTED.
    pub(crate) batches_answered: AtomicBool,
}

/// A call waiting in the queue or on the wire.
#[derive(Debug)]
pub struct Queued {
    pub(crate) request: CallRequest,
    pub(crate) done: Py<PyAny>,
    pub(crate) ticket: Arc<Ticket>,
}

/// Whether a call's callback is still due: set once, by its completion or its cancellation.
#[derive(Debug, Default)]
pub struct Ticket(AtomicU8);

const PENDING: u8 = 0;
const SETTLED: u8 = 1;
const CANCELLED: u8 = 2;

impl Ticket {
    /// Claims the callback for the completion; false when the call was cancelled.
    pub(crate) fn settle(&self) -> bool {
        self.0.compare_exchange(PENDING, SETTLED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Withdraws the callback; false when it already ran.
    pub fn cancel(&self) -> bool {
        self.0.compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    pub fn is_over(&self) -> bool {
        self.0.load(Ordering::Acquire) != PENDING
    }
}

impl Pipeline {
    /// Takes a call out of the queue if it is still there (`PendingCall.cancel`).
    pub fn withdraw(&self, id: u64) {
        drop(self.queue.cancel(id));
    }
}

/// A call sent by `Client.call_async`: `cancel()` abandons it (its callback is never called).
#[pyclass(frozen, module = "jac_splice._native", name = "PendingCall")]
#[derive(Debug)]
pub struct PendingCall {
    ticket: Arc<Ticket>,
    how: How,
}

/// How the call travels, which decides what cancelling it can take back.
#[derive(Debug)]
enum How {
    /// Alone, as a task of its own: aborted, which cancels the request.
    Task(tokio::task::AbortHandle),
    /// Waiting in the batch queue under `id`: taken out while still there; once sent it shares
    /// its request with other calls, which runs to its end.
    Queue { pipeline: Arc<Pipeline>, id: u64 },
}

impl PendingCall {
    pub(crate) fn task(ticket: Arc<Ticket>, task: tokio::task::AbortHandle) -> Self {
        Self { ticket, how: How::Task(task) }
    }

    pub(crate) fn queued(ticket: Arc<Ticket>, pipeline: Arc<Pipeline>, id: u64) -> Self {
        Self { ticket, how: How::Queue { pipeline, id } }
    }
}

#[pymethods]
impl PendingCall {
    /// Abandons the call: `done` is never called. A call still queued is never sent; one on
    /// the wire alone is cancelled, one in a batch runs on (the module server may already run
    /// it either way). Does nothing once it has completed.
    fn cancel(&self) {
        if !self.ticket.cancel() {
            return;
        }
        match &self.how {
            How::Task(task) => task.abort(),
            How::Queue { pipeline, id } => pipeline.withdraw(*id),
        }
    }

    /// Whether it has completed (or was cancelled).
    #[getter]
    fn finished(&self) -> bool {
        self.ticket.is_over()
    }
}
