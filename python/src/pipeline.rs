//! Pipelined calls (`Client.call_async`, behind `jac_splice.spawn` and `jac_splice.acall`): each
//! goes through its client's [`batch`] queue, so a burst of them travels as a few `CallBatch`
//! requests (one blocking hop and one GIL acquisition per batch on the module server) instead of
//! one `Call` each. Requests run as tasks on the shared runtime over the pooled HTTP/2 channels;
//! the completions of one request call back into Python under one `Python::attach`.
//!
//! A call keeps the route semantics of a single `Call`: the session's route (a direct session's
//! follows its access), its timeout counted from when it was submitted, and one more attempt of
//! a direct session's request that never reached the served code. A server that answers
//! `CallBatch` with UNIMPLEMENTED (older than it) gets single calls from this client from then on.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use pyo3::prelude::*;
use tonic::{Code, Status};

use crate::batch::{Batch, Entry, Submitted};
use crate::client::{self, Route};
use crate::deadline;
use crate::errors::client_to_pyerr;
use crate::handle::Client;
use crate::pending::{PendingCall, Queued, Ticket};
use crate::proto::{call_result, CallBatchResponse, CallFailure, CallRequest, ValueResponse};
use crate::runtime::rt;

type Response = Result<ValueResponse, client::Error>;

/// Largest request a direct session's call keeps a copy of, to send it once more (batched calls
/// are all smaller, see `batch::Limits::alone_over`).
const RETRY_COPY_LIMIT: usize = 64 << 10;

/// How long a request may hold its place on the wire before the calls waiting for it go alone
/// (see `watched`): far longer than a batch of cheap calls takes.
const STALL: Duration = Duration::from_millis(20);

/// Sends `request` (now, or in the next batch); `done(ok, value)` is called attached when it
/// completes, unless the returned `PendingCall` was cancelled first.
pub fn submit(client: Py<Client>, request: CallRequest, timeout: Option<Duration>, done: Py<PyAny>) -> PendingCall {
    let pipeline = client.get().pipeline.clone();
    let ticket = Arc::new(Ticket::default());
    let size = request.encoded_len();
    let queued = Queued { request, done, ticket: ticket.clone() };
    match pipeline.queue.submit(queued, size, timeout) {
        Submitted::Alone(queued) => {
            let task = alone(Arc::new(client), queued, timeout, Instant::now());
            PendingCall::task(ticket, task)
        }
        Submitted::Now(batch) => PendingCall::task(ticket, launch(Arc::new(client), batch)),
        Submitted::Queued(id) => PendingCall::queued(ticket, pipeline, id),
    }
}

/// The route of the session now (a direct one may ask jac-orc for access, within the timeout).
async fn route_of(c: &Client, timeout: Option<Duration>, since: Instant) -> Result<Arc<Route>, client::Error> {
    match &c.direct {
        Some(d) => match deadline::bounded_since(timeout, since, async { Ok(d.route().await) }).await {
            Ok(routed) => routed,
            Err(expired) => Err(expired.into()),
        },
        None => Ok(c.route.clone()),
    }
}

/// What is left of `timeout` counted from `since`; an error once nothing is.
fn left(timeout: Option<Duration>, since: Instant) -> Result<Option<Duration>, Status> {
    match timeout {
        None => Ok(None),
        Some(t) => match t.checked_sub(since.elapsed()) {
            Some(left) if !left.is_zero() => Ok(Some(left)),
            _ => Err(deadline::expired(t)),
        },
    }
}

/// One attempt of `send` on the session's current route, within what is left of the timeout.
async fn on_route<T, F, Fut>(
    c: &Client,
    timeout: Option<Duration>,
    since: Instant,
    send: F,
) -> (Option<Arc<Route>>, Result<T, client::Error>)
where
    F: FnOnce(Arc<Route>, tonic::transport::Channel, Option<Duration>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let route = match route_of(c, timeout, since).await {
        Ok(route) => route,
        Err(e) => return (None, Err(e)),
    };
    let sent = async {
        let within = left(timeout, since)?;
        let channel = route.connection().channel()?;
        send(route.clone(), channel, within).await
    };
    let response = deadline::bounded_since(timeout, since, sent).await.map_err(client::Error::from);
    (Some(route), response)
}

/// One attempt of a single `Call` on the session's current route.
async fn attempt(
    c: &Client,
    request: CallRequest,
    timeout: Option<Duration>,
    since: Instant,
) -> (Option<Arc<Route>>, Response) {
    on_route(c, timeout, since, |route, channel, within| async move {
        route.call_within(channel, false, request, within).await
    })
    .await
}

/// A single `Call`, sent once more when a direct session's first attempt never reached the
/// served code (small requests only: a large one is not copied for that).
async fn call_one(
    c: &Client,
    request: CallRequest,
    timeout: Option<Duration>,
    since: Instant,
) -> (Option<Arc<Route>>, Response) {
    let retry = (c.direct.is_some() && request.encoded_len() <= RETRY_COPY_LIMIT).then(|| request.clone());
    let (route, response) = attempt(c, request, timeout, since).await;
    match (retry, &response) {
        (Some(copy), Err(e)) if again(c, e) => attempt(c, copy, timeout, since).await,
        _ => (route, response),
    }
}

/// One attempt of a `CallBatch` on the session's current route.
async fn attempt_batch(
    c: &Client,
    calls: Vec<CallRequest>,
    timeout: Option<Duration>,
    since: Instant,
) -> (Option<Arc<Route>>, Result<CallBatchResponse, client::Error>) {
    on_route(c, timeout, since, |route, channel, within| async move { route.call_batch(channel, calls, within).await })
        .await
}

/// Sends a call alone (too large to batch, or the server has no `CallBatch`), not counted in
/// the queue's requests on the wire.
fn alone(
    client: Arc<Py<Client>>,
    queued: Queued,
    timeout: Option<Duration>,
    since: Instant,
) -> tokio::task::AbortHandle {
    let task = rt().spawn(async move {
        let c = client.get();
        let Queued { request, done, ticket } = queued;
        let (route, response) = call_one(c, request, timeout, since).await;
        Python::attach(|py| settle_one(py, c, route.as_deref(), response, &done, &ticket));
    });
    task.abort_handle()
}

/// A request's place on the wire among the queue's: given back (sending what queued meanwhile)
/// when the request returns, when it stalls, or when its task is aborted or ends otherwise.
struct Slot {
    client: Arc<Py<Client>>,
    held: bool,
}

impl Slot {
    fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            for batch in self.client.get().pipeline.queue.finished() {
                launch(self.client.clone(), batch);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// `fut`, but once it has run for [`STALL`] the calls waiting for its place go alone: the
/// served code is slow, and batching slow calls would run them one after another (and a call
/// could wait for one queued behind it) where single calls run side by side.
async fn watched<F: std::future::Future>(client: &Arc<Py<Client>>, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        out = &mut fut => return out,
        () = tokio::time::sleep(STALL) => {}
    }
    for entry in client.get().pipeline.queue.stall() {
        alone(client.clone(), entry.item, entry.timeout, entry.queued);
    }
    fut.await
}

/// Sends a batch taken from the queue (a lone call as a plain `Call`); when it returns, the
/// calls that queued meanwhile go next, then the callbacks run. Aborting the task (a lone call
/// cancelled) cancels the request and still gives its place back.
fn launch(client: Arc<Py<Client>>, batch: Batch<Queued>) -> tokio::task::AbortHandle {
    let task = rt().spawn(async move {
        let mut slot = Slot { client: client.clone(), held: true };
        let c = client.get();
        let Batch { mut entries, timeout, since } = batch;
        if entries.len() == 1 {
            let Queued { request, done, ticket } = entries.pop().expect("one entry").item;
            let (route, response) = watched(&client, call_one(c, request, timeout, since)).await;
            slot.release();
            Python::attach(|py| settle_one(py, c, route.as_deref(), response, &done, &ticket));
            return;
        }
        let calls: Vec<CallRequest> = entries.iter_mut().map(|e| std::mem::take(&mut e.item.request)).collect();
        let keep = c.direct.is_some() || !c.pipeline.batches_answered.load(Ordering::Acquire);
        let kept = keep.then(|| calls.clone());
        let sent = async {
            let (route, response) = attempt_batch(c, calls, timeout, since).await;
            match (&response, &kept) {
                (Err(e), Some(kept)) if again(c, e) => attempt_batch(c, kept.clone(), timeout, since).await,
                _ => (route, response),
            }
        };
        let (route, response) = watched(&client, sent).await;
        match &response {
            Ok(_) => c.pipeline.batches_answered.store(true, Ordering::Release),
            Err(client::Error::Rpc(status)) if status.code() == Code::Unimplemented => {
                let queued = c.pipeline.queue.fall_back();
                if let Some(kept) = kept {
                    resend_alone(&client, entries, kept, queued, timeout, since);
                    return;
                }
                // Its requests are gone (the server answered batches before): these calls fail,
                // the queued ones and later ones go alone.
                for entry in queued {
                    alone(client.clone(), entry.item, entry.timeout, entry.queued);
                }
            }
            Err(_) => {}
        }
        slot.release();
        Python::attach(|py| settle_batch(py, c, route.as_deref(), response, entries));
    });
    task.abort_handle()
}

/// After a failed request of a direct session: whether to send it once more (it never reached
/// the served code); forgets an access the failure puts in doubt either way.
fn again(c: &Client, e: &client::Error) -> bool {
    c.direct.as_ref().is_some_and(|d| d.failed(e))
}

/// The server does not know `CallBatch`: the batch's calls (`requests`, in its order), then the
/// ones that were queued behind it, go alone, as every later call of this client will.
fn resend_alone(
    client: &Arc<Py<Client>>,
    entries: Vec<Entry<Queued>>,
    requests: Vec<CallRequest>,
    queued: Vec<Entry<Queued>>,
    timeout: Option<Duration>,
    since: Instant,
) {
    for (entry, request) in entries.into_iter().zip(requests) {
        alone(client.clone(), Queued { request, ..entry.item }, timeout, since);
    }
    for entry in queued {
        alone(client.clone(), entry.item, entry.timeout, entry.queued);
    }
}

/// Calls `done` with the call's value or exception, unless the call was cancelled.
fn settle_one(
    py: Python<'_>,
    c: &Client,
    route: Option<&Route>,
    response: Response,
    done: &Py<PyAny>,
    ticket: &Ticket,
) {
    if !ticket.settle() {
        return;
    }
    let outcome = match (route, response) {
        (Some(route), response) => c.decode_response(py, route, response),
        (None, Err(e)) => Err(client_to_pyerr(py, &e, c.peer())),
        (None, Ok(_)) => unreachable!("a response always has its route"),
    };
    call_back(py, done, outcome);
}

fn call_back(py: Python<'_>, done: &Py<PyAny>, outcome: PyResult<Py<PyAny>>) {
    let called = match outcome {
        Ok(value) => done.call1(py, (true, value)),
        Err(err) => done.call1(py, (false, err.into_value(py))),
    };
    if let Err(err) = called {
        err.write_unraisable(py, None);
    }
}

/// The status a failed call of a batch would have had as a single `Call`.
fn failure_status(failure: CallFailure) -> Status {
    Status::with_details(Code::from_i32(failure.code), failure.message, failure.details)
}

/// Settles every call of a batch, in order, under one attachment.
fn settle_batch(
    py: Python<'_>,
    c: &Client,
    route: Option<&Route>,
    response: Result<CallBatchResponse, client::Error>,
    entries: Vec<Entry<Queued>>,
) {
    let n = entries.len();
    let response = response.and_then(|r| {
        if r.results.len() == n {
            Ok(r)
        } else {
            let message = format!("the module server answered {} results for {n} calls", r.results.len());
            Err(client::Error::Rpc(Status::internal(message)))
        }
    });
    let (route, results) = match (route, response) {
        (Some(route), Ok(r)) => (route, r.results),
        (route, Err(e)) => {
            // The whole request failed: every call fails as its own `Call` would have.
            let peer = route.map_or_else(|| c.peer(), |r| c.peer_on(r));
            for entry in entries {
                if entry.item.ticket.settle() {
                    call_back(py, &entry.item.done, Err(client_to_pyerr(py, &e, peer)));
                }
            }
            return;
        }
        (None, Ok(_)) => unreachable!("a response always has its route"),
    };
    for (entry, result) in entries.into_iter().zip(results) {
        let response = match result.result {
            Some(call_result::Result::Response(value)) => Ok(value),
            Some(call_result::Result::Failure(failure)) => {
                let failed = client::Error::Rpc(failure_status(failure));
                // A direct session forgets an access the failure puts in doubt, as after a `Call`
                // (it reached the served code, so it is not sent again).
                again(c, &failed);
                Err(failed)
            }
            None => Err(client::Error::Rpc(Status::internal("empty result from the module server"))),
        };
        settle_one(py, c, Some(route), response, &entry.item.done, &entry.item.ticket);
    }
}
