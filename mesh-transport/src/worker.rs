//! One worker: a thread with its own current-thread runtime and `LocalSet`, its own listening
//! socket and accept loop, its own stack (or L4 handler) and its own upstream connections.
//! Nothing it does per request or connection touches another thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::LocalSet;

use crate::limits::Limits;
use crate::loops::Guard;
use crate::stats::Slot;
use crate::{Phase, Shared};

/// What a worker thread needs to start; `build` makes its connection handling (the HTTP
/// engine's [`Worker`](crate::conn::Worker), or an L4 one) on the worker's thread.
pub(crate) struct Spawn<B> {
    pub(crate) index: usize,
    pub(crate) listener: StdListener,
    pub(crate) build: B,
    pub(crate) limits: Arc<Limits>,
    /// The loop checks of the engine (own addresses, `Via` marker).
    pub(crate) guard: Guard,
    /// Where the worker's connectors originate TLS.
    pub(crate) upstream_tls: Option<std::sync::Arc<dyn crate::tls::UpstreamTls>>,
    /// Terminates TLS on the worker's connections, when set.
    pub(crate) downstream_tls: Option<std::sync::Arc<dyn crate::tls::DownstreamTls>>,
    pub(crate) control: watch::Receiver<Phase>,
    pub(crate) shared: Arc<Shared>,
    /// Told once the worker accepts (or why it could not start).
    pub(crate) started: std::sync::mpsc::Sender<io::Result<()>>,
    /// Dropped when the thread is done (after its runtime is gone).
    pub(crate) done: oneshot::Sender<()>,
}

/// What a worker's `build` gets, on the worker's thread.
pub(crate) struct WorkerInit {
    pub(crate) index: usize,
    pub(crate) workers: usize,
    pub(crate) limits: Arc<Limits>,
    pub(crate) guard: Guard,
    pub(crate) upstream_tls: Option<std::sync::Arc<dyn crate::tls::UpstreamTls>>,
    pub(crate) downstream_tls: Option<std::sync::Arc<dyn crate::tls::DownstreamTls>>,
    /// The engine's shared state (its counters).
    pub(crate) shared: Arc<Shared>,
}

/// How a worker serves its accepted connections: HTTP (`conn::Worker`) or L4
/// (`l4::L4Worker`). The accept loop, readiness and drain around it are the same.
pub(crate) trait ConnWorker: 'static {
    /// Serves one accepted connection on a task of its own (`open` dropped when it ends).
    fn accept(self: &Rc<Self>, stream: TcpStream, peer: SocketAddr, open: OpenConnection);
    /// Drain started: the accept loop has stopped.
    fn start_drain(&self);
    /// Resolves when no connection of the worker is open.
    fn all_closed(&self) -> impl Future<Output = ()> + '_;
}

/// Starts worker thread `spawn.index`.
pub(crate) fn spawn<W, B>(spawn: Spawn<B>) -> io::Result<JoinHandle<()>>
where
    W: ConnWorker,
    B: FnOnce(WorkerInit) -> W + Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("mesh-worker-{}", spawn.index))
        .spawn(move || run(spawn))
}

fn run<W, B>(spawn: Spawn<B>)
where
    W: ConnWorker,
    B: FnOnce(WorkerInit) -> W,
{
    let Spawn {
        index,
        listener,
        build,
        limits,
        guard,
        upstream_tls,
        downstream_tls,
        mut control,
        shared,
        started,
        done,
    } = spawn;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let local = LocalSet::new();
    let deferring = crate::defer::Enabled::new();
    local.block_on(
        &rt,
        ending_turns(async {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            let worker = Rc::new(build(WorkerInit {
                index,
                workers: shared.workers,
                limits: limits.clone(),
                guard,
                upstream_tls,
                downstream_tls,
                shared: shared.clone(),
            }));
            shared.listening.fetch_add(1, Ordering::AcqRel);
            let _ = started.send(Ok(()));
            // The accept loop is a task of its own: the future `block_on` drives is polled again
            // at every wake-up of any of the worker's tasks (`LocalSet::run_until`), which would
            // poll the control channel and the listener twice per proxied request; the task is
            // polled at its own wake-ups only (callgrind.py: about 250 instructions per request).
            // Its outcome comes back through a `Handoff` rather than its `JoinHandle`, whose poll
            // (an atomic exchange on the task's state) cost another 170.
            let handoff = Rc::new(Handoff::default());
            tokio::task::spawn_local({
                let (worker, shared, handoff) = (worker.clone(), shared.clone(), handoff.clone());
                let max = limits.max_downstream_connections;
                async move {
                    let unwinding = PanicGuard(&handoff);
                    let phase = accept_loop(&listener, &worker, &mut control, &shared, max).await;
                    drop(listener); // stop accepting: new connections go elsewhere or are refused
                    shared.listening.fetch_sub(1, Ordering::AcqRel);
                    std::mem::forget(unwinding);
                    handoff.put(Some((phase, control)));
                }
            });
            let Some((phase, mut control)) = handoff.take().await else {
                panic!("the accept loop of worker {index} panicked");
            };
            if phase == Phase::Draining {
                worker.start_drain();
                let stop = async {
                    // `Stopping` during the drain cuts it short
                    while control.changed().await.is_ok() {
                        if *control.borrow() == Phase::Stopping {
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = worker.all_closed() => {}
                    _ = tokio::time::timeout(limits.drain_timeout, stop) => {}
                }
            }
        }),
    );
    // dropping the LocalSet and the runtime closes whatever is still open (what is
    // deferred is sent first)
    drop(deferring);
    drop(local);
    drop(rt);
    drop(done);
}

/// A worker's runtime: current-thread, which ends a turn (`crate::defer`) before it waits
/// for events. With [`ending_turns`] around the future its `LocalSet` runs, and a
/// `defer::Enabled` on the thread, the connections' small writes wait for the end of a busy
/// turn.
pub(crate) fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::defer::end_of_turn)
        .build()
}

/// `future`, ending a batch of tasks (`crate::defer::end_of_batch`) before each of its
/// polls. Given to `LocalSet::block_on`, it is polled before each batch of the set's tasks
/// (at most 61, `LocalSet::run_until`): what the batches deferred goes out within a few
/// batches, even while the runtime has work enough never to wait for events (it then skips
/// `on_thread_park`).
pub(crate) async fn ending_turns<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        crate::defer::end_of_batch();
        future.as_mut().poll(cx)
    })
    .await
}

/// A value handed from one task of a worker's `LocalSet` to another (the accept loop's
/// outcome to the worker's main future): a poll is a `Cell` read and a waker comparison.
struct Handoff<T> {
    value: Cell<Option<T>>,
    waker: RefCell<Option<Waker>>,
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Handoff {
            value: Cell::new(None),
            waker: RefCell::new(None),
        }
    }
}

impl<T> Handoff<T> {
    /// Hands `value` over and wakes the taker.
    fn put(&self, value: T) {
        self.value.set(Some(value));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Resolves with the value once it is put.
    fn take(&self) -> impl Future<Output = T> + '_ {
        std::future::poll_fn(|cx| match self.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                let mut w = self.waker.borrow_mut();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        })
    }
}

/// Hands `None` over if dropped, that is when the accept loop unwinds (a panic is caught by
/// the `LocalSet`; the worker's main future then panics in its turn).
struct PanicGuard<'a, T>(&'a Handoff<Option<T>>);

impl<T> Drop for PanicGuard<'_, T> {
    fn drop(&mut self) {
        self.0.put(None);
    }
}

/// Accepts until the engine leaves [`Phase::Running`]; returns the phase it moved to.
///
/// A connection over `maxDownstreamConnections` (counted over every engine sharing the
/// [`DownstreamConnections`](crate::DownstreamConnections)) is closed as soon as it is
/// accepted, as Envoy's overload manager does (accepting it empties the kernel's queue, where
/// it would otherwise wait). Running out of descriptors or buffers (`EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`) never ends the loop: it backs off (10 ms, doubling to 640 ms,
/// reset by the next success), logs at most once per [`LOG_EVERY`], and resumes by itself
/// once descriptors are free again.
async fn accept_loop<W: ConnWorker>(
    listener: &TcpListener,
    worker: &Rc<W>,
    control: &mut watch::Receiver<Phase>,
    shared: &Arc<Shared>,
    max: u32,
) -> Phase {
    let mut backoff = Backoff::default();
    loop {
        let phase = *control.borrow_and_update();
        if phase != Phase::Running {
            return phase;
        }
        tokio::select! {
            biased;
            r = control.changed() => {
                if r.is_err() {
                    return Phase::Stopping; // the engine handle is gone
                }
            }
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    backoff.reset();
                    let Some(slot) = shared.connections.try_take(max) else {
                        shared.counters.refused_over_cap.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    };
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    let open = OpenConnection::new(shared.clone(), slot);
                    worker.accept(stream, peer, open);
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    // out of descriptors or memory: back off instead of spinning (the
                    // connection stays in the kernel's queue until a descriptor is free)
                    shared.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                    let pause = backoff.next(&e);
                    tokio::time::sleep(pause).await;
                }
            },
        }
    }
}

/// How often an accept failure is logged at most (the others are counted).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The accept loop's back-off after resource errors.
#[derive(Default)]
struct Backoff {
    /// Consecutive failures.
    failures: u32,
    /// When a failure was last logged, and how many were not since.
    logged: Option<tokio::time::Instant>,
    quiet: u64,
}

impl Backoff {
    fn reset(&mut self) {
        self.failures = 0;
    }

    /// Records a failure, logs it if none was for a while, and returns the pause.
    fn next(&mut self, e: &io::Error) -> Duration {
        let now = tokio::time::Instant::now();
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            tracing::warn!(
                error = %e,
                suppressed = self.quiet,
                "accept failed; backing off (connections wait in the kernel's queue)"
            );
            self.logged = Some(now);
            self.quiet = 0;
        } else {
            self.quiet += 1;
        }
        let pause = Duration::from_millis(10) * (1 << self.failures.min(6));
        self.failures = self.failures.saturating_add(1);
        pause
    }
}

/// Counts a connection as open (in [`Shared::open`]) until dropped, with its task.
/// Also holds the connection's place under `maxDownstreamConnections`, given back with it.
pub(crate) struct OpenConnection {
    shared: Arc<Shared>,
    _slot: Slot,
}

impl OpenConnection {
    fn new(shared: Arc<Shared>, slot: Slot) -> Self {
        shared.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            shared,
            _slot: slot,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept errors that concern one connection only (the next accept may succeed).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A taker waiting before the value is put is woken with it; one that comes after gets
    /// it at once.
    #[tokio::test]
    async fn a_handoff_wakes_its_taker_with_the_value() {
        let local = LocalSet::new();
        local
            .run_until(async {
                let handoff = Rc::new(Handoff::default());
                let taker = tokio::task::spawn_local({
                    let h = handoff.clone();
                    async move { h.take().await }
                });
                // the taker runs first and waits (its waker stored)
                tokio::task::yield_now().await;
                assert!(handoff.waker.borrow().is_some());
                handoff.put(7u32);
                assert_eq!(taker.await.unwrap(), 7);
                handoff.put(8);
                assert_eq!(handoff.take().await, 8);
            })
            .await;
    }

    /// The accept loop's guard hands `None` over when it is dropped without being
    /// forgotten (the loop unwound): the worker's main future does not wait for ever.
    #[tokio::test]
    async fn an_unwinding_accept_loop_hands_none_over() {
        let handoff: Handoff<Option<u32>> = Handoff::default();
        drop(PanicGuard(&handoff));
        assert_eq!(handoff.take().await, None);
        let handoff: Handoff<Option<u32>> = Handoff::default();
        std::mem::forget(PanicGuard(&handoff));
        handoff.put(Some(3));
        assert_eq!(handoff.take().await, Some(3));
    }
}
