//! The task that owns the `Swarm`: builds it, bootstraps, then serves commands and swarm
//! events until every handle is dropped.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use kadrtc_proto::{
    is_presence_key, unix_time_ms, Envelope, EnvelopeError, Sealed, MAILBOX_KEY_PREFIX,
    MAX_ENVELOPE_SIZE,
};
use libp2p::core::Transport as _;
use libp2p::{
    connection_limits::{self, ConnectionLimits},
    gossipsub, identify,
    kad::{self, store::MemoryStore, store::RecordStore as _},
    mdns,
    multiaddr::Protocol,
    noise, ping, request_response,
    swarm::{behaviour::toggle::Toggle, NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ice::{
    IceRequest, IceResponse, IceService, NodeIceServers, ICE_PROTOCOL, ICE_REQUEST_TIMEOUT,
    MAX_ICE_MESSAGE_SIZE,
};
use crate::{
    Command, DhtConfig, DhtError, QueryStats, RecordsReply, TopicEvent, Traffic, IDENTIFY_PROTOCOL,
    IDLE_CONNECTION_TIMEOUT, INVALID_MESSAGE_WEIGHT, KAD_PROTOCOL, MAX_CONNECTIONS_PER_PEER,
    MAX_INCOMING_CONNECTIONS, MAX_PENDING_INCOMING_CONNECTIONS, MAX_PROVIDERS_PER_GET,
    MAX_PROVIDERS_PER_KEY, MAX_PROVIDER_RECORDS_PER_PUBLISHER_PER_MINUTE, MAX_RECORDS_PER_GET,
    MAX_RECORDS_PER_PUBLISHER_PER_MINUTE, MAX_STORED_RECORDS,
    MAX_TOPIC_MESSAGES_PER_AUTHOR_PER_MINUTE, MAX_TOPIC_MESSAGE_SIZE, MAX_TRACKED_PUBLISHERS,
};

/// Most keys this node itself provides.
const MAX_PROVIDED_KEYS: usize = 1024;
/// How long a provider record lives; members republish at half of it while in the room,
/// so members that left drop out of lookups within minutes, not libp2p's default 48 h.
const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a stored record lives at most: an envelope's longest lifetime
/// ([`kadrtc_proto::MAX_ENVELOPE_LIFETIME_MS`]).
const RECORD_TTL: Duration = Duration::from_millis(kadrtc_proto::MAX_ENVELOPE_LIFETIME_MS);
/// Prefix of every room topic (`kadrtc/room/<hex room id>`).
const ROOM_TOPIC_PREFIX: &str = "kadrtc/room/";

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    ice: request_response::json::Behaviour<IceRequest, IceResponse>,
    /// Present only when [`DhtConfig::mdns`] is set.
    mdns: Toggle<mdns::tokio::Behaviour>,
}

struct EventLoop {
    /// Shared with the node's handles: see [`crate::Traffic`].
    traffic: Arc<TrafficCounters>,
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    pending_put: HashMap<kad::QueryId, oneshot::Sender<Result<(), DhtError>>>,
    pending_providing: HashMap<kad::QueryId, oneshot::Sender<Result<(), DhtError>>>,
    pending_providers: HashMap<kad::QueryId, Pending<Vec<PeerId>>>,
    pending_get: HashMap<kad::QueryId, PendingGet>,
    topics: HashMap<gossipsub::TopicHash, (String, mpsc::Sender<TopicEvent>)>,
    record_rate: PublisherRate,
    provider_rate: PublisherRate,
    topic_rate: PublisherRate,
    /// What this node serves on [`ICE_PROTOCOL`].
    ice_service: IceService,
    pending_ice: HashMap<request_response::OutboundRequestId, PendingIce>,
    /// The IP each connected peer was reached at (its most recent connection).
    peer_ips: HashMap<PeerId, IpAddr>,
    /// The bootstrap addresses, dialled again while no peer at all is connected.
    bootstrap: Vec<Multiaddr>,
    /// When to dial them next, and the wait after that: see [`REDIAL_INITIAL`].
    redial: Option<(tokio::time::Instant, Duration)>,
    /// Peers connected now, for [`crate::DhtHandle::connected`].
    connected: watch::Sender<usize>,
    /// Keys this node stores provider records under, for [`EventLoop::purge_expired`].
    provider_keys: HashSet<kad::RecordKey>,
    /// See [`crate::DhtConfig::record_handover`].
    record_handover: bool,
    /// Kademlia's k, for the hand-over.
    replication_factor: usize,
    /// See [`crate::DhtConfig::lookup_grace`].
    lookup_grace: Duration,
}

/// How often expired records and provider records leave the store. libp2p-kad drops them
/// only when it reads them (a lookup of that key), and expired records also at its hourly
/// replication run; in between a node that stores for many rooms would fill its store
/// ([`MAX_STORED_RECORDS`], [`MAX_PROVIDED_KEYS`]) with dead ones and refuse new ones.
const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// How many of the connected holders closest to a record's key hand it over to a newcomer
/// (see [`crate::DhtConfig::record_handover`]): one would do if the closest always held it,
/// but a closer peer may have joined a moment before and not have its own copy yet.
const HANDOVER_SENDERS: usize = 3;
/// Records with less life left than this are not handed over: the envelope inside may
/// already have expired (a publisher's copy lives from its put, a little after the envelope
/// was made), and the newcomer would refuse it.
const HANDOVER_MIN_LIFE: Duration = Duration::from_secs(10);

/// First wait before a node that lost its last connection dials its bootstrap peers again;
/// it doubles up to [`REDIAL_MAX`] for as long as none answers. Without it a node whose
/// bootstrap peers died before it learnt any other peer would stay cut off for good.
const REDIAL_INITIAL: Duration = Duration::from_secs(1);
/// Longest wait between two rounds of bootstrap dials.
const REDIAL_MAX: Duration = Duration::from_secs(30);

/// An [`ICE_PROTOCOL`] request in flight.
struct PendingIce {
    peer: PeerId,
    reply: oneshot::Sender<Result<NodeIceServers, DhtError>>,
}

/// Per-publisher rate limit over a one-minute quota, tracking at most
/// [`MAX_TRACKED_PUBLISHERS`] publishers.
struct PublisherRate {
    /// What is counted, in the plural, for the log ("records").
    what: &'static str,
    limit: u32,
    limiter: DefaultKeyedRateLimiter<PeerId>,
    /// One warning per publisher a minute: a flood's further refusals are debug lines.
    warned: DefaultKeyedRateLimiter<PeerId>,
    /// One warning a minute that the table is full, whoever is refused.
    full_warned: DefaultDirectRateLimiter,
}

/// Why [`PublisherRate::check`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The publisher used up its quota for this minute.
    OverQuota,
    /// [`MAX_TRACKED_PUBLISHERS`] others were seen within the last minute.
    TableFull,
}

/// A `get_record` query whose values are collected until it finishes.
struct PendingGet {
    found: Vec<Vec<u8>>,
    reply: RecordsReply,
    /// When the query is ended with what it found: [`crate::DhtConfig::lookup_grace`]
    /// after its first value.
    finish_at: Option<tokio::time::Instant>,
}

/// A query whose results are collected until it finishes.
struct Pending<T> {
    found: T,
    reply: oneshot::Sender<Result<T, DhtError>>,
    /// As [`PendingGet::finish_at`], from the first result.
    finish_at: Option<tokio::time::Instant>,
}

/// When a lookup's grace, started now, ends; `None` (never) for a grace past what a clock
/// can hold, such as `Duration::MAX`.
fn grace_end(grace: Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(grace)
}

/// Sleeps until `at`, or for ever when `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a node exchanged since it started; read as [`Traffic`].
#[derive(Debug, Default)]
pub(crate) struct TrafficCounters {
    kad_requests_sent: AtomicU64,
    kad_requests_received: AtomicU64,
    topic_messages_published: AtomicU64,
    topic_messages_received: AtomicU64,
    pings: AtomicU64,
}

impl TrafficCounters {
    pub(crate) fn snapshot(&self) -> Traffic {
        Traffic {
            kad_requests_sent: self.kad_requests_sent.load(Ordering::Relaxed),
            kad_requests_received: self.kad_requests_received.load(Ordering::Relaxed),
            topic_messages_published: self.topic_messages_published.load(Ordering::Relaxed),
            topic_messages_received: self.topic_messages_received.load(Ordering::Relaxed),
            pings: self.pings.load(Ordering::Relaxed),
        }
    }
}

/// Adds `n` to one of the [`TrafficCounters`].
fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A `/p2p/<PeerId>`-terminated address split into the peer and its transport address.
fn split_p2p(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let Some(Protocol::P2p(peer)) = addr.iter().last() else {
        return None;
    };
    let transport = addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    Some((peer, transport))
}

/// Builds the swarm, listens, bootstraps and spawns the loop. Returns the full listen
/// addresses.
pub(crate) async fn start(
    config: DhtConfig,
    commands: mpsc::Receiver<Command>,
    traffic: Arc<TrafficCounters>,
    connected_peers: watch::Sender<usize>,
) -> Result<Vec<Multiaddr>, DhtError> {
    let mut swarm = build_swarm(&config)?;
    let local = *swarm.local_peer_id();

    let listen = if config.listen.is_empty() {
        vec!["/ip4/0.0.0.0/tcp/0"
            .parse::<Multiaddr>()
            .map_err(|e| DhtError::Transport(e.to_string()))?]
    } else {
        config.listen.clone()
    };
    let mut listeners = HashSet::new();
    for addr in &listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| DhtError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        listeners.insert(id);
    }

    let mut bootstrap_peers = HashSet::new();
    let mut dial_errors = Vec::new();
    for addr in &config.bootstrap {
        let Some((peer, transport_addr)) = split_p2p(addr) else {
            return Err(DhtError::BootstrapWithoutPeerId(addr.clone()));
        };
        swarm.behaviour_mut().kad.add_address(&peer, transport_addr);
        bootstrap_peers.insert(peer);
        if let Err(error) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, %error, "cannot dial bootstrap peer");
            dial_errors.push(format!("{addr}: {error}"));
        }
    }

    // Wait until every listener has an address and, when bootstrapping, one bootstrap peer
    // is connected.
    let mut addrs = Vec::new();
    let mut peer_ips = HashMap::new();
    let mut connected = bootstrap_peers.is_empty();
    // Every bootstrap address is one dial; give up early only when all of them failed.
    let mut dials_in_flight = config.bootstrap.len() - dial_errors.len();
    if dials_in_flight == 0 && !config.bootstrap.is_empty() {
        return Err(DhtError::BootstrapUnreachable {
            timeout: Duration::ZERO,
            details: dial_errors.join("; "),
        });
    }
    let deadline = tokio::time::sleep(config.bootstrap_timeout);
    tokio::pin!(deadline);
    while !listeners.is_empty() || !connected {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    listeners.remove(&listener_id);
                    addrs.push(address.with_p2p(local).unwrap_or_else(|a| a));
                }
                SwarmEvent::ListenerClosed { listener_id, reason, addresses } if listeners.contains(&listener_id) => {
                    return Err(DhtError::Listen {
                        addr: addresses.first().cloned().unwrap_or_else(Multiaddr::empty),
                        reason: format!("{reason:?}"),
                    });
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                        peer_ips.insert(peer_id, ip);
                    }
                    connected |= bootstrap_peers.contains(&peer_id);
                }
                // A node is announced once per address until its record expires, so what
                // mDNS finds while the node starts must not be dropped.
                SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => {
                    handle_mdns_event(&mut swarm, event);
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } if bootstrap_peers.contains(&peer) => {
                    dial_errors.push(format!("{peer}: {error}"));
                    dials_in_flight = dials_in_flight.saturating_sub(1);
                    if dials_in_flight == 0 && !connected {
                        return Err(DhtError::BootstrapUnreachable {
                            timeout: config.bootstrap_timeout,
                            details: dial_errors.join("; "),
                        });
                    }
                }
                _ => {}
            },
            _ = &mut deadline => {
                if !connected {
                    return Err(DhtError::BootstrapUnreachable {
                        timeout: config.bootstrap_timeout,
                        details: if dial_errors.is_empty() {
                            format!("no answer within {:?}", config.bootstrap_timeout)
                        } else {
                            dial_errors.join("; ")
                        },
                    });
                }
                return Err(DhtError::Listen {
                    addr: listen.first().cloned().unwrap_or_else(Multiaddr::empty),
                    reason: "no listen address reported in time".into(),
                });
            }
        }
    }
    if !config.kad_server {
        // A Kademlia client is in no routing table, so the node storing its provider record
        // knows it only by the addresses the record carries: its external addresses. Without
        // any, lookups would drop the record. Others may not be able to dial these (behind a
        // NAT); the signaling itself then goes through the records, and the data channel
        // through ICE.
        for addr in &addrs {
            let transport: Multiaddr = addr
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            swarm.add_external_address(transport);
        }
    }
    if !bootstrap_peers.is_empty() {
        if let Err(error) = swarm.behaviour_mut().kad.bootstrap() {
            tracing::debug!(%error, "kademlia bootstrap");
        }
    }

    let event_loop = EventLoop {
        swarm,
        commands,
        pending_put: HashMap::new(),
        pending_providing: HashMap::new(),
        pending_providers: HashMap::new(),
        pending_get: HashMap::new(),
        topics: HashMap::new(),
        record_rate: PublisherRate::per_minute("records", MAX_RECORDS_PER_PUBLISHER_PER_MINUTE),
        provider_rate: PublisherRate::per_minute(
            "provider records",
            MAX_PROVIDER_RECORDS_PER_PUBLISHER_PER_MINUTE,
        ),
        topic_rate: PublisherRate::per_minute(
            "topic messages",
            MAX_TOPIC_MESSAGES_PER_AUTHOR_PER_MINUTE,
        ),
        ice_service: config.ice.clone(),
        pending_ice: HashMap::new(),
        peer_ips,
        traffic,
        bootstrap: config.bootstrap.clone(),
        redial: None,
        connected: connected_peers,
        provider_keys: HashSet::new(),
        record_handover: config.record_handover,
        replication_factor: config.replication_factor.get(),
        lookup_grace: config.lookup_grace,
    };
    tokio::spawn(event_loop.run());
    Ok(addrs)
}

/// Checks a mailbox record the way every storing node does: the key has the mailbox
/// namespace, the value is a valid signed envelope (size, signature, times, limits, see
/// [`Envelope::decode`]) and the key is the one its room, sender and recipient derive.
/// `now` is milliseconds since the Unix epoch.
///
/// # Errors
///
/// [`EnvelopeError::WrongMailbox`] for a key outside the namespace, otherwise the error of the
/// failed check.
pub fn validate_mailbox_record(
    key: &[u8],
    value: &[u8],
    now: u64,
) -> Result<Envelope<Sealed>, EnvelopeError> {
    if !key.starts_with(MAILBOX_KEY_PREFIX) {
        return Err(EnvelopeError::WrongMailbox);
    }
    let envelope = Envelope::decode(value, now)?;
    envelope.check_mailbox_key(key)?;
    Ok(envelope)
}

/// The IP of a connection's remote address.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// What mDNS reported ([`DhtConfig::mdns`]): every node found on the local network is dialled
/// when not connected. It enters the Kademlia routing table the way every peer does, once
/// identify shows that it serves [`KAD_PROTOCOL`]: mDNS (`_p2p._udp.local`) also finds other
/// libp2p programs (IPFS nodes, for instance) and kadrtc nodes in Kademlia client mode, and
/// neither belongs in the table. Expired addresses need nothing: Kademlia drops peers that
/// stop answering on its own.
fn handle_mdns_event(swarm: &mut Swarm<Behaviour>, event: mdns::Event) {
    match event {
        mdns::Event::Discovered(found) => {
            let mut dialled = HashSet::new();
            for (peer, addr) in found {
                tracing::debug!(%peer, %addr, "found on the local network by mDNS");
                // One dial per peer, by peer id: the mDNS behaviour gives the swarm every
                // address it found for the peer.
                if !swarm.is_connected(&peer) && dialled.insert(peer) {
                    if let Err(error) = swarm.dial(peer) {
                        tracing::debug!(%peer, %error, "cannot dial a node found by mDNS");
                    }
                }
            }
        }
        mdns::Event::Expired(expired) => {
            for (peer, addr) in expired {
                tracing::debug!(%peer, %addr, "mDNS record expired");
            }
        }
    }
}

fn build_swarm(config: &DhtConfig) -> Result<Swarm<Behaviour>, DhtError> {
    let kad_protocol = StreamProtocol::new(KAD_PROTOCOL);
    let mdns = if config.mdns {
        let local = config.keypair.public().to_peer_id();
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local).map_err(DhtError::Mdns)?)
    } else {
        None
    };
    let replication_factor = config.replication_factor;
    let query_timeout = config.query_timeout;
    let kad_server = config.kad_server;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| DhtError::Transport(e.to_string()))?
        // `/memory/N` addresses: whole networks inside one process (tests, the scale
        // harness of testnet/scale.sh), without a socket per connection.
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                libp2p::core::transport::MemoryTransport::default()
                    .upgrade(libp2p::core::upgrade::Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default()),
            )
        })
        .map_err(|e| DhtError::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(kad_protocol);
            kad_config
                .set_replication_factor(replication_factor)
                .set_query_timeout(query_timeout)
                .set_record_filtering(kad::StoreInserts::FilterBoth)
                .set_record_ttl(Some(RECORD_TTL))
                .set_publication_interval(None)
                .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL))
                .set_provider_publication_interval(Some(PROVIDER_RECORD_TTL / 2));
            let store = MemoryStore::with_config(
                local,
                kad::store::MemoryStoreConfig {
                    max_records: MAX_STORED_RECORDS,
                    max_value_bytes: MAX_ENVELOPE_SIZE,
                    max_provided_keys: MAX_PROVIDED_KEYS,
                    max_providers_per_key: MAX_PROVIDERS_PER_KEY,
                },
            );
            let mut kad = kad::Behaviour::with_config(local, store, kad_config);
            // On loopback and private networks AutoNAT never confirms an external address,
            // so the mode is set explicitly (DESIGN.md facts).
            kad.set_mode(Some(if kad_server {
                kad::Mode::Server
            } else {
                kad::Mode::Client
            }));

            let gossipsub_config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(MAX_TOPIC_MESSAGE_SIZE)
                .heartbeat_interval(Duration::from_millis(500))
                .build()
                .map_err(|e| e.to_string())?;
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub_config,
            )?;
            gossipsub.with_peer_score(
                peer_score_params(),
                gossipsub::PeerScoreThresholds::default(),
            )?;
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("kadrtc/{}", env!("CARGO_PKG_VERSION"))),
            );
            let limits = connection_limits::Behaviour::new(
                ConnectionLimits::default()
                    .with_max_established_incoming(Some(MAX_INCOMING_CONNECTIONS))
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING_CONNECTIONS))
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
            );
            let ice = request_response::json::Behaviour::with_codec(
                request_response::json::codec::Codec::default()
                    .set_request_size_maximum(MAX_ICE_MESSAGE_SIZE)
                    .set_response_size_maximum(MAX_ICE_MESSAGE_SIZE),
                [(
                    StreamProtocol::new(ICE_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(ICE_REQUEST_TIMEOUT),
            );
            Ok(Behaviour {
                limits,
                kad,
                gossipsub,
                identify,
                ping: ping::Behaviour::default(),
                ice,
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| DhtError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

impl EventLoop {
    /// Publishes the number of connected peers on [`crate::DhtHandle::connected`], waking
    /// its watchers only when it changed, and returns it.
    fn report_connected(&self) -> usize {
        let peers = self.swarm.connected_peers().count();
        self.connected.send_if_modified(|current| {
            let changed = *current != peers;
            *current = peers;
            changed
        });
        peers
    }

    async fn run(mut self) {
        self.report_connected();
        let mut purge = tokio::time::interval(PURGE_INTERVAL);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let redial_at = self.redial.map(|(at, _)| at);
            let lookup_due = self
                .pending_get
                .values()
                .filter_map(|get| get.finish_at)
                .chain(
                    self.pending_providers
                        .values()
                        .filter_map(|get| get.finish_at),
                )
                .min();
            tokio::select! {
                _ = purge.tick() => self.purge_expired(),
                () = sleep_until_some(lookup_due) => self.finish_due_lookups(),
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => return,
                },
                () = sleep_until_some(redial_at) => self.redial_bootstrap(),
            }
        }
    }

    /// Ends the `get_record` and `get_providers` queries whose grace after their first
    /// result has passed; each replies with what it found when libp2p-kad reports the query
    /// finished.
    fn finish_due_lookups(&mut self) {
        let now = tokio::time::Instant::now();
        let due = |finish_at: &mut Option<tokio::time::Instant>| {
            let due = finish_at.is_some_and(|at| at <= now);
            if due {
                *finish_at = None;
            }
            due
        };
        let mut ids: Vec<kad::QueryId> = Vec::new();
        for (id, get) in &mut self.pending_get {
            if due(&mut get.finish_at) {
                ids.push(*id);
            }
        }
        for (id, lookup) in &mut self.pending_providers {
            if due(&mut lookup.finish_at) {
                ids.push(*id);
            }
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        for id in ids {
            if let Some(mut query) = kad.query_mut(&id) {
                query.finish();
            }
        }
    }

    /// Sends `newcomer` the records this node holds that it should hold too (see
    /// [`crate::DhtConfig::record_handover`]): those for which it is among the k closest
    /// peers known here, and for which this node is among the [`HANDOVER_SENDERS`] closest
    /// connected peers (itself included).
    fn hand_over_records(&mut self, newcomer: PeerId) {
        let local = kad::KBucketKey::from(*self.swarm.local_peer_id());
        let k = self.replication_factor;
        let now = std::time::Instant::now();
        let keys: Vec<kad::RecordKey> = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .records()
            .filter(|record| {
                record
                    .expires
                    .is_none_or(|expires| expires > now + HANDOVER_MIN_LIFE)
            })
            .map(|record| record.key.clone())
            .collect();
        let mut handed = 0;
        for key in keys {
            let target = kad::KBucketKey::new(key.clone());
            let closest: Vec<kad::KBucketKey<PeerId>> = self
                .swarm
                .behaviour_mut()
                .kad
                .get_closest_local_peers(&target)
                .take(k)
                .collect();
            if !closest.iter().any(|peer| *peer.preimage() == newcomer) {
                continue;
            }
            // Peers that left stay in the routing table: only connected ones count.
            let closer = closest
                .iter()
                .filter(|peer| *peer.preimage() != newcomer)
                .filter(|peer| peer.distance(&target) < local.distance(&target))
                .filter(|peer| self.swarm.is_connected(peer.preimage()))
                .count();
            if closer >= HANDOVER_SENDERS {
                continue;
            }
            let kad = &mut self.swarm.behaviour_mut().kad;
            // Only the records handed over are copied out of the store.
            if let Some(record) = kad.store_mut().get(&key).map(std::borrow::Cow::into_owned) {
                kad.put_record_to(record, std::iter::once(newcomer), kad::Quorum::One);
                handed += 1;
            }
        }
        if handed > 0 {
            tracing::debug!(%newcomer, records = handed, "records handed over to a closer newcomer");
        }
    }

    /// Removes expired records and provider records from the store (see [`PURGE_INTERVAL`]).
    fn purge_expired(&mut self) {
        let now = std::time::Instant::now();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let expired: Vec<kad::RecordKey> = store
            .records()
            .filter(|record| record.is_expired(now))
            .map(|record| record.key.clone())
            .collect();
        for key in &expired {
            store.remove(key);
        }
        let mut providers_removed = 0;
        self.provider_keys.retain(|key| {
            let providers = store.providers(key);
            let mut left = providers.len();
            for provider in providers.iter().filter(|p| p.is_expired(now)) {
                store.remove_provider(key, &provider.provider);
                providers_removed += 1;
                left -= 1;
            }
            left > 0
        });
        if !expired.is_empty() || providers_removed > 0 {
            tracing::debug!(
                records = expired.len(),
                providers = providers_removed,
                "expired records removed from the store"
            );
        }
    }

    /// Dials every bootstrap address again (while no peer is connected) and schedules the
    /// next round.
    fn redial_bootstrap(&mut self) {
        let Some((_, wait)) = self.redial else {
            return;
        };
        if self.swarm.connected_peers().next().is_some() {
            self.redial = None;
            return;
        }
        tracing::info!(
            bootstraps = self.bootstrap.len(),
            "no peer connected; dialling the bootstrap peers again"
        );
        for addr in self.bootstrap.clone() {
            if let Some((peer, transport)) = split_p2p(&addr) {
                self.swarm.behaviour_mut().kad.add_address(&peer, transport);
            }
            if let Err(error) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, %error, "bootstrap redial");
            }
        }
        self.redial = Some((
            tokio::time::Instant::now() + wait,
            (wait * 2).min(REDIAL_MAX),
        ));
    }

    fn handle_command(&mut self, command: Command) {
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::StartProviding { key, reply } => {
                match behaviour.kad.start_providing(kad::RecordKey::new(&key)) {
                    Ok(id) => {
                        self.pending_providing.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(DhtError::Store(e.to_string())));
                    }
                }
            }
            Command::StopProviding { key } => {
                behaviour.kad.stop_providing(&kad::RecordKey::new(&key))
            }
            Command::GetProviders { key, reply } => {
                let id = behaviour.kad.get_providers(kad::RecordKey::new(&key));
                self.pending_providers.insert(
                    id,
                    Pending {
                        found: Vec::new(),
                        reply,
                        finish_at: None,
                    },
                );
            }
            Command::PutRecord {
                key,
                value,
                ttl,
                reply,
            } => {
                let mut record = kad::Record::new(key, value);
                record.expires = Some(std::time::Instant::now() + ttl);
                match behaviour.kad.put_record(record, kad::Quorum::One) {
                    Ok(id) => {
                        self.pending_put.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(DhtError::Store(e.to_string())));
                    }
                }
            }
            Command::GetRecord { key, reply } => {
                let id = behaviour.kad.get_record(kad::RecordKey::new(&key));
                self.pending_get.insert(
                    id,
                    PendingGet {
                        found: Vec::new(),
                        reply,
                        finish_at: None,
                    },
                );
            }
            Command::StoredRecord { key, reply } => {
                let now = std::time::Instant::now();
                let value = behaviour
                    .kad
                    .store_mut()
                    .get(&kad::RecordKey::new(&key))
                    .filter(|record| !record.is_expired(now))
                    .map(|record| record.value.clone());
                let _ = reply.send(value);
            }
            Command::Subscribe {
                topic,
                sender,
                reply,
            } => {
                let ident = gossipsub::IdentTopic::new(topic.clone());
                let result = behaviour
                    .gossipsub
                    .subscribe(&ident)
                    .map(|_| ())
                    .map_err(|e| DhtError::Subscribe(e.to_string()))
                    .and_then(|()| {
                        behaviour
                            .gossipsub
                            .set_topic_params(ident.clone(), room_topic_score_params())
                            .map_err(|e| DhtError::Subscribe(e.to_string()))
                    });
                if result.is_ok() {
                    // Peers whose subscription arrived before ours were announced to nobody.
                    let hash = ident.hash();
                    for (peer, topics) in behaviour.gossipsub.all_peers() {
                        if topics.contains(&&hash) {
                            let _ = sender.try_send(TopicEvent::AlreadySubscribed { peer: *peer });
                        }
                    }
                    self.topics.insert(hash, (topic, sender));
                }
                let _ = reply.send(result);
            }
            Command::Unsubscribe { topic } => {
                let ident = gossipsub::IdentTopic::new(topic);
                behaviour.gossipsub.unsubscribe(&ident);
                self.topics.remove(&ident.hash());
            }
            Command::Publish { topic, data, reply } => {
                let result = behaviour
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(topic), data)
                    .map(|_| count(&self.traffic.topic_messages_published, 1))
                    .map_err(|e| DhtError::Publish(e.to_string()));
                let _ = reply.send(result);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::PeerScore { peer, reply } => {
                let _ = reply.send(behaviour.gossipsub.peer_score(&peer));
            }
            Command::IceServers { peer, reply } => {
                if !self.peer_ips.contains_key(&peer) {
                    let _ = reply.send(Err(DhtError::Ice(format!("not connected to {peer}"))));
                    return;
                }
                let id = behaviour.ice.send_request(&peer, IceRequest::default());
                self.pending_ice.insert(id, PendingIce { peer, reply });
            }
        }
    }

    fn handle_ice_event(&mut self, event: request_response::Event<IceRequest, IceResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message: Message::Request { channel, .. },
                ..
            } => {
                tracing::debug!(%peer, "ICE servers asked for");
                let answer = self.ice_service.answer();
                if self
                    .swarm
                    .behaviour_mut()
                    .ice
                    .send_response(channel, answer)
                    .is_err()
                {
                    tracing::debug!(%peer, "ICE answer not sent: connection gone");
                }
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some(PendingIce { peer, reply }) = self.pending_ice.remove(&request_id) else {
                    return;
                };
                let result = match self.peer_ips.get(&peer) {
                    Some(ip) => response
                        .servers_at(*ip, SystemTime::now())
                        .map_err(|error| {
                            tracing::warn!(%peer, %error, "malformed ICE answer refused");
                            DhtError::Ice(format!("malformed answer from {peer}: {error}"))
                        }),
                    None => Err(DhtError::Ice(format!("{peer} disconnected"))),
                };
                let _ = reply.send(result);
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(PendingIce { peer, reply }) = self.pending_ice.remove(&request_id) {
                    let _ = reply.send(Err(DhtError::Ice(format!("{peer}: {error}"))));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "ICE request not answered");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.handle_kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => {
                self.handle_gossipsub_event(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL) => {
                // Only peers that speak our Kademlia protocol belong in the routing table.
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "listening");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ice(event)) => self.handle_ice_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => {
                handle_mdns_event(&mut self.swarm, event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(_)) => {
                count(&self.traffic.pings, 1);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let addr = endpoint.get_remote_address();
                tracing::debug!(%peer_id, %addr, "connected");
                if let Some(ip) = ip_of(addr) {
                    self.peer_ips.insert(peer_id, ip);
                }
                if self.redial.take().is_some() {
                    // Back in the network: refill the routing table from there.
                    tracing::info!(%peer_id, "connected again after losing every peer");
                    if let Err(error) = self.swarm.behaviour_mut().kad.bootstrap() {
                        tracing::debug!(%error, "kademlia bootstrap");
                    }
                }
                self.report_connected();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, "connection closed");
                if num_established == 0 {
                    self.peer_ips.remove(&peer_id);
                }
                let peers = self.report_connected();
                if peers == 0 && !self.bootstrap.is_empty() && self.redial.is_none() {
                    tracing::warn!("lost the last connection to the network; dialling the bootstrap peers again");
                    self.redial = Some((
                        tokio::time::Instant::now() + REDIAL_INITIAL,
                        REDIAL_INITIAL * 2,
                    ));
                }
            }
            _ => {}
        }
    }

    fn handle_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest { request } => {
                count(&self.traffic.kad_requests_received, 1);
                self.handle_inbound(request)
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => {
                // A query's stats add up over its steps, except a bootstrap's: each of its
                // steps is a lookup of its own (one per bucket refreshed) with fresh stats.
                if step.last || matches!(result, kad::QueryResult::Bootstrap(_)) {
                    count(
                        &self.traffic.kad_requests_sent,
                        u64::from(stats.num_requests()),
                    );
                    tracing::trace!(target: "kadrtc_dht::queries", kind = query_kind(&result), requests = stats.num_requests(), "query requests");
                }
                self.handle_query_result(id, result, step, stats);
            }
            kad::Event::RoutingUpdated {
                peer, is_new_peer, ..
            } => {
                tracing::trace!(%peer, is_new_peer, "routing table updated");
                if is_new_peer && self.record_handover {
                    self.hand_over_records(peer);
                }
            }
            _ => {}
        }
    }

    fn handle_query_result(
        &mut self,
        id: kad::QueryId,
        result: kad::QueryResult,
        step: kad::ProgressStep,
        stats: libp2p::kad::QueryStats,
    ) {
        match result {
            kad::QueryResult::PutRecord(result) => {
                if let Some(reply) = self.pending_put.remove(&id) {
                    let _ = reply.send(
                        result
                            .map(|_| ())
                            .map_err(|e| DhtError::Query(e.to_string())),
                    );
                }
            }
            kad::QueryResult::StartProviding(result) => {
                if let Some(reply) = self.pending_providing.remove(&id) {
                    let _ = reply.send(
                        result
                            .map(|_| ())
                            .map_err(|e| DhtError::Query(e.to_string())),
                    );
                }
            }
            kad::QueryResult::GetProviders(result) => {
                let local = *self.swarm.local_peer_id();
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = &result {
                    for peer in providers.iter().filter(|p| **p != local) {
                        // Dial while the query still knows the provider's addresses, so
                        // that room members share gossipsub connections.
                        if !self.swarm.is_connected(peer) {
                            if let Err(error) = self.swarm.dial(*peer) {
                                tracing::debug!(%peer, %error, "cannot dial provider");
                            }
                        }
                    }
                    if let Some(Pending {
                        found, finish_at, ..
                    }) = self.pending_providers.get_mut(&id)
                    {
                        for peer in providers.iter().filter(|p| **p != local) {
                            if finish_at.is_none() {
                                *finish_at = grace_end(self.lookup_grace);
                            }
                            if found.len() < MAX_PROVIDERS_PER_GET && !found.contains(peer) {
                                found.push(*peer);
                            }
                        }
                    }
                }
                if let Err(error) = &result {
                    tracing::debug!(%error, "get_providers");
                }
                if step.last || result.is_err() {
                    // A timed-out query still returns what it found.
                    if let Some(Pending { found, reply, .. }) = self.pending_providers.remove(&id) {
                        let _ = reply.send(Ok(found));
                    }
                }
            }
            kad::QueryResult::GetRecord(result) => {
                let finished = step.last;
                match result {
                    Ok(kad::GetRecordOk::FoundRecord(found)) => {
                        if let Some(PendingGet {
                            found: values,
                            finish_at,
                            ..
                        }) = self.pending_get.get_mut(&id)
                        {
                            // The local store's copy comes first, before any node was asked.
                            if finish_at.is_none() && found.peer.is_some() {
                                *finish_at = grace_end(self.lookup_grace);
                            }
                            if values.len() < MAX_RECORDS_PER_GET
                                && !values.contains(&found.record.value)
                            {
                                values.push(found.record.value);
                            }
                        }
                    }
                    Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(error) => {
                        tracing::trace!(%error, "get_record");
                    }
                }
                if finished {
                    if let Some(PendingGet {
                        found: values,
                        reply,
                        ..
                    }) = self.pending_get.remove(&id)
                    {
                        let _ = reply.send(Ok((values, QueryStats::from_kad(&stats))));
                    }
                }
            }
            _ => {}
        }
    }

    fn handle_inbound(&mut self, request: kad::InboundRequest) {
        let now = unix_time_ms();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        match request {
            kad::InboundRequest::PutRecord {
                source,
                record: Some(_),
                ..
            } if !self.record_rate.allow(source) => {}
            kad::InboundRequest::PutRecord {
                source,
                record: Some(mut record),
                ..
            } => match validate_mailbox_record(record.key.as_ref(), &record.value, now)
                .and_then(|envelope| newer_than_stored(store, &record, envelope, now))
            {
                Ok(envelope) => {
                    // The record lives no longer than the envelope it holds.
                    let left = Duration::from_millis(envelope.expires_at.saturating_sub(now));
                    let expires = std::time::Instant::now() + left;
                    record.expires = Some(record.expires.map_or(expires, |e| e.min(expires)));
                    if let Err(error) = store.put(record) {
                        tracing::warn!(%source, %error, "record not stored");
                    } else {
                        tracing::debug!(%source, from = %envelope.from, seq = envelope.seq, "stored mailbox record");
                    }
                }
                // A holder that passes on a record it stores for its publisher (a hand-over
                // to a newcomer, libp2p-kad's replication) can be slow enough on a busy node
                // for the record to expire on the way. That is lateness, not an attack.
                Err(error @ EnvelopeError::Expired { .. })
                    if record
                        .publisher
                        .is_some_and(|publisher| publisher != source) =>
                {
                    tracing::debug!(%source, %error, "replicated record expired on the way");
                }
                Err(error) => {
                    tracing::warn!(%source, %error, "rejected record: {}", error_chain(&error));
                }
            },
            // libp2p-kad has checked that the record names its publisher; the publisher must
            // be within its rate and the key a sha2-256 multihash.
            kad::InboundRequest::AddProvider {
                record: Some(record),
            } if !self.provider_rate.allow(record.provider) => {}
            kad::InboundRequest::AddProvider {
                record: Some(record),
            } => {
                if is_presence_key(record.key.as_ref()) {
                    let key = record.key.clone();
                    match store.add_provider(record) {
                        Ok(()) => {
                            self.provider_keys.insert(key);
                        }
                        Err(error) => tracing::warn!(%error, "provider record not stored"),
                    }
                } else {
                    tracing::warn!(provider = %record.provider, "rejected provider record: key is not a sha2-256 multihash");
                }
            }
            _ => {}
        }
    }

    fn handle_gossipsub_event(&mut self, event: gossipsub::Event) {
        let (propagation_source, message_id, message) = match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                count(&self.traffic.topic_messages_received, 1);
                (propagation_source, message_id, message)
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some((_, sender)) = self.topics.get(&topic) {
                    let _ = sender.try_send(TopicEvent::PeerSubscribed { peer: peer_id });
                }
                return;
            }
            _ => return,
        };
        let acceptance = match self.topics.get(&message.topic) {
            Some((topic, _))
                if !message
                    .source
                    .is_some_and(|author| self.topic_rate.allow(author)) =>
            {
                tracing::debug!(%topic, "topic message ignored");
                gossipsub::MessageAcceptance::Ignore
            }
            Some((topic, sender)) => {
                match validate_topic_message(topic, message.source, &message.data) {
                    Ok(envelope) => {
                        let delivered = TopicEvent::Message {
                            source: message.source,
                            propagation_source,
                            envelope: Box::new(envelope),
                        };
                        if sender.try_send(delivered).is_err() {
                            tracing::debug!(%topic, "subscriber is slow or gone; message dropped");
                        }
                        gossipsub::MessageAcceptance::Accept
                    }
                    // Whether an envelope has expired depends on the clock of whoever checks it and
                    // when: an honest forwarder must not be penalised for one that expired in
                    // flight, or for clocks that disagree.
                    Err(
                        error
                        @ (EnvelopeError::Expired { .. } | EnvelopeError::InvalidTimes { .. }),
                    ) => {
                        tracing::warn!(%propagation_source, source = ?message.source, "ignored topic message: {}", error_chain(&error));
                        gossipsub::MessageAcceptance::Ignore
                    }
                    Err(error) => {
                        tracing::warn!(%propagation_source, source = ?message.source, "rejected topic message: {}", error_chain(&error));
                        gossipsub::MessageAcceptance::Reject
                    }
                }
            }
            None => gossipsub::MessageAcceptance::Ignore,
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &propagation_source, acceptance);
    }
}

/// Refuses to replace a stored mailbox envelope with an older one (an earlier session, or a
/// lower `seq` of the same session): a replay must not roll a mailbox back.
fn newer_than_stored(
    store: &mut MemoryStore,
    record: &kad::Record,
    envelope: Envelope<Sealed>,
    now: u64,
) -> Result<Envelope<Sealed>, EnvelopeError> {
    let Some(stored) = store.get(&record.key) else {
        return Ok(envelope);
    };
    let Ok(stored) = Envelope::decode(&stored.value, now) else {
        // Expired or otherwise invalid: anything valid may replace it.
        return Ok(envelope);
    };
    let older = if stored.session == envelope.session {
        envelope.seq < stored.seq
    } else {
        envelope.created_at < stored.created_at
    };
    if older {
        return Err(EnvelopeError::Stale);
    }
    Ok(envelope)
}

/// A room topic message must be a valid envelope of that topic's room, published by the
/// envelope's signer (so that one libp2p identity cannot speak for many).
fn validate_topic_message(
    topic: &str,
    author: Option<PeerId>,
    data: &[u8],
) -> Result<Envelope<Sealed>, EnvelopeError> {
    let envelope = Envelope::decode(data, unix_time_ms())?;
    if topic.starts_with(ROOM_TOPIC_PREFIX) && envelope.room_id.topic() != topic {
        return Err(EnvelopeError::WrongRoom);
    }
    if author != Some(envelope.from) {
        return Err(EnvelopeError::AuthorMismatch {
            from: envelope.from,
            author: author.map(Box::new),
        });
    }
    Ok(envelope)
}

/// Peer scoring for a network where many honest peers share an address (loopback testnets,
/// homes behind one NAT) and room topics are quiet: no IP colocation penalty and no
/// mesh-delivery quota, so that the score moves with invalid messages (P₄) and stays near
/// zero otherwise.
fn peer_score_params() -> gossipsub::PeerScoreParams {
    gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    }
}

/// Score parameters of every room topic (gossipsub v1.1 §"Topic parameter calculation"):
/// a little credit for time in mesh and first deliveries, capped so that it never outweighs
/// invalid messages, whose penalty decays by a tenth a second.
fn room_topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.1,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 10.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    }
}

impl PublisherRate {
    /// At most `limit` `what` (plural, for the log) per publisher and minute.
    fn per_minute(what: &'static str, limit: u32) -> Self {
        let quota = NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN);
        Self {
            what,
            limit,
            limiter: DefaultKeyedRateLimiter::hashmap(Quota::per_minute(quota)),
            warned: DefaultKeyedRateLimiter::hashmap(Quota::per_minute(NonZeroU32::MIN)),
            full_warned: DefaultDirectRateLimiter::direct(Quota::per_minute(NonZeroU32::MIN)),
        }
    }

    /// Counts one event of `publisher`; false, and logged, when [`Self::check`] refuses it.
    /// A publisher's first refusal within a minute is a warning, the rest debug lines, and so
    /// is all but one a minute of the refusals for a full table: a flood past the limits
    /// must not become a flood of the log.
    fn allow(&mut self, publisher: PeerId) -> bool {
        let Err(refusal) = self.check(publisher) else {
            return true;
        };
        let (what, limit) = (self.what, self.limit);
        if self.first_refusal(publisher, refusal) {
            match refusal {
                Refusal::OverQuota => {
                    tracing::warn!(%publisher, limit, "refused {what}: publisher over its {what} per minute (more refusals of it within a minute are logged at debug)")
                }
                Refusal::TableFull => {
                    tracing::warn!(%publisher, tracked = MAX_TRACKED_PUBLISHERS, "refused {what}: too many publishers within the last minute")
                }
            }
        } else {
            tracing::debug!(%publisher, ?refusal, "refused {what}");
        }
        false
    }

    /// Whether this refusal is the first within a minute: of `publisher` past its quota, or
    /// of anyone for a full table. Counts it.
    fn first_refusal(&mut self, publisher: PeerId, refusal: Refusal) -> bool {
        match refusal {
            Refusal::OverQuota => {
                has_room(&mut self.warned) && self.warned.check_key(&publisher).is_ok()
            }
            Refusal::TableFull => self.full_warned.check().is_ok(),
        }
    }

    /// Counts one event of `publisher`.
    ///
    /// # Errors
    ///
    /// [`Refusal::OverQuota`] past its quota, [`Refusal::TableFull`] when the table is full
    /// of publishers seen within the last minute.
    fn check(&mut self, publisher: PeerId) -> Result<(), Refusal> {
        if !has_room(&mut self.limiter) {
            return Err(Refusal::TableFull);
        }
        self.limiter
            .check_key(&publisher)
            .map_err(|_| Refusal::OverQuota)
    }
}

/// The kind of a query, for the log.
fn query_kind(result: &kad::QueryResult) -> &'static str {
    match result {
        kad::QueryResult::Bootstrap(_) => "bootstrap",
        kad::QueryResult::GetClosestPeers(_) => "get_closest_peers",
        kad::QueryResult::GetProviders(_) => "get_providers",
        kad::QueryResult::StartProviding(_) => "start_providing",
        kad::QueryResult::RepublishProvider(_) => "republish_provider",
        kad::QueryResult::GetRecord(_) => "get_record",
        kad::QueryResult::PutRecord(_) => "put_record",
        kad::QueryResult::RepublishRecord(_) => "republish_record",
    }
}

/// Whether `limiter` has room for one more publisher: it tracks fewer than
/// [`MAX_TRACKED_PUBLISHERS`], once those not seen within its period are forgotten.
fn has_room(limiter: &mut DefaultKeyedRateLimiter<PeerId>) -> bool {
    if limiter.len() < MAX_TRACKED_PUBLISHERS {
        return true;
    }
    limiter.retain_recent();
    limiter.len() < MAX_TRACKED_PUBLISHERS
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_over_its_quota_is_refused_and_only_its_first_refusal_is_warned_about() {
        let mut rate = PublisherRate::per_minute("records", 3);
        let (flooder, other) = (PeerId::random(), PeerId::random());
        for _ in 0..3 {
            assert_eq!(rate.check(flooder), Ok(()));
        }
        assert_eq!(rate.check(flooder), Err(Refusal::OverQuota));
        assert!(
            rate.first_refusal(flooder, Refusal::OverQuota),
            "the first refusal is told"
        );
        for _ in 0..100 {
            assert!(!rate.allow(flooder));
        }
        assert!(
            !rate.first_refusal(flooder, Refusal::OverQuota),
            "the flood's others are not"
        );
        // Another publisher has its own quota, and its own first refusal.
        for _ in 0..3 {
            assert!(rate.allow(other));
        }
        assert!(!rate.allow(other));
        assert!(
            !rate.first_refusal(other, Refusal::OverQuota),
            "allow told its first refusal"
        );
        // A full table is told once a minute, whoever is refused.
        assert!(rate.first_refusal(PeerId::random(), Refusal::TableFull));
        assert!(!rate.first_refusal(PeerId::random(), Refusal::TableFull));
    }
}
