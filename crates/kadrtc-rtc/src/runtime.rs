//! webrtc-rs's tokio runtime with larger UDP socket buffers.
//!
//! webrtc-rs binds its UDP sockets with the OS default buffers (≈ 208 KiB receive on Linux)
//! and has no setting for them. A burst of data-channel packets fills that buffer, the
//! kernel drops the rest, and SCTP recovers only after its 1 s retransmission timeout: a
//! channel sending 16 KiB messages on loopback moved ≈ 4 MB/s (DESIGN.md facts). Wrapping
//! the runtime is webrtc-rs's own extension point for the sockets it creates
//! (`PeerConnectionBuilder::with_runtime`, `Runtime::wrap_udp_socket`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// Receive and send buffer asked for on every WebRTC UDP socket, in bytes. Linux caps the
/// request at `net.core.rmem_max` / `wmem_max` unless the process may raise it; the socket
/// keeps whatever the kernel grants.
pub const UDP_BUFFER_SIZE: usize = 4 * 1024 * 1024;

/// [`TokioRuntime`], except that UDP sockets get [`UDP_BUFFER_SIZE`] buffers.
#[derive(Debug)]
pub(crate) struct BufferedRuntime {
    inner: TokioRuntime,
}

impl BufferedRuntime {
    pub(crate) fn new() -> Self {
        Self {
            inner: TokioRuntime,
        }
    }
}

impl Runtime for BufferedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let sock = socket2::SockRef::from(&socket);
        // A smaller buffer than asked for is not an error: the connection works, only slower
        // under bursts.
        if let Err(error) = sock.set_recv_buffer_size(UDP_BUFFER_SIZE) {
            tracing::debug!(%error, "cannot enlarge the UDP receive buffer");
        }
        if let Err(error) = sock.set_send_buffer_size(UDP_BUFFER_SIZE) {
            tracing::debug!(%error, "cannot enlarge the UDP send buffer");
        }
        self.inner.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio (kadrtc: large UDP buffers)"
    }
}
