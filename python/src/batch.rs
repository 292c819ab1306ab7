//! The auto-batching queue behind pipelined calls (`jac_splice.spawn`, `acall`), with no Python
//! and no I/O in it: it only decides what goes on the wire when. A call is sent at once while
//! fewer than [`Limits::in_flight`] requests of its client are on the wire; otherwise it waits,
//! and each request that returns takes everything waiting (up to [`Limits::max_calls`] calls
//! and [`Limits::max_bytes`]) as the next `CallBatch`. So a burst of calls costs a few requests,
//! each run by the module server in one GIL acquisition, while a lone call is not delayed.
//!
//! A call larger than [`Limits::alone_over`] goes alone and at once (copying it into a batch
//! would cost more than its request), and calls with different timeouts never share a batch
//! (a batch has one deadline). While a request on the wire is stalled ([`Batcher::stall`]: the
//! served code is slow, and the calls of a batch run one after another) calls go alone, until
//! a request returns. After [`Batcher::fall_back`] (the server predates `CallBatch`) every call
//! goes alone.
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How the queue batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests of one client on the wire at once before calls wait for a batch.
    pub in_flight: usize,
    /// Most calls in one batch (the module server accepts up to `wire::MAX_BATCH_CALLS`).
    pub max_calls: usize,
    /// Most encoded request bytes in one batch (one call may exceed it alone).
    pub max_bytes: usize,
    /// A call whose request encodes larger than this never waits and never shares a request.
    pub alone_over: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { in_flight: 2, max_calls: 512, max_bytes: 4 << 20, alone_over: 64 << 10 }
    }
}

/// One call in the queue.
#[derive(Debug)]
pub struct Entry<T> {
    pub id: u64,
    pub item: T,
    size: usize,
    pub timeout: Option<Duration>,
    /// When it was submitted: its timeout counts from then.
    pub queued: Instant,
}

/// Calls to send as one request (a lone call as a plain `Call`).
#[derive(Debug)]
pub struct Batch<T> {
    pub entries: Vec<Entry<T>>,
    /// The calls' common timeout.
    pub timeout: Option<Duration>,
    /// When the oldest call was submitted: the batch's timeout counts from it.
    pub since: Instant,
}

impl<T> Batch<T> {
    fn of(entries: Vec<Entry<T>>) -> Self {
        let timeout = entries[0].timeout;
        let since = entries.iter().map(|e| e.queued).min().unwrap_or_else(Instant::now);
        Batch { entries, timeout, since }
    }
}

/// What to do with a submitted call.
#[derive(Debug)]
pub enum Submitted<T> {
    /// Send it now as a request of its own, counted as in flight: report its end with
    /// [`Batcher::finished`].
    Now(Batch<T>),
    /// Send it now on its own, not counted (too large, or the server has no `CallBatch`).
    Alone(T),
    /// It waits in the queue under this id (for [`Batcher::cancel`]).
    Queued(u64),
}

#[derive(Debug)]
struct State<T> {
    next_id: u64,
    in_flight: usize,
    /// Waiting calls in submission order (so ids ascend). Non-empty only while `in_flight` is
    /// at the limit: a request that returns drains it first.
    queue: VecDeque<Entry<T>>,
    alone: bool,
    /// A request on the wire stalled (slow served code): calls go alone until one returns.
    stalled: bool,
}

/// One client's queue of pipelined calls.
#[derive(Debug)]
pub struct Batcher<T> {
    limits: Limits,
    state: Mutex<State<T>>,
}

impl<T> Default for Batcher<T> {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl<T> Batcher<T> {
    pub fn new(limits: Limits) -> Self {
        let state = State { next_id: 0, in_flight: 0, queue: VecDeque::new(), alone: false, stalled: false };
        Batcher { limits, state: Mutex::new(state) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new call whose request encodes to `size` bytes, bounded by `timeout`.
    pub fn submit(&self, item: T, size: usize, timeout: Option<Duration>) -> Submitted<T> {
        let mut state = self.state();
        if state.alone || state.stalled || size > self.limits.alone_over {
            return Submitted::Alone(item);
        }
        let id = state.next_id;
        state.next_id += 1;
        let entry = Entry { id, item, size, timeout, queued: Instant::now() };
        if state.in_flight < self.limits.in_flight {
            state.in_flight += 1;
            return Submitted::Now(Batch::of(vec![entry]));
        }
        state.queue.push_back(entry);
        Submitted::Queued(id)
    }

    /// A request sent by `submit` or `finished` has returned: the batches to send now, filling
    /// the free places on the wire from the queue.
    pub fn finished(&self) -> Vec<Batch<T>> {
        let mut state = self.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.stalled = false;
        let mut batches = Vec::new();
        while state.in_flight < self.limits.in_flight {
            let Some(batch) = self.take(&mut state.queue) else { break };
            state.in_flight += 1;
            batches.push(batch);
        }
        batches
    }

    /// The longest run from the queue's head that shares the head's timeout, within the limits.
    fn take(&self, queue: &mut VecDeque<Entry<T>>) -> Option<Batch<T>> {
        let timeout = queue.front()?.timeout;
        let (mut n, mut bytes) = (0, 0);
        for entry in queue.iter() {
            let fits = n == 0 || (n < self.limits.max_calls && bytes + entry.size <= self.limits.max_bytes);
            if entry.timeout != timeout || !fits {
                break;
            }
            n += 1;
            bytes += entry.size;
        }
        Some(Batch::of(queue.drain(..n).collect()))
    }

    /// Takes a still-queued call out (it is never sent); `None` once it was sent.
    pub fn cancel(&self, id: u64) -> Option<T> {
        let mut state = self.state();
        let at = state.queue.binary_search_by_key(&id, |e| e.id).ok()?;
        state.queue.remove(at).map(|e| e.item)
    }

    /// The server has no `CallBatch`: from now on every call goes alone. Returns the calls
    /// still queued, to be sent alone too.
    pub fn fall_back(&self) -> Vec<Entry<T>> {
        let mut state = self.state();
        state.alone = true;
        state.queue.drain(..).collect()
    }

    /// A request on the wire has taken long (the served code is slow, so batching would run
    /// calls one after another that could run side by side): calls go alone until a request
    /// returns. Returns the calls queued, to be sent alone now.
    pub fn stall(&self) -> Vec<Entry<T>> {
        let mut state = self.state();
        state.stalled = true;
        state.queue.drain(..).collect()
    }

    /// Whether calls go alone from now on.
    #[cfg(test)]
    fn is_alone(&self) -> bool {
        self.state().alone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { in_flight: 2, max_calls: 3, max_bytes: 100, alone_over: 60 }
    }

    fn items(batch: &Batch<u32>) -> Vec<u32> {
        batch.entries.iter().map(|e| e.item).collect()
    }

    fn now(submitted: Submitted<u32>) -> Vec<u32> {
        match submitted {
            Submitted::Now(batch) => items(&batch),
            other => panic!("expected it sent now, got {other:?}"),
        }
    }

    fn queued(submitted: Submitted<u32>) -> u64 {
        match submitted {
            Submitted::Queued(id) => id,
            other => panic!("expected it queued, got {other:?}"),
        }
    }

    #[test]
    fn calls_go_at_once_until_two_are_in_flight_then_wait_for_a_return() {
        let b = Batcher::new(limits());
        assert_eq!(now(b.submit(1, 10, None)), vec![1]);
        assert_eq!(now(b.submit(2, 10, None)), vec![2]);
        for i in 3..=7 {
            queued(b.submit(i, 10, None));
        }
        // One returned: one place, so one batch of at most three calls.
        let next: Vec<Vec<u32>> = b.finished().iter().map(items).collect();
        assert_eq!(next, vec![vec![3, 4, 5]]);
        // Both places free up: what is left, then nothing.
        let next: Vec<Vec<u32>> = b.finished().iter().map(items).collect();
        assert_eq!(next, vec![vec![6, 7]]);
        assert!(b.finished().is_empty());
        assert!(b.finished().is_empty());
        // Nothing in flight: the next call goes at once again.
        assert_eq!(now(b.submit(8, 10, None)), vec![8]);
    }

    #[test]
    fn a_batch_stops_at_the_byte_limit_and_at_a_different_timeout() {
        let b = Batcher::new(limits());
        now(b.submit(0, 1, None));
        now(b.submit(0, 1, None));
        let short = Some(Duration::from_secs(1));
        for (i, (size, timeout)) in
            [(40, None), (40, None), (40, None), (5, short), (5, short), (5, None)].into_iter().enumerate()
        {
            queued(b.submit(u32::try_from(i).unwrap() + 1, size, timeout));
        }
        let first = b.finished();
        assert_eq!(first.iter().map(items).collect::<Vec<_>>(), vec![vec![1, 2]], "80 bytes + 40 > 100");
        assert_eq!(b.finished().iter().map(items).collect::<Vec<_>>(), vec![vec![3]], "the next has another timeout");
        let third = b.finished();
        assert_eq!(third.iter().map(items).collect::<Vec<_>>(), vec![vec![4, 5]]);
        assert_eq!(third[0].timeout, short);
        assert_eq!(b.finished().iter().map(items).collect::<Vec<_>>(), vec![vec![6]]);
    }

    #[test]
    fn a_large_call_goes_alone_and_is_not_counted_in_flight() {
        let b = Batcher::new(limits());
        assert!(matches!(b.submit(1, 61, None), Submitted::Alone(1)));
        now(b.submit(2, 10, None));
        now(b.submit(3, 10, None));
        assert!(matches!(b.submit(4, 61, None), Submitted::Alone(4)), "even with both places taken");
        queued(b.submit(5, 10, None));
    }

    #[test]
    fn a_cancelled_call_leaves_the_queue_and_a_sent_one_cannot_be_taken_back() {
        let b = Batcher::new(limits());
        now(b.submit(1, 10, None));
        now(b.submit(2, 10, None));
        let ids: Vec<u64> = (3..=6).map(|i| queued(b.submit(i, 10, None))).collect();
        assert_eq!(b.cancel(ids[1]), Some(4));
        assert_eq!(b.cancel(ids[1]), None, "already out");
        assert_eq!(b.finished().iter().map(items).collect::<Vec<_>>(), vec![vec![3, 5, 6]]);
        assert_eq!(b.cancel(ids[0]), None, "sent");
    }

    #[test]
    fn falling_back_hands_back_the_queue_and_sends_everything_alone() {
        let b = Batcher::new(limits());
        now(b.submit(1, 10, None));
        now(b.submit(2, 10, None));
        queued(b.submit(3, 10, None));
        queued(b.submit(4, 10, None));
        assert_eq!(b.fall_back().into_iter().map(|e| e.item).collect::<Vec<_>>(), vec![3, 4]);
        assert!(b.is_alone());
        assert!(b.finished().is_empty());
        assert!(matches!(b.submit(5, 10, None), Submitted::Alone(5)));
    }

    #[test]
    fn a_stalled_request_sends_the_queue_alone_until_a_request_returns() {
        let b = Batcher::new(limits());
        now(b.submit(1, 10, None));
        now(b.submit(2, 10, None));
        queued(b.submit(3, 10, None));
        assert_eq!(b.stall().into_iter().map(|e| e.item).collect::<Vec<_>>(), vec![3]);
        assert!(matches!(b.submit(4, 10, None), Submitted::Alone(4)));
        assert!(b.finished().is_empty(), "nothing queued while stalled");
        assert_eq!(now(b.submit(5, 10, None)), vec![5], "a return ends the stall");
        queued(b.submit(6, 10, None));
    }

    #[test]
    fn a_batch_counts_its_timeout_from_its_oldest_call() {
        let b = Batcher::new(limits());
        now(b.submit(1, 10, None));
        now(b.submit(2, 10, None));
        let before = Instant::now();
        queued(b.submit(3, 10, Some(Duration::from_secs(5))));
        queued(b.submit(4, 10, Some(Duration::from_secs(5))));
        let batch = b.finished().pop().unwrap();
        assert!(batch.since >= before && batch.since <= batch.entries[1].queued);
        assert_eq!(batch.timeout, Some(Duration::from_secs(5)));
    }
}
