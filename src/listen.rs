//! Listener hardening: a connection limit per listener, header-read, idle and request timeouts on
//! the HTTP port, and file descriptors kept for the decision path (INT-7.1-1, INT-4.1-4).
//!
//! Both listeners accept only while they hold a permit of their own [`Semaphore`]; a client past
//! the limit waits in the kernel's accept queue and costs scp-pep no descriptor. The limits are
//! sized from the process's open-file limit ([`budget`]) so that no number of HTTP connections can
//! take the descriptors that gRPC `Check`, JWKS refreshes, the store pool and checkpoint publishing
//! need. On the HTTP port hyper closes a connection that has not sent a whole request head within
//! `header_read_timeout_s` (slow-loris) or that sits idle between requests as long; a watchdog
//! closes any connection (HTTP/1 or HTTP/2) that moved no byte for `idle_timeout_s`; and a request
//! whose handler (body read included) runs past `request_timeout_s` is answered 503.
//!
//! With `[tls]` a listener wraps each accepted connection in rustls ([`crate::tls`]) before
//! serving it: the handshake runs in the connection's own task under `tls.handshake_timeout_s`,
//! holding the connection's permit meanwhile, so a stalled or failed handshake frees its slot
//! and never stops the accept loop.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::ServerConfig;

/// Connections each listener may hold at once, after [`budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The process's open-file limit after raising the soft limit to the hard one.
    pub nofile: u64,
    /// Most HTTP connections (admin, consent, audit, ops).
    pub http: usize,
    /// Most gRPC connections (ext_authz `Check`, live tail).
    pub grpc: usize,
}

/// Sizes both listeners from the open-file limit (raised to its hard limit first).
///
/// `server.reserved_fds` descriptors are kept for everything that is not an inbound connection
/// (store pool, JWKS and Keycloak fetches, checkpoint and notification POSTs, log files). Of the
/// rest the HTTP port gets at most a quarter and at most `http_max_connections`; gRPC gets the
/// remainder, at most `grpc_max_connections`. So with 256 descriptors and the default reserve of
/// 128, HTTP holds ≤ 32 connections and gRPC ≤ 96, whatever HTTP clients do.
///
/// Errors: fewer than 16 descriptors left after the reserve (the message says to raise
/// `ulimit -n` or lower `reserved_fds`).
pub fn budget(server: &ServerConfig) -> anyhow::Result<Budget> {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    budget_for(server, nofile)
}

/// [`budget`] for a given open-file limit (pure; unit-tested).
pub fn budget_for(server: &ServerConfig, nofile: u64) -> anyhow::Result<Budget> {
    let available = nofile.saturating_sub(server.reserved_fds as u64) as usize;
    if available < 16 {
        anyhow::bail!(
            "open-file limit {nofile} leaves {available} descriptors after server.reserved_fds = {}; \
             raise `ulimit -n` or lower server.reserved_fds",
            server.reserved_fds
        );
    }
    let http = server.http_max_connections.clamp(1, available / 4);
    let grpc = server.grpc_max_connections.clamp(1, available - http);
    Ok(Budget { nofile, http, grpc })
}

/// Milliseconds since the process's first use of this module; the clock of [`Tracked`].
fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

/// An accepted TCP connection that holds its listener's permit until dropped and remembers when
/// a byte last moved in either direction.
pub struct Tracked {
    inner: TcpStream,
    last: Arc<AtomicU64>,
    _permit: OwnedSemaphorePermit,
}

impl Tracked {
    fn new(inner: TcpStream, permit: OwnedSemaphorePermit) -> Self {
        Tracked {
            inner,
            last: Arc::new(AtomicU64::new(now_ms())),
            _permit: permit,
        }
    }

    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Tracked {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// An accepted connection, plain or TLS ([`crate::tls`]); the [`Tracked`] inside holds the
/// permit and the idle clock either way (TLS records count as traffic).
pub enum Conn {
    Plain(Tracked),
    Tls(Box<tokio_rustls::server::TlsStream<Tracked>>),
}

impl Conn {
    fn tracked(&self) -> &Tracked {
        match self {
            Conn::Plain(t) => t,
            Conn::Tls(t) => t.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_write(cx, data),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_flush(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(t) => t.is_write_vectored(),
            Conn::Tls(t) => t.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tracked().connect_info()
    }
}

/// Runs the TLS handshake of `acceptor` on `conn` (bounded by its handshake timeout), or passes
/// `conn` through when the listener is plain. A failed handshake is counted in
/// `scp_pep_tls_handshake_failures_total{listener}` and logged at debug level; its connection is
/// dropped, which frees its permit.
async fn secure(
    conn: Tracked,
    peer: SocketAddr,
    acceptor: Option<&crate::tls::Acceptor>,
) -> Option<Conn> {
    let Some(a) = acceptor else {
        return Some(Conn::Plain(conn));
    };
    match a.accept(conn).await {
        Ok(s) => Some(Conn::Tls(Box::new(s))),
        Err(e) => {
            metrics::counter!("scp_pep_tls_handshake_failures_total", "listener" => a.listener())
                .increment(1);
            tracing::debug!(%peer, listener = a.listener(), error = %e, "TLS handshake failed");
            None
        }
    }
}

/// Accepts one connection once a permit is free. Accept errors (`EMFILE`, `ECONNABORTED`) are
/// logged and retried after 50 ms instead of ending the listener.
async fn accept(listener: &TcpListener, permits: &Arc<Semaphore>) -> (Tracked, SocketAddr) {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .expect("listener semaphores are never closed");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (Tracked::new(stream, permit), peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The gRPC listener as a stream of connections, each holding one of `permits` while open. With
/// `tls`, each accepted connection's handshake runs in a task of its own (a slow client delays
/// nobody else) and only finished handshakes are yielded.
pub fn grpc_incoming(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    tls: Option<crate::tls::Acceptor>,
) -> std::pin::Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send + 'static>> {
    use futures_util::StreamExt;
    let Some(tls) = tls else {
        return futures_util::stream::unfold((listener, permits), |(l, p)| async move {
            let (conn, _) = accept(&l, &p).await;
            Some((Ok(Conn::Plain(conn)), (l, p)))
        })
        .boxed();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Conn>(64);
    tokio::spawn(async move {
        loop {
            let (conn, peer) = tokio::select! {
                c = accept(&listener, &permits) => c,
                // The server stopped polling (shutdown): stop accepting.
                _ = tx.closed() => break,
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Some(c) = secure(conn, peer, Some(&tls)).await {
                    let _ = tx.send(c).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(Ok)
        .boxed()
}

/// Timeouts of the HTTP port, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// A request head must arrive whole within this (also the idle time allowed between two
    /// HTTP/1 requests on one connection).
    pub header_read: Duration,
    /// A connection that moved no byte this long is closed.
    pub idle: Duration,
}

/// Serves `router` on `listener` until `shutdown` turns true: each connection holds one of
/// `permits` while open, the [`HttpTimeouts`] apply, at most `max_headers` headers per HTTP/1
/// request, peer address as axum `ConnectInfo<SocketAddr>`; `name` labels
/// `scp_pep_open_connections{listener}`. With `tls`, each connection first completes a TLS
/// handshake within the acceptor's timeout (in its own task, holding its permit meanwhile).
/// In-flight requests finish (graceful shutdown, at most 5 s).
#[allow(clippy::too_many_arguments)]
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    permits: Arc<Semaphore>,
    name: &'static str,
    timeouts: HttpTimeouts,
    max_headers: usize,
    tls: Option<crate::tls::Acceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_headers(max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(timeouts.idle / 2)
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = metrics::gauge!("scp_pep_open_connections", "listener" => name);
    loop {
        let (io, peer) = tokio::select! {
            c = accept(&listener, &permits) => c,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let last = io.last.clone();
        let svc = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        );
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let open = open.clone();
        let idle = timeouts.idle;
        let tls = tls.clone();
        tokio::spawn(async move {
            open.increment(1.0);
            if let Some(io) = secure(io, peer, tls.as_ref()).await {
                let conn = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(io),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .into_owned();
                let conn = watcher.watch(conn);
                tokio::pin!(conn);
                let tick = (idle / 4).max(Duration::from_millis(50));
                loop {
                    tokio::select! {
                        _ = conn.as_mut() => break,
                        _ = tokio::time::sleep(tick) => {
                            let quiet = now_ms().saturating_sub(last.load(Ordering::Relaxed));
                            if quiet >= idle.as_millis() as u64 {
                                tracing::debug!(%peer, "closing idle HTTP connection");
                                break;
                            }
                        }
                    }
                }
            }
            open.decrement(1.0);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// Middleware: a request whose handler (body read included) runs past `limit` is answered 503
/// `REQUEST_TIMEOUT` in the REST error shape.
pub async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => axum::response::IntoResponse::into_response(crate::api::ApiError::new(
            crate::api::ErrorCode::RequestTimeout,
            format!("the request took longer than {} s", limit.as_secs()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptors are split so HTTP can never take what the decision path needs.
    #[test]
    fn budget_keeps_descriptors_for_the_decision_path() {
        let s = ServerConfig::default();
        let b = budget_for(&s, 256).unwrap();
        assert_eq!((b.http, b.grpc), (32, 96));
        assert!(b.http + b.grpc + s.reserved_fds <= 256);
        let b = budget_for(&s, 1 << 20).unwrap();
        assert_eq!(
            (b.http, b.grpc),
            (s.http_max_connections, s.grpc_max_connections)
        );
        assert!(budget_for(&s, 130).is_err());
    }
}
