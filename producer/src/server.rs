//! Serving the router on a TCP listener with bounds no client can stretch.
//!
//! `axum::serve` has no knobs for slow clients: a connection that sends half a request
//! header and stops is held open forever, and with a container's usual 1,024 file
//! descriptors a few thousand of them lock everyone out. So the ingress drives hyper itself
//! (as `axum::serve` does underneath) with three bounds:
//!
//! - **header timeout** (hyper's `header_read_timeout`): a request head not complete within
//!   it closes the connection. Hyper starts this timer whenever it waits for a request
//!   head, so it also closes a keep-alive connection that stays idle between requests.
//! - **idle timeout** (`tokio-io-timeout` on the socket): a connection on which no byte
//!   arrives, or no byte can be written, for this long is closed — a body that trickles
//!   then stops, a client that stops reading its response, an idle HTTP/2 connection.
//! - **max connections**: a connection is accepted only when one of the slots is free;
//!   the others wait in the kernel's accept queue and are served as slots free up, so the
//!   process never runs out of file descriptors for its broker and database connections.
//!
//! Graceful shutdown: when the shutdown future completes the listener is closed, idle
//! connections are closed, and in-flight requests finish (hyper-util's `GracefulShutdown`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tower::ServiceExt;

/// Accept-queue length asked of the kernel for a listener (Linux caps it at
/// `net.core.somaxconn`, 4096 by default). tokio's and std's `bind` ask for 128, and a burst
/// of more simultaneous connections than that overflows the queue: the kernel drops the
/// excess SYNs and those clients retry only after a 1 s retransmission timeout.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address` with a [`LISTEN_BACKLOG`]-long accept queue (and `SO_REUSEADDR`, as
/// tokio's `bind` sets).
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The connection bounds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// A request head must arrive within this; also the keep-alive idle limit.
    pub header_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 768,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains: stops accepting,
/// closes idle connections and waits for in-flight requests. Each request carries the
/// peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        // A slot first: while every slot is taken, new connections wait in the kernel's
        // accept queue instead of taking a file descriptor here.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the connection
                    // waits in the accept queue meanwhile.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_read_timeout(Some(options.idle_timeout));
        stream.set_write_timeout(Some(options.idle_timeout));
        let io = TokioIo::new(Box::pin(stream));
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut request: axum::http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                // Router's error type is Infallible: every failure is a response.
                router.clone().oneshot(request)
            });
        let connection = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts and clients that hang up land here: routine, not an error.
                tracing::debug!(%peer, error = %e, "connection closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod backlog_tests {
    use std::time::Duration;

    /// A burst of connections the server has not accepted yet all complete their
    /// handshake: they wait in the accept queue. With the default backlog of 128 the kernel
    /// drops the SYNs beyond it, and those clients hang for a 1 s retransmission.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue() {
        let listener = super::bind(([127, 0, 0, 1], 0).into()).unwrap();
        let address = listener.local_addr().unwrap();
        let connects = (0..400).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(700),
                tokio::net::TcpStream::connect(address),
            )
        });
        let results = futures::future::join_all(connects).await;
        let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(connected, 400, "connections completed without an accept");
        drop(listener);
    }
}
