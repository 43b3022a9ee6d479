//! The sandbox-facing listeners and what they share: the accept loop (on one shard in four,
//! see [`crate::shards`]), the cap on concurrent connections (refused cleanly, with a record), and
//! per-connection kill handling.

pub mod dns;
pub mod first_connect;
pub mod http;
pub mod idle;
pub mod socks;
pub mod transparent;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::policy::Reason;
use crate::shards::{Shards, Slot};
use crate::state::{Attempt, Shared};

/// How long an accept waits for an evicted connection's slot.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// Which listener a connection arrived on (a metric label and an audit field).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Listener {
    Http,
    Socks,
    Transparent,
    Dns,
}

impl Listener {
    pub const fn as_str(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Socks => "socks5",
            Listener::Transparent => "transparent",
            Listener::Dns => "dns",
        }
    }
}

/// Holds a connection's slot under the cap and its `connections_open` count; released when
/// the last holder (the connection, or the tunnel it handed off to) drops it.
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    _slot: Slot,
    open: Gauge,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// One accepted connection.
pub struct Accepted {
    pub stream: TcpStream,
    pub client: SocketAddr,
    pub guard: ConnGuard,
    /// Cancelled when the run is terminated; `None` for connections accepted after
    /// termination, which are only ever answered "run terminated".
    pub kill: Option<CancellationToken>,
}

/// Where accept loops are started: the tasks of `set`, stopped by `stop`.
pub struct Accepting<'a> {
    pub set: &'a mut tokio::task::JoinSet<()>,
    pub shared: &'a Arc<Shared>,
    pub shards: &'a Arc<Shards>,
    pub stop: &'a CancellationToken,
}

impl Accepting<'_> {
    /// Serves a bound std listener with an [`accept_loop`] on every accepting shard
    /// ([`crate::shards::ACCEPT_EVERY`]).
    pub fn spawn<H, F, R, RF>(
        &mut self,
        listener: std::net::TcpListener,
        kind: Listener,
        handle: H,
        refuse: R,
    ) -> std::io::Result<()>
    where
        H: Fn(Arc<Shared>, Accepted) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
        R: Fn(TcpStream) -> RF + Clone + Send + Sync + 'static,
        RF: Future<Output = ()> + Send + 'static,
    {
        listener.set_nonblocking(true)?;
        for me in (0..self.shards.len()).step_by(crate::shards::ACCEPT_EVERY) {
            let runtime = self.shards.handle(me);
            // Registered with this shard's reactor: its own descriptor for the shared socket.
            let listener = {
                let _in = runtime.enter();
                TcpListener::from_std(listener.try_clone()?)?
            };
            let on = Placement {
                shards: self.shards.clone(),
                me,
            };
            let task = accept_loop(
                self.shared.clone(),
                listener,
                kind,
                self.stop.clone(),
                on,
                handle.clone(),
                refuse.clone(),
            );
            self.set.spawn_on(task, runtime);
        }
        Ok(())
    }
}

/// Which shard an accept loop runs on.
pub struct Placement {
    pub shards: Arc<Shards>,
    pub me: usize,
}

/// Accepts until `stop` is cancelled, spawning `handle` for each connection on the shard
/// [`Shards::place`] picks (this one, or the least-loaded). Over the cap, a connection is
/// refused with `refuse` (a short protocol-appropriate answer) and recorded.
pub async fn accept_loop<H, F, R, RF>(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: Listener,
    stop: CancellationToken,
    on: Placement,
    handle: H,
    refuse: R,
) where
    H: Fn(Arc<Shared>, Accepted) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream) -> RF + Send + Sync + 'static,
    RF: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => return,
        };
        let (stream, client) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(listener = kind.as_str(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match shared.connections.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            // At the cap: a connection that has not said anything yet makes room.
            Err(_) if shared.waiting.evict_oldest() => {
                let freed = shared.connections.clone().acquire_owned();
                tokio::time::timeout(EVICTION_WAIT, freed)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            let shared = shared.clone();
            let refused = refuse(stream);
            shared.clone().tasks.spawn(async move {
                refused.await;
                let mut a = Attempt::new(kind, Some(client));
                a.deny(&shared, Reason::ConnectionLimit);
                shared.finish(a).await;
            });
            continue;
        };
        let kill = (!shared.enforcer.is_terminated()).then(|| shared.enforcer.kill_token().clone());
        let open = shared.metrics.open_gauge(kind);
        open.inc();
        let (target, slot) = on.shards.place(on.me);
        let guard = ConnGuard {
            _permit: permit,
            _slot: slot,
            open,
        };
        let accepted = move |stream| Accepted {
            stream,
            client,
            guard,
            kill,
        };
        if target == on.me {
            shared.tasks.spawn(handle(shared.clone(), accepted(stream)));
            continue;
        }
        // Handed over: the socket leaves this shard's reactor for the target's.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let (shared2, handle) = (shared.clone(), handle.clone());
        shared.tasks.spawn_on(
            async move {
                if let Ok(stream) = TcpStream::from_std(stream) {
                    handle(shared2, accepted(stream)).await;
                }
            },
            on.shards.handle(target),
        );
    }
}
