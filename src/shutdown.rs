//! One shutdown signal for the servers of a gateway (the HTTP API, FastAGI), after mini-redis'
//! `Shutdown` and `server::run`: there a `broadcast` channel tells every connection handler to
//! stop and an `mpsc` sender held by each handler tells the server when the last one is gone;
//! here a [`CancellationToken`] is the broadcast and a [`TaskTracker`] the completion count.
//!
//! Stopping has three stages. [`Shutdown::begin`]: accept loops stop (their listeners are
//! dropped, so new connections are refused) and each connection is asked to finish what it is
//! doing (an HTTP connection ends after the response in progress, an idle one at once). Then
//! [`Shutdown::drain`] waits up to a grace period for the tracked connections; whatever is still
//! open after it is told to close ([`Shutdown::closing`]) and is gone when `drain` returns. Only
//! then does the caller stop the gateway: requests that were in progress had their answer.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handle on the shutdown of a set of servers; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the shutdown begins: stop accepting, finish what is in progress.
    stop: CancellationToken,
    /// Cancelled when the grace period is over: close what is still open.
    close: CancellationToken,
    /// The connections (and sessions) the shutdown waits for.
    tasks: TaskTracker,
}

impl Shutdown {
    /// A shutdown that has not begun.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Begin: accept loops end and connections are asked to finish.
    pub fn begin(&self) {
        self.stop.cancel();
    }

    /// Whether the shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the shutdown has begun.
    pub async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// Resolves once the grace period is over: a connection still open closes now.
    pub async fn closing(&self) {
        self.close.cancelled().await;
    }

    /// Run a connection's task so that [`Shutdown::drain`] waits for it. The task watches
    /// [`Shutdown::stopping`] and [`Shutdown::closing`] itself.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Connections (and sessions) still running.
    pub fn open(&self) -> usize {
        self.tasks.len()
    }

    /// After [`Shutdown::begin`]: wait up to `grace` for every tracked task to end, then tell
    /// those left to close and wait for them. Returns how many were still open after `grace`.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.tasks.close();
        let left = match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        };
        self.close.cancel();
        self.tasks.wait().await;
        left
    }
}
