//! [`Node`]: one libp2p identity on the kadrtc network, and its builder.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use kadrtc_dht::{
    DhtConfig, DhtError, DhtHandle, IceService, RelayConfig, StunServer, TurnRelay,
    DEFAULT_BYTES_PER_SECOND, DEFAULT_MAX_ALLOCATIONS,
};
use kadrtc_proto::{KeyError, Keypair, RoomId, RoomName, RoomNameError};

use crate::ice::NetworkIce;
use crate::Identity;
use kadrtc_rtc::{IceServer, RtcConfig};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use thiserror::Error;

use crate::room::{Room, RoomConfig};

/// A running kadrtc node: a DHT participant that can join rooms. Cheap to clone; all clones
/// share one libp2p swarm. The swarm stops when the last clone (and every [`Room`]) is
/// dropped.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

pub(crate) struct NodeInner {
    pub(crate) dht: DhtHandle,
    pub(crate) keypair: Keypair,
    /// Local IPs WebRTC binds.
    bind_ips: Vec<IpAddr>,
    /// Peer connections use relay candidates only.
    relay_only: bool,
    /// The STUN and TURN servers peer connections use.
    pub(crate) ice: NetworkIce,
    /// The STUN responder this node runs for the network's peers, if any.
    stun: Option<StunServer>,
    /// The TURN relay this node volunteers, if any.
    relay: Option<Arc<TurnRelay>>,
    /// Rooms joined and not yet fully left; a room may be joined once at a time.
    pub(crate) rooms: Mutex<HashSet<RoomId>>,
}

/// Configures and starts a [`Node`].
#[derive(Debug, Default)]
pub struct NodeBuilder {
    identity: Option<Identity>,
    listen: Vec<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
    ice_bind: Vec<IpAddr>,
    ice_servers: Vec<String>,
    stun_port: Option<u16>,
    relay: Option<RelayOptions>,
    relay_only: bool,
    dht_server: Option<bool>,
    mdns: bool,
}

/// How [`NodeBuilder::relay`] was configured.
#[derive(Debug, Clone, Copy)]
struct RelayOptions {
    port: u16,
    relay_ip: Option<IpAddr>,
    max_allocations: usize,
    bytes_per_second: NonZeroU32,
}

/// Why a [`Node`] could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A bootstrap address does not name its peer.
    #[error("bootstrap address {0} must end in /p2p/<PeerId>")]
    BootstrapWithoutPeerId(Multiaddr),
    /// The libp2p node failed to start (listen, transport or bootstrap).
    #[error(transparent)]
    Dht(#[from] DhtError),
    /// The STUN responder's UDP socket could not be bound.
    #[error("cannot bind the STUN responder to {addr}: {source}")]
    Stun {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The TURN relay could not start.
    #[error("cannot start the TURN relay on {addr}: {source}")]
    Relay {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket or server error.
        #[source]
        source: std::io::Error,
    },
    /// The relay needs an IP peers can reach, and the first listen address does not name one
    /// (it is `0.0.0.0` or has no IP).
    #[error("the TURN relay needs the IP peers reach this node at: listen on a specific IP or set the relay IP")]
    RelayIpUnknown,
}

/// Why [`Node::join`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The room name is not valid.
    #[error("invalid room name: {0}")]
    RoomName(#[from] RoomNameError),
    /// This node is in the room already (or still leaving it).
    #[error("already in room {0:?}; leave it first")]
    AlreadyJoined(String),
    /// Subscribing to the room topic failed.
    #[error("cannot join the room topic")]
    Dht(#[source] DhtError),
    /// The room key cannot be derived from the passphrase (empty or too long).
    #[error("unusable passphrase: {0}")]
    Passphrase(#[source] KeyError),
}

impl Node {
    /// A builder with a fresh ed25519 identity, listening on `/ip4/0.0.0.0/tcp/0`, with no
    /// bootstrap peer.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// This node's `PeerId`.
    pub fn peer_id(&self) -> PeerId {
        self.inner.dht.peer_id()
    }

    /// The addresses this node listens on, each ending in `/p2p/<PeerId>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.inner.dht.listen_addrs()
    }

    /// This node's DHT: records, providers, topics and their figures, for tools and
    /// measurements (`testnet/scale.sh` gets records through it). Rooms use it on their own.
    pub fn dht(&self) -> &kadrtc_dht::DhtHandle {
        &self.inner.dht
    }

    /// DHT and gossipsub messages this node exchanged since it started
    /// ([`Traffic`](crate::Traffic)).
    pub fn traffic(&self) -> crate::Traffic {
        self.inner.dht.traffic()
    }

    /// The address this node answers STUN Binding requests on, when it runs a responder
    /// ([`NodeBuilder::stun`]).
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        self.inner.stun.as_ref().map(StunServer::local_addr)
    }

    /// The address this node's TURN relay listens on, when it runs one
    /// ([`NodeBuilder::relay`]).
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.inner.relay.as_ref().map(|relay| relay.local_addr())
    }

    /// The STUN and TURN servers this node's peer connections use now: those given with
    /// [`NodeBuilder::ice_server`] and those learnt from connected nodes (see
    /// [`NodeBuilder::ice_server`]). Asks the connected nodes again when what it knows is
    /// stale.
    pub async fn ice_servers(&self) -> Vec<IceServer> {
        self.inner.rtc_config().await.ice_servers
    }

    /// Joins `room` with default settings: announces presence, discovers members and opens a
    /// data channel to each.
    ///
    /// # Errors
    ///
    /// [`JoinError::RoomName`] for an invalid name, [`JoinError::AlreadyJoined`] when this
    /// node is in the room already, [`JoinError::Dht`] when the room topic cannot be joined.
    pub async fn join(&self, room: &str) -> Result<Room, JoinError> {
        self.join_with(room, RoomConfig::default()).await
    }

    /// Joins `room` with explicit settings.
    ///
    /// # Errors
    ///
    /// As [`Node::join`].
    pub async fn join_with(&self, room: &str, config: RoomConfig) -> Result<Room, JoinError> {
        let name = RoomName::new(room)?;
        Room::join(self.inner.clone(), name, config).await
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Uses this identity instead of a fresh one; its `PeerId` names the node.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Adds a TCP listen address (default `/ip4/0.0.0.0/tcp/0`).
    pub fn listen(mut self, addr: Multiaddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Adds a bootstrap peer: a multiaddr ending in `/p2p/<PeerId>`.
    pub fn bootstrap(mut self, addr: Multiaddr) -> Self {
        self.bootstrap.push(addr);
        self
    }

    /// Adds a local IP for WebRTC's UDP sockets. Default: the IPs of the listen addresses
    /// (so a node listening on 127.0.0.1 offers only loopback candidates), or every
    /// interface plus loopback when listening on `0.0.0.0`.
    pub fn ice_bind(mut self, ip: IpAddr) -> Self {
        self.ice_bind.push(ip);
        self
    }

    /// Adds a STUN server URL (`stun:host:port`, RFC 7064) for every peer connection.
    ///
    /// Without it, a node uses no public server: its peer connections use the STUN and TURN
    /// servers of the kadrtc nodes it is connected to, learnt over `/kadrtc/ice/1.0.0` (at
    /// most 3 STUN servers and 2 relays, asked again after a minute or before relay
    /// credentials expire).
    pub fn ice_server(mut self, url: impl Into<String>) -> Self {
        self.ice_servers.push(url.into());
        self
    }

    /// Answers STUN Binding requests (RFC 8489) on UDP `port` (0 picks one; the standard port
    /// is [`kadrtc_dht::DEFAULT_STUN_PORT`]) at the IP of the first listen address, so that
    /// peers behind NATs learn their public address from this node. Off by default.
    pub fn stun(mut self, port: u16) -> Self {
        self.stun_port = Some(port);
        self
    }

    /// Runs a TURN relay (RFC 8656) on UDP `port` (0 picks one; the documented default is
    /// [`kadrtc_dht::DEFAULT_TURN_PORT`]) at the IP of the first listen address, for peers
    /// that find no direct path. Connected peers get short-lived credentials over the
    /// authenticated libp2p protocol `/kadrtc/ice/1.0.0`. Bounded to
    /// [`DEFAULT_MAX_ALLOCATIONS`] allocations of [`DEFAULT_BYTES_PER_SECOND`] each way
    /// unless set with [`NodeBuilder::relay_limits`]. Off by default.
    pub fn relay(mut self, port: u16) -> Self {
        let options = self.relay.get_or_insert(RelayOptions {
            port,
            relay_ip: None,
            max_allocations: DEFAULT_MAX_ALLOCATIONS,
            bytes_per_second: NonZeroU32::new(DEFAULT_BYTES_PER_SECOND).unwrap_or(NonZeroU32::MIN),
        });
        options.port = port;
        self
    }

    /// Whether this node serves the DHT (stores records and provider records for others and
    /// answers their queries) or only uses it. Default: it serves when it has no bootstrap
    /// peer (it may be the first node of a network) and only uses it otherwise, since a peer
    /// that joins rooms may sit behind a NAT where others cannot dial it. `kadrtc node`
    /// always serves.
    pub fn dht_server(mut self, serve: bool) -> Self {
        self.dht_server = Some(serve);
        self
    }

    /// Finds kadrtc nodes on the local network by multicast DNS (libp2p's mDNS discovery,
    /// RFC 6762 and RFC 6763, on UDP port 5353 of the IPv4 group 224.0.0.251, on every
    /// non-loopback interface) and connects to them, so that peers on one LAN meet with no
    /// bootstrap node: the zero-configuration mode. Works beside bootstrap peers too. Off by
    /// default in the library, since it sends multicast out of every interface of the host;
    /// the `kadrtc` CLI turns it on when it is given no bootstrap node.
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Connects to peers only through TURN relays (`iceTransportPolicy: "relay"`, W3C WebRTC
    /// §4.2.5), so that peers never learn this host's IP addresses. Needs a relay among the
    /// connected nodes; without one every attempt ends in [`crate::RoomError::NoPath`].
    pub fn relay_only(mut self, relay_only: bool) -> Self {
        self.relay_only = relay_only;
        self
    }

    /// The IP relayed traffic goes to, an address of this host (relayed ports are bound on
    /// it), when the first listen address does not name it (for example when listening on
    /// `0.0.0.0`). Call after [`NodeBuilder::relay`]; before it, this is ignored.
    pub fn relay_ip(mut self, ip: IpAddr) -> Self {
        if let Some(options) = self.relay.as_mut() {
            options.relay_ip = Some(ip);
        }
        self
    }

    /// The relay's bounds: allocations held at once, and bytes per second each allocation
    /// relays in each direction (datagrams beyond it are dropped). Call after
    /// [`NodeBuilder::relay`]; before it, this is ignored.
    pub fn relay_limits(mut self, max_allocations: usize, bytes_per_second: NonZeroU32) -> Self {
        if let Some(options) = self.relay.as_mut() {
            options.max_allocations = max_allocations;
            options.bytes_per_second = bytes_per_second;
        }
        self
    }

    /// Starts the node: listens, connects to at least one bootstrap peer (when any is given)
    /// and runs the Kademlia bootstrap.
    ///
    /// # Errors
    ///
    /// [`NodeError::BootstrapWithoutPeerId`] for a bootstrap address without `/p2p/`;
    /// [`NodeError::Dht`] when listening fails or no bootstrap peer answers.
    pub async fn build(self) -> Result<Node, NodeError> {
        for addr in &self.bootstrap {
            if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                return Err(NodeError::BootstrapWithoutPeerId(addr.clone()));
            }
        }
        let keypair = self
            .identity
            .unwrap_or_else(Identity::generate)
            .keypair()
            .clone();
        let listen = if self.listen.is_empty() {
            vec![Multiaddr::empty()
                .with(Protocol::Ip4(Ipv4Addr::UNSPECIFIED))
                .with(Protocol::Tcp(0))]
        } else {
            self.listen
        };
        let ice_bind = if self.ice_bind.is_empty() {
            ice_bind_for(&listen)
        } else {
            self.ice_bind
        };
        let first_ip = listen
            .iter()
            .find_map(listen_ip)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let stun = match self.stun_port {
            Some(port) => {
                let addr = SocketAddr::new(first_ip, port);
                let server = StunServer::bind(addr)
                    .await
                    .map_err(|source| NodeError::Stun { addr, source })?;
                Some(server)
            }
            None => None,
        };
        let relay = match self.relay {
            Some(options) => Some(Arc::new(start_relay(options, first_ip).await?)),
            None => None,
        };
        let mut config = DhtConfig::new(keypair.clone());
        config.listen = listen;
        config.kad_server = self.dht_server.unwrap_or(self.bootstrap.is_empty());
        config.mdns = self.mdns;
        config.bootstrap = self.bootstrap;
        config.ice = IceService {
            stun_port: stun.as_ref().map(|s| s.local_addr().port()),
            relay: relay.clone(),
        };
        let dht = DhtHandle::spawn(config).await?;
        let ice = NetworkIce::new(self.ice_servers.into_iter().map(IceServer::url).collect());
        let inner = Arc::new(NodeInner {
            dht,
            keypair,
            bind_ips: ice_bind,
            relay_only: self.relay_only,
            ice,
            stun,
            relay,
            rooms: Mutex::new(HashSet::new()),
        });
        // Learn the connected nodes' servers now, so that the first peer connection need not
        // wait for them.
        let early = inner.clone();
        tokio::spawn(async move { early.rtc_config().await });
        Ok(Node { inner })
    }
}

impl NodeInner {
    /// The configuration for a new peer connection: this node's bind IPs and the ICE
    /// servers known now (asked again of connected nodes when stale).
    pub(crate) async fn rtc_config(&self) -> RtcConfig {
        RtcConfig {
            bind_ips: self.bind_ips.clone(),
            ice_servers: self.ice.servers(&self.dht).await,
            relay_only: self.relay_only,
            ordered: true,
            any_remote_label: false,
            ice_failed_timeout: kadrtc_rtc::ICE_FAILED_TIMEOUT,
        }
    }
}

/// Starts the TURN relay on the first listen IP (or the relay IP given).
async fn start_relay(options: RelayOptions, first_ip: IpAddr) -> Result<TurnRelay, NodeError> {
    let relay_ip = match options.relay_ip {
        Some(ip) => ip,
        None if !first_ip.is_unspecified() => first_ip,
        None => return Err(NodeError::RelayIpUnknown),
    };
    let bind_ip = if first_ip.is_unspecified() {
        first_ip
    } else {
        relay_ip
    };
    let addr = SocketAddr::new(bind_ip, options.port);
    let mut config = RelayConfig::new(addr, relay_ip);
    config.max_allocations = options.max_allocations;
    config.bytes_per_second = options.bytes_per_second;
    TurnRelay::start(config)
        .await
        .map_err(|source| NodeError::Relay { addr, source })
}

/// WebRTC binds the IPs libp2p listens on; an unspecified IP also brings loopback, which
/// webrtc-rs leaves out of its interface enumeration.
fn ice_bind_for(listen: &[Multiaddr]) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for ip in listen.iter().filter_map(listen_ip) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
        if ip.is_unspecified() {
            let loopback = match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            };
            if !ips.contains(&loopback) {
                ips.push(loopback);
            }
        }
    }
    if ips.is_empty() {
        ips = RtcConfig::all_interfaces().bind_ips;
    }
    ips
}

/// The IP of a listen multiaddr (`/ip4/…` or `/ip6/…`), if it has one.
fn listen_ip(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_binds_follow_the_listen_addresses() {
        let loopback: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        assert_eq!(
            ice_bind_for(&[loopback]),
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/4001".parse().unwrap();
        assert_eq!(
            ice_bind_for(&[any]),
            vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            ]
        );
    }
}
