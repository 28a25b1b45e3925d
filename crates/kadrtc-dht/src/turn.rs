//! A TURN relay (RFC 8656) for peers that find no direct path, run by nodes that volunteer
//! (`kadrtc node --relay`). The server is webrtc-rs's `turn` crate; kadrtc adds the bounds a
//! volunteer needs: at most [`RelayConfig::max_allocations`] allocations at once, each
//! relaying at most [`RelayConfig::bytes_per_second`] in each direction, and credentials
//! that expire after [`TURN_CREDENTIAL_LIFETIME`], handed out only over the authenticated
//! libp2p protocol [`crate::ICE_PROTOCOL`], never a static password.
//!
//! A relay forwards the peers' UDP datagrams as they are: DTLS records (RFC 8827 §6.5), which
//! it cannot read.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota};
use tokio::net::UdpSocket;
use turn::auth::{generate_long_term_credentials, LongTermAuthHandler};
use turn::relay::RelayAddressGenerator;
use turn::server::config::{ConnConfig, ServerConfig};
use turn::server::Server;
use webrtc_util::Conn;

/// The UDP port a relay listens on unless told otherwise: the one after STUN's standard 3478
/// (RFC 8489 §18.6), which kadrtc's own STUN responder holds.
pub const DEFAULT_TURN_PORT: u16 = 3479;
/// Allocations a relay holds at once unless told otherwise.
pub const DEFAULT_MAX_ALLOCATIONS: usize = 64;
/// Bytes per second one allocation may relay in each direction unless told otherwise
/// (1 MiB/s: chat and file transfer at a modest rate, 64 MiB/s for a full relay).
pub const DEFAULT_BYTES_PER_SECOND: u32 = 1024 * 1024;
/// How long relay credentials stay valid: one day, the example lifetime of the TURN REST API
/// draft (draft-uberti-behave-turn-rest §2.2). The relay checks them on every authenticated
/// request, refreshes and permissions included (RFC 8656 §7–9), so they must outlive the
/// connections that use them: a connection relayed for longer than this loses its
/// allocation when it next refreshes.
pub const TURN_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The realm relays name in their challenges (RFC 8489 §14.9).
pub const TURN_REALM: &str = "kadrtc";

/// Where and how much a [`TurnRelay`] relays.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The UDP address clients send TURN requests to.
    pub listen: SocketAddr,
    /// The IP peers send relayed traffic to: an address of this host that the peers can
    /// reach. Relayed ports are bound on it with ports chosen by the OS.
    pub relay_ip: IpAddr,
    /// Most allocations held at once; an Allocate request beyond it is refused.
    pub max_allocations: usize,
    /// Most bytes per second one allocation relays in each direction; datagrams beyond it are
    /// dropped, as a congested link would.
    pub bytes_per_second: NonZeroU32,
}

impl RelayConfig {
    /// Listens on `listen`, relays on `relay_ip`, with the default bounds.
    pub fn new(listen: SocketAddr, relay_ip: IpAddr) -> Self {
        Self {
            listen,
            relay_ip,
            max_allocations: DEFAULT_MAX_ALLOCATIONS,
            bytes_per_second: NonZeroU32::new(DEFAULT_BYTES_PER_SECOND).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Short-lived long-term credentials (RFC 8489 §9.2) for one [`TurnRelay`], in the
/// time-limited form of the TURN REST API draft: the username is the expiry time in Unix
/// seconds, the password an HMAC-SHA1 of it under a secret only the relay knows.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// The TURN username.
    pub username: String,
    /// The TURN password.
    pub password: String,
    /// When the relay stops accepting them for new allocations.
    pub expires: SystemTime,
}

impl std::fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// A running TURN relay. Stops when dropped.
pub struct TurnRelay {
    server: Option<Server>,
    local_addr: SocketAddr,
    secret: zeroize::Zeroizing<String>,
    allocations: Arc<AtomicUsize>,
}

impl TurnRelay {
    /// Binds `config.listen` and starts relaying.
    ///
    /// # Errors
    ///
    /// The socket error when the address cannot be bound; [`std::io::ErrorKind::Other`] when
    /// the TURN server refuses the configuration.
    pub async fn start(config: RelayConfig) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(config.listen).await?;
        let local_addr = socket.local_addr()?;
        let secret = zeroize::Zeroizing::new(random_secret());
        let allocations = Arc::new(AtomicUsize::new(0));
        let relays = BoundedRelays {
            relay_ip: config.relay_ip,
            max: config.max_allocations,
            bytes_per_second: config.bytes_per_second,
            live: allocations.clone(),
        };
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(socket),
                relay_addr_generator: Box::new(relays),
            }],
            realm: TURN_REALM.to_string(),
            auth_handler: Arc::new(LongTermAuthHandler::new(secret.to_string())),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await
        .map_err(std::io::Error::other)?;
        tracing::info!(%local_addr, relay_ip = %config.relay_ip, "TURN relay running");
        Ok(Self {
            server: Some(server),
            local_addr,
            secret,
            allocations,
        })
    }

    /// The address clients send TURN requests to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Allocations held now.
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Fresh credentials, valid for [`TURN_CREDENTIAL_LIFETIME`].
    ///
    /// # Errors
    ///
    /// When the system clock is before 1970.
    pub fn credentials(&self) -> Result<TurnCredentials, turn::Error> {
        let (username, password) =
            generate_long_term_credentials(&self.secret, TURN_CREDENTIAL_LIFETIME)?;
        Ok(TurnCredentials {
            username,
            password,
            expires: SystemTime::now() + TURN_CREDENTIAL_LIFETIME,
        })
    }
}

impl std::fmt::Debug for TurnRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRelay")
            .field("local_addr", &self.local_addr)
            .field("allocations", &self.allocations())
            .finish_non_exhaustive()
    }
}

impl Drop for TurnRelay {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = server.close().await {
                    tracing::debug!(%error, "closing the TURN relay");
                }
            });
        }
    }
}

/// 32 random bytes, hex: the HMAC key of the relay's credentials, new at every start.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Binds one relayed port per allocation on `relay_ip`, up to `max` at once.
struct BoundedRelays {
    relay_ip: IpAddr,
    max: usize,
    bytes_per_second: NonZeroU32,
    live: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RelayAddressGenerator for BoundedRelays {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.relay_ip.is_ipv4() {
            return Err(turn::Error::Other(format!(
                "this relay only relays on {}",
                self.relay_ip
            )));
        }
        let slot = AllocationSlot::take(&self.live, self.max).ok_or_else(|| {
            tracing::warn!(max = self.max, "TURN relay full; allocation refused");
            turn::Error::Other(format!("relay full ({} allocations)", self.max))
        })?;
        let socket = UdpSocket::bind(SocketAddr::new(self.relay_ip, requested_port))
            .await
            .map_err(|e| turn::Error::Other(e.to_string()))?;
        let relay_addr = socket
            .local_addr()
            .map_err(|e| turn::Error::Other(e.to_string()))?;
        let quota = Quota::per_second(self.bytes_per_second);
        let conn = BoundedConn {
            socket,
            loopback_relay: self.relay_ip.is_loopback(),
            sent: DefaultDirectRateLimiter::direct(quota),
            received: DefaultDirectRateLimiter::direct(quota),
            _slot: slot,
        };
        Ok((Arc::new(conn), relay_addr))
    }
}

/// One allocation counted in a relay's total; uncounted when dropped.
struct AllocationSlot(Arc<AtomicUsize>);

impl AllocationSlot {
    fn take(live: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(live.clone()))
    }
}

impl Drop for AllocationSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A relayed port whose traffic is bounded in bytes per second each way; datagrams over the
/// bound are dropped.
struct BoundedConn {
    socket: UdpSocket,
    /// The relay relays on loopback: local destinations are the only ones there are.
    loopback_relay: bool,
    sent: DefaultDirectRateLimiter,
    received: DefaultDirectRateLimiter,
    _slot: AllocationSlot,
}

impl BoundedConn {
    fn may_relay_to(&self, ip: IpAddr) -> bool {
        may_relay_to(self.loopback_relay, ip)
    }
}

/// Whether relayed traffic may go to `ip`: not to this host's own or local-only addresses,
/// unless the relay itself sits on loopback (a test or a local testnet).
fn may_relay_to(loopback_relay: bool, ip: IpAddr) -> bool {
    if loopback_relay {
        return true;
    }
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || is_link_local(ip))
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_link_local() || ip.is_broadcast(),
        IpAddr::V6(ip) => (ip.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Whether `limiter` lets `bytes` through now.
fn within(limiter: &DefaultDirectRateLimiter, bytes: usize) -> bool {
    let Some(n) = u32::try_from(bytes).ok().and_then(NonZeroU32::new) else {
        return true;
    };
    matches!(limiter.check_n(n), Ok(Ok(())))
}

#[async_trait::async_trait]
impl Conn for BoundedConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.socket.connect(addr).await.map_err(Into::into)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        loop {
            let n = self.socket.recv(buf).await?;
            if within(&self.received, n) {
                return Ok(n);
            }
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if within(&self.received, n) {
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        if !within(&self.sent, buf.len()) {
            return Ok(buf.len());
        }
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !within(&self.sent, buf.len()) || !self.may_relay_to(target.ip()) {
            return Ok(buf.len());
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr().ok()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_slots_are_bounded_and_returned() {
        let live = Arc::new(AtomicUsize::new(0));
        let first = AllocationSlot::take(&live, 2).expect("first slot");
        let second = AllocationSlot::take(&live, 2).expect("second slot");
        assert!(
            AllocationSlot::take(&live, 2).is_none(),
            "third slot over max"
        );
        drop(first);
        assert_eq!(live.load(Ordering::Relaxed), 1);
        assert!(AllocationSlot::take(&live, 2).is_some());
        drop(second);
    }

    #[test]
    fn relays_do_not_forward_to_the_volunteers_own_or_local_only_addresses() {
        for refused in [
            "127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
        ] {
            assert!(!may_relay_to(false, refused.parse().unwrap()), "{refused}");
        }
        for allowed in ["10.77.1.2", "192.0.2.7", "2001:db8::1"] {
            assert!(may_relay_to(false, allowed.parse().unwrap()), "{allowed}");
        }
        assert!(
            may_relay_to(true, "127.0.0.1".parse().unwrap()),
            "a loopback relay"
        );
    }

    #[test]
    fn bandwidth_bound_drops_what_exceeds_a_second_of_quota() {
        let limiter =
            DefaultDirectRateLimiter::direct(Quota::per_second(NonZeroU32::new(3000).unwrap()));
        assert!(within(&limiter, 1500));
        assert!(within(&limiter, 1500));
        assert!(!within(&limiter, 1500), "quota of 3000 bytes used up");
        assert!(within(&limiter, 0), "empty datagrams cost nothing");
    }
}
