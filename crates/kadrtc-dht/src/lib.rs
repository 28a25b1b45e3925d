//! kadrtc's libp2p layer: one task owns a `Swarm` running Kademlia (`/kadrtc/kad/1.0.0`),
//! gossipsub, identify and ping over TCP + noise + yamux (and, when [`DhtConfig::mdns`] is set,
//! mDNS discovery on the local network); everything else talks to it through a cheap,
//! cloneable [`DhtHandle`].
//!
//! Words (DESIGN.md): room members are Kademlia **providers** of the room's presence key; each
//! sender's signaling state is a **record** under a mailbox key; the room's **topic** carries
//! the same envelopes fast. Every node validates what it is asked to store or forward: a
//! mailbox record must be a signed, unexpired [`kadrtc_proto::Envelope`] stored under the key
//! its room, sender and recipient derive; a room topic message must be a signed, unexpired
//! envelope of that room, published by the envelope's own signer. Anything else is refused
//! with a log line (and, for gossipsub, a `Reject` that peer scoring counts against the
//! peer that forwarded it). Bodies are sealed: nodes check headers and signatures, never
//! SDPs.
//!
//! Every node bounds what others can make it hold or do; the limits are the `MAX_*`
//! constants below (records stored, providers per key, records and provider records accepted
//! per publisher per minute, topic messages per author per minute, connections). A
//! publisher's first refusal for its rate within a minute is logged as a warning, the rest
//! of its flood at debug level.
//!
//! ```no_run
//! # async fn run() -> Result<(), kadrtc_dht::DhtError> {
//! use kadrtc_dht::{DhtConfig, DhtHandle};
//! let config = DhtConfig::new(libp2p::identity::Keypair::generate_ed25519())
//!     .with_listen("/ip4/127.0.0.1/tcp/0".parse().unwrap());
//! let dht = DhtHandle::spawn(config).await?;
//! println!("listening on {:?}", dht.listen_addrs());
//! let ttl = std::time::Duration::from_secs(60);
//! dht.put_record(b"/kadrtc/mailbox/...".to_vec(), b"signed envelope".to_vec(), ttl).await?;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod event_loop;
mod ice;
mod stun;
mod turn;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use kadrtc_proto::{Envelope, Sealed};
use libp2p::{identity::Keypair, Multiaddr, PeerId};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

pub use event_loop::validate_mailbox_record;
pub use ice::{
    IceAnswerError, IceService, NodeIceServers, ICE_PROTOCOL, ICE_REQUEST_TIMEOUT,
    MAX_ICE_MESSAGE_SIZE,
};
pub use stun::{binding_response, StunServer, DEFAULT_STUN_PORT};
pub use turn::{
    RelayConfig, TurnCredentials, TurnRelay, DEFAULT_BYTES_PER_SECOND, DEFAULT_MAX_ALLOCATIONS,
    DEFAULT_TURN_PORT, TURN_CREDENTIAL_LIFETIME, TURN_REALM,
};

/// Kademlia protocol name: a network of its own, not the IPFS DHT (DESIGN.md, "protocols").
pub const KAD_PROTOCOL: &str = "/kadrtc/kad/1.0.0";
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/kadrtc/id/1.0.0";
/// Kademlia replication factor (k); 20 is the Kademlia paper's and libp2p's default.
pub const DEFAULT_REPLICATION_FACTOR: usize = 20;
/// How long [`Dht::spawn`] waits for a bootstrap peer to answer before giving up.
pub const DEFAULT_BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one Kademlia query may run.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a [`DhtHandle::get_record`] or [`DhtHandle::get_providers`] query goes on once
/// it found a first result from the network (a copy of the record from another node; a
/// provider other than this node), for other nodes' answers (newer copies, more
/// providers), before it ends with what it has. A query ends sooner when every node it
/// asks has answered. Without it, one slow or unreachable node among the k closest held
/// every lookup to [`DEFAULT_QUERY_TIMEOUT`]: on a loaded 200-node network, the median
/// get took 10.8 s (BENCHMARKS.md, item 8).
pub const DEFAULT_LOOKUP_GRACE: Duration = Duration::from_secs(1);
/// Capacity of the command channel from handles to the event loop.
pub const COMMAND_CHANNEL_CAPACITY: usize = 256;
/// Capacity of each topic subscription's message channel; messages beyond it are dropped
/// (the mailbox records still hold the state).
pub const TOPIC_CHANNEL_CAPACITY: usize = 256;
/// Largest gossipsub message, in bytes; envelopes are far smaller.
pub const MAX_TOPIC_MESSAGE_SIZE: usize = 16 * 1024;
/// Most records a single [`DhtHandle::get_record`] returns.
pub const MAX_RECORDS_PER_GET: usize = 16;
/// Most providers a single [`DhtHandle::get_providers`] returns.
pub const MAX_PROVIDERS_PER_GET: usize = 64;
/// How long a connection with no open stream is kept.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// Most records one node stores for others (each at most
/// [`kadrtc_proto::MAX_ENVELOPE_SIZE`]: 32 MiB in all).
pub const MAX_STORED_RECORDS: usize = 4096;
/// Most providers stored per key: room members announcing presence.
pub const MAX_PROVIDERS_PER_KEY: usize = 256;
/// Mailbox records one publisher (the peer sending `PUT_VALUE`) may have stored per minute
/// at one node; more are refused. A member of a full room (64 peers, about five updates per
/// peer and session) stays below it. Records a node hands over to a newcomer
/// ([`DhtConfig::record_handover`]) count too: past this many a minute from one holder, the
/// rest are refused there and live on the other holders only.
pub const MAX_RECORDS_PER_PUBLISHER_PER_MINUTE: u32 = 300;
/// Provider records one publisher may add per minute at one node (one per room joined, and a
/// republication every five minutes).
pub const MAX_PROVIDER_RECORDS_PER_PUBLISHER_PER_MINUTE: u32 = 60;
/// Room topic messages one author (the envelope's signer) may have accepted per minute by one
/// node; more are ignored.
pub const MAX_TOPIC_MESSAGES_PER_AUTHOR_PER_MINUTE: u32 = 600;
/// Publishers and authors whose rates a node tracks at once; while the table is full of
/// peers seen within the last minute, new ones are refused.
pub const MAX_TRACKED_PUBLISHERS: usize = 4096;
/// Established incoming connections a node accepts.
pub const MAX_INCOMING_CONNECTIONS: u32 = 512;
/// Incoming connections in their handshake at once.
pub const MAX_PENDING_INCOMING_CONNECTIONS: u32 = 64;
/// Established connections per remote peer.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Gossipsub peer-score weight of one invalid message on a room topic (P₄ of the gossipsub
/// v1.1 spec, counted squared): two invalid messages cross the gossip threshold (−10), three
/// the graylist threshold (−80), after which the forwarder's messages are ignored.
pub const INVALID_MESSAGE_WEIGHT: f64 = -10.0;

/// How to start a [`Dht`].
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// The node's identity; its `PeerId` names it on the network.
    pub keypair: Keypair,
    /// Addresses to listen on (TCP). Empty means `/ip4/0.0.0.0/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, each a full multiaddr ending in `/p2p/<PeerId>`.
    pub bootstrap: Vec<Multiaddr>,
    /// See [`DEFAULT_REPLICATION_FACTOR`].
    pub replication_factor: NonZeroUsize,
    /// Whether this node hands the records it holds over to peers that join closer to their
    /// keys, so that a record outlives the nodes that first held it. When a peer enters the
    /// routing table, the node sends it every record it holds for which the newcomer is
    /// among the k closest peers the node knows, provided that fewer than three connected
    /// peers it knows are closer to the key than itself: so a few holders send each record,
    /// and one newcomer still waiting for its own copy does not hold up the others. Kademlia
    /// (Maymounkov and Mazières 2002, section 2.5): "when a new node joins the system, it
    /// must store any key-value pair to which it is one of the k closest". Default: on.
    /// libp2p-kad's periodic replication stays at its hour: records live minutes (mailboxes
    /// two), and replicating every minute was measured to cost far more (BENCHMARKS.md, item
    /// 8). Not covered: a node that restarts on the same identity while others still list
    /// it in their routing tables is not new to them, and gets nothing.
    pub record_handover: bool,
    /// See [`DEFAULT_BOOTSTRAP_TIMEOUT`].
    pub bootstrap_timeout: Duration,
    /// See [`DEFAULT_QUERY_TIMEOUT`].
    pub query_timeout: Duration,
    /// See [`DEFAULT_LOOKUP_GRACE`]; `Duration::MAX` turns it off.
    pub lookup_grace: Duration,
    /// The STUN and TURN servers this node offers its peers on [`ICE_PROTOCOL`]; none by
    /// default.
    pub ice: IceService,
    /// Whether this node is a Kademlia server (stores records and providers for others,
    /// answers queries, and is added to others' routing tables) or a client (only asks).
    /// Default: server. A peer behind a NAT should be a client: others cannot dial the
    /// addresses it listens on, and every query that tries them waits for the dial to time
    /// out.
    pub kad_server: bool,
    /// Whether to find other libp2p nodes on the local network by multicast DNS (libp2p's
    /// mDNS discovery, RFC 6762 and RFC 6763 service `_p2p._udp.local`, on UDP port 5353 of
    /// the IPv4 group 224.0.0.251, on every non-loopback IPv4 interface). Each node found
    /// is dialled, and enters the Kademlia routing table when identify shows it serves
    /// [`KAD_PROTOCOL`], so two nodes on one LAN meet with no bootstrap peer. Default: off
    /// (it sends multicast out of every interface of the host).
    pub mdns: bool,
}

/// A cheap, cloneable handle to the event loop that owns the swarm of a running DHT node.
/// Dropping every handle stops the event loop.
#[derive(Debug, Clone)]
pub struct DhtHandle {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    commands: mpsc::Sender<Command>,
    traffic: Arc<event_loop::TrafficCounters>,
    connected: watch::Receiver<usize>,
}

/// Messages a node exchanged since it started, by kind (from [`DhtHandle::traffic`]). Only
/// what a node does on its own accord and what others ask of it are counted; gossipsub's
/// own control messages (subscriptions, mesh grafts, gossip) and identify are not. A
/// Kademlia request that is answered counts at both ends (sent at one, answered at the
/// other); a topic message counts once where it is published and once at every node it is
/// delivered to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Kademlia requests sent, by every query: lookups, puts, provider announcements, and
    /// libp2p-kad's own bootstrap (every bucket refresh), replication and republishing.
    pub kad_requests_sent: u64,
    /// Kademlia requests answered.
    pub kad_requests_received: u64,
    /// Gossipsub messages published.
    pub topic_messages_published: u64,
    /// Gossipsub messages delivered to this node (each once, duplicates dropped).
    pub topic_messages_received: u64,
    /// libp2p pings sent (one every 15 s on each connection, with its answer).
    pub pings: u64,
}

impl Traffic {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.kad_requests_sent
            + self.kad_requests_received
            + self.topic_messages_published
            + self.topic_messages_received
            + self.pings
    }

    /// What was exchanged after `earlier` (a snapshot of the same node).
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            kad_requests_sent: self
                .kad_requests_sent
                .saturating_sub(earlier.kad_requests_sent),
            kad_requests_received: self
                .kad_requests_received
                .saturating_sub(earlier.kad_requests_received),
            topic_messages_published: self
                .topic_messages_published
                .saturating_sub(earlier.topic_messages_published),
            topic_messages_received: self
                .topic_messages_received
                .saturating_sub(earlier.topic_messages_received),
            pings: self.pings.saturating_sub(earlier.pings),
        }
    }

    /// Both together, kind by kind: the traffic of several nodes, or of several periods.
    pub fn plus(&self, other: &Traffic) -> Traffic {
        Traffic {
            kad_requests_sent: self.kad_requests_sent + other.kad_requests_sent,
            kad_requests_received: self.kad_requests_received + other.kad_requests_received,
            topic_messages_published: self.topic_messages_published
                + other.topic_messages_published,
            topic_messages_received: self.topic_messages_received + other.topic_messages_received,
            pings: self.pings + other.pings,
        }
    }
}

/// What one Kademlia query cost: the figures libp2p-kad keeps for it (its `QueryStats`).
/// A lookup is iterative (Kademlia paper §2.3): the querying node asks the closest peers it
/// knows, a few at once, each answer names closer peers to ask next, and the query ends when
/// the replication factor's worth of closest peers it heard of have answered. So `requests`
/// is at least that factor (or the other nodes, when fewer) and grows with the number of
/// rounds, O(log N) in a network of N nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryStats {
    /// Requests the query sent to other nodes (one per node asked).
    pub requests: u32,
    /// Requests that were answered.
    pub successes: u32,
    /// Requests that failed (error, refused stream or timeout).
    pub failures: u32,
    /// From the query's first request to its end; zero when it sent none.
    pub duration: Duration,
}

/// What happens on a subscribed topic.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TopicEvent {
    /// A message arrived and passed validation: a signed, unexpired envelope of this topic's
    /// room published by its signer, already decoded (its signature is not checked again
    /// downstream). The body is still sealed.
    Message {
        /// The peer that published it (gossipsub signed author, equal to `envelope.from`).
        source: Option<PeerId>,
        /// The connected peer that delivered it to this node: the author itself when it is
        /// directly connected, otherwise a relay of the topic mesh.
        propagation_source: PeerId,
        /// The envelope it carried (boxed: it is large beside the other variants).
        envelope: Box<Envelope<Sealed>>,
    },
    /// A connected peer subscribed to the topic.
    PeerSubscribed {
        /// The peer.
        peer: PeerId,
    },
    /// A connected peer that was on the topic already when [`DhtHandle::subscribe`] was
    /// called: its subscription came first and was given to nobody. It has our subscription
    /// now, so it hears what we publish from here on.
    AlreadySubscribed {
        /// The peer.
        peer: PeerId,
    },
}

/// Why a DHT operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The transport could not be built.
    #[error("building the libp2p transport failed: {0}")]
    Transport(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What went wrong.
        reason: String,
    },
    /// A bootstrap address does not end in `/p2p/<PeerId>`.
    #[error("bootstrap address {0} does not end in /p2p/<PeerId>")]
    BootstrapWithoutPeerId(Multiaddr),
    /// No bootstrap peer could be reached: every dial failed, or none answered in time.
    #[error("no bootstrap peer could be reached ({details}); check that the addresses are right and the nodes are running")]
    BootstrapUnreachable {
        /// How long we waited: zero when every dial failed at once.
        timeout: Duration,
        /// What each dial attempt said.
        details: String,
    },
    /// The record or provider store refused the operation.
    #[error("local store: {0}")]
    Store(String),
    /// A Kademlia query failed.
    #[error("query failed: {0}")]
    Query(String),
    /// Publishing on a topic failed (for instance no peer subscribed yet).
    #[error("publish failed: {0}")]
    Publish(String),
    /// Subscribing to a topic failed.
    #[error("subscribe failed: {0}")]
    Subscribe(String),
    /// Asking a node for its STUN and TURN servers failed (not connected, no answer, or a
    /// malformed one).
    #[error("ICE servers request failed: {0}")]
    Ice(String),
    /// mDNS discovery ([`DhtConfig::mdns`]) could not start: the host's network interfaces
    /// could not be watched.
    #[error("cannot start mDNS discovery: {0}")]
    Mdns(#[source] std::io::Error),
    /// The event loop has stopped.
    #[error("the DHT node has stopped")]
    Stopped,
}

/// Where a `get_record` query's values and statistics go.
type RecordsReply = oneshot::Sender<Result<(Vec<Vec<u8>>, QueryStats), DhtError>>;

enum Command {
    StartProviding {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<(), DhtError>>,
    },
    StopProviding {
        key: Vec<u8>,
    },
    GetProviders {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<PeerId>, DhtError>>,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
        reply: oneshot::Sender<Result<(), DhtError>>,
    },
    GetRecord {
        key: Vec<u8>,
        reply: RecordsReply,
    },
    StoredRecord {
        key: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    Subscribe {
        topic: String,
        sender: mpsc::Sender<TopicEvent>,
        reply: oneshot::Sender<Result<(), DhtError>>,
    },
    Unsubscribe {
        topic: String,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), DhtError>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    PeerScore {
        peer: PeerId,
        reply: oneshot::Sender<Option<f64>>,
    },
    IceServers {
        peer: PeerId,
        reply: oneshot::Sender<Result<NodeIceServers, DhtError>>,
    },
}

impl DhtConfig {
    /// A configuration with the given identity and every other field at its default.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            replication_factor: NonZeroUsize::new(DEFAULT_REPLICATION_FACTOR)
                .unwrap_or(NonZeroUsize::MIN),
            record_handover: true,
            bootstrap_timeout: DEFAULT_BOOTSTRAP_TIMEOUT,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            lookup_grace: DEFAULT_LOOKUP_GRACE,
            ice: IceService::default(),
            kad_server: true,
            mdns: false,
        }
    }

    /// Adds a listen address.
    pub fn with_listen(mut self, addr: Multiaddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Adds a bootstrap peer (a multiaddr ending in `/p2p/<PeerId>`).
    pub fn with_bootstrap(mut self, addr: Multiaddr) -> Self {
        self.bootstrap.push(addr);
        self
    }

    /// Sets the Kademlia replication factor.
    pub fn with_replication_factor(mut self, k: NonZeroUsize) -> Self {
        self.replication_factor = k;
        self
    }

    /// Turns the hand-over of records to peers that join closer to their keys on or off
    /// (see [`DhtConfig::record_handover`]).
    pub fn with_record_handover(mut self, on: bool) -> Self {
        self.record_handover = on;
        self
    }
}

impl QueryStats {
    fn from_kad(stats: &libp2p::kad::QueryStats) -> Self {
        Self {
            requests: stats.num_requests(),
            successes: stats.num_successes(),
            failures: stats.num_failures(),
            duration: stats.duration().unwrap_or_default(),
        }
    }
}

impl DhtHandle {
    /// Builds the swarm, starts listening, joins through the bootstrap peers (at least one
    /// must answer) and spawns the event loop on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`DhtError::Listen`] when an address cannot be bound,
    /// [`DhtError::BootstrapWithoutPeerId`] for a bootstrap address without `/p2p/`,
    /// [`DhtError::BootstrapUnreachable`] when no bootstrap peer answers in time.
    pub async fn spawn(config: DhtConfig) -> Result<Self, DhtError> {
        let peer_id = config.keypair.public().to_peer_id();
        let (commands, receiver) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let traffic = Arc::new(event_loop::TrafficCounters::default());
        let (connected_tx, connected) = watch::channel(0);
        let listen_addrs =
            event_loop::start(config, receiver, traffic.clone(), connected_tx).await?;
        Ok(Self {
            peer_id,
            listen_addrs,
            commands,
            traffic,
            connected,
        })
    }

    /// How many peers this node is connected to, updated as connections come and go. When
    /// the last one closes, the node dials its bootstrap peers again (after 1 s, then with
    /// doubling waits up to 30 s) until one answers.
    pub fn connected(&self) -> watch::Receiver<usize> {
        self.connected.clone()
    }

    /// What this node exchanged since it started.
    pub fn traffic(&self) -> Traffic {
        self.traffic.snapshot()
    }

    /// This node's `PeerId`.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses this node listens on, each ending in `/p2p/<PeerId>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.clone()
    }

    /// Announces this node as a provider of `key` and waits for the announcement to reach the
    /// closest peers.
    ///
    /// # Errors
    ///
    /// [`DhtError::Store`] or [`DhtError::Query`].
    pub async fn start_providing(&self, key: Vec<u8>) -> Result<(), DhtError> {
        self.request(|reply| Command::StartProviding { key, reply })
            .await?
    }

    /// Stops announcing this node as a provider of `key` (locally; remote provider records
    /// expire with their TTL).
    pub async fn stop_providing(&self, key: Vec<u8>) {
        let _ = self.commands.send(Command::StopProviding { key }).await;
    }

    /// Finds providers of `key` (at most [`MAX_PROVIDERS_PER_GET`], this node excluded) and
    /// dials those not yet connected; the query ends when every node asked has answered,
    /// [`DhtConfig::lookup_grace`] after the first provider was found, or at the query
    /// timeout.
    ///
    /// # Errors
    ///
    /// [`DhtError::Query`] when the query fails outright.
    pub async fn get_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, DhtError> {
        self.request(|reply| Command::GetProviders { key, reply })
            .await?
    }

    /// Stores a record locally and at the closest peers (quorum one); it expires from the
    /// local store after `ttl`.
    ///
    /// # Errors
    ///
    /// [`DhtError::Store`] when the local store refuses it, [`DhtError::Query`] when no remote
    /// peer stored it.
    pub async fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), DhtError> {
        self.request(|reply| Command::PutRecord {
            key,
            value,
            ttl,
            reply,
        })
        .await?
    }

    /// Fetches every value stored under `key` that the query finds (at most
    /// [`MAX_RECORDS_PER_GET`]) until every node asked has answered, or
    /// [`DhtConfig::lookup_grace`] after another node's first copy was found, or the query
    /// timeout; an empty list when there is none.
    ///
    /// # Errors
    ///
    /// [`DhtError::Query`] when the query fails for another reason than "not found".
    pub async fn get_record(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>, DhtError> {
        let (values, _) = self.get_record_with_stats(key).await?;
        Ok(values)
    }

    /// As [`DhtHandle::get_record`], and what the query cost ([`QueryStats`]: requests sent,
    /// answered and failed, and its duration). For measurements: the local store's copy, if
    /// any, is among the values but costs no request; the query still asks the network.
    ///
    /// # Errors
    ///
    /// As [`DhtHandle::get_record`].
    pub async fn get_record_with_stats(
        &self,
        key: Vec<u8>,
    ) -> Result<(Vec<Vec<u8>>, QueryStats), DhtError> {
        self.request(|reply| Command::GetRecord { key, reply })
            .await?
    }

    /// The value this node itself stores under `key` (for others or as its publisher), if
    /// any and not expired. Asks no other node: for tests and diagnostics of where records
    /// live.
    ///
    /// # Errors
    ///
    /// [`DhtError::Stopped`] when the event loop has stopped.
    pub async fn stored_record(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, DhtError> {
        self.request(|reply| Command::StoredRecord { key, reply })
            .await
    }

    /// Subscribes to `topic`; validated messages and peer subscriptions arrive on the returned
    /// receiver (bounded by [`TOPIC_CHANNEL_CAPACITY`]). It starts with a
    /// [`TopicEvent::AlreadySubscribed`] for each connected peer already on the topic.
    ///
    /// # Errors
    ///
    /// [`DhtError::Subscribe`].
    pub async fn subscribe(&self, topic: String) -> Result<mpsc::Receiver<TopicEvent>, DhtError> {
        let (sender, receiver) = mpsc::channel(TOPIC_CHANNEL_CAPACITY);
        self.request(|reply| Command::Subscribe {
            topic,
            sender,
            reply,
        })
        .await??;
        Ok(receiver)
    }

    /// Leaves `topic`.
    pub async fn unsubscribe(&self, topic: String) {
        let _ = self.commands.send(Command::Unsubscribe { topic }).await;
    }

    /// Publishes `data` on `topic`.
    ///
    /// # Errors
    ///
    /// [`DhtError::Publish`], for instance when no peer is subscribed yet.
    pub async fn publish(&self, topic: String, data: Vec<u8>) -> Result<(), DhtError> {
        self.request(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// The peers this node has a connection to.
    ///
    /// # Errors
    ///
    /// [`DhtError::Stopped`].
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, DhtError> {
        self.request(|reply| Command::ConnectedPeers { reply })
            .await
    }

    /// The gossipsub score this node gives `peer` (gossipsub v1.1 §"Peer scoring"), `None`
    /// when the peer is unknown. Negative after it forwarded invalid room messages.
    ///
    /// # Errors
    ///
    /// [`DhtError::Stopped`].
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, DhtError> {
        self.request(|reply| Command::PeerScore { peer, reply })
            .await
    }

    /// Asks the connected node `peer` for its STUN and TURN servers over [`ICE_PROTOCOL`]
    /// (fresh relay credentials included); addresses use the IP this node reached it at.
    ///
    /// # Errors
    ///
    /// [`DhtError::Ice`] when `peer` is not connected, does not answer within
    /// [`ICE_REQUEST_TIMEOUT`], does not speak the protocol, or answers with malformed
    /// fields.
    pub async fn ice_servers(&self, peer: PeerId) -> Result<NodeIceServers, DhtError> {
        self.request(|reply| Command::IceServers { peer, reply })
            .await?
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DhtError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| DhtError::Stopped)?;
        response.await.map_err(|_| DhtError::Stopped)
    }
}
