//! [`Room`]: membership of one room, with a data channel to every other member.
//!
//! One task per room (the room actor) owns the per-peer [`Negotiation`] state machines and
//! the WebRTC peer connections; the [`Room`] handle talks to it through bounded channels and
//! reads open channels from a shared map to send without a round trip.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use kadrtc_dht::{DhtHandle, TopicEvent};
use kadrtc_proto::{
    unix_time_ms, Action, BindingError, Body, ChannelBinding, Disposition, Envelope, EnvelopeError,
    Fingerprint, KeyError, Negotiation, NegotiationConfig, Role, RoomId, RoomKey, RoomName, Sealed,
    SessionId, ENVELOPE_VERSION,
};
use kadrtc_rtc::{CandidatePair, IceServer, PeerConnection, RtcError, RtcEvent};
use libp2p::PeerId;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::channel::{frame, ping_frame, ping_nonce, Channel, PeerInfo};
use crate::file::{self, IncomingFile, FILE_LABEL};
use crate::node::NodeInner;

/// How long a published envelope stays valid, and how long storing nodes keep a mailbox
/// record.
pub const DEFAULT_ENVELOPE_TTL: Duration = Duration::from_secs(120);
/// First interval between `get_providers` lookups of the room's presence key (two members
/// joining at once find each other on a lookup after the other's provider record landed); it
/// doubles up to [`DEFAULT_DISCOVERY_MAX`] while the room is joined.
pub const DEFAULT_DISCOVERY_INITIAL: Duration = Duration::from_millis(10);
/// Longest interval between presence lookups while some member found has no open channel
/// yet, or none was found.
pub const DEFAULT_DISCOVERY_MAX: Duration = Duration::from_secs(10);
/// Longest interval between presence lookups once every member found has an open channel:
/// the lookups go on doubling up to it, and are all a connected member sends on the DHT
/// besides libp2p-kad's own upkeep (a lookup asks about 20 nodes). A newcomer finds the
/// members itself and dials them, so a member that others can dial learns of it at once
/// through the room topic; only one that nobody can dial (behind a NAT) waits for its next
/// lookup to find a newcomer that is behind a NAT too.
pub const DEFAULT_DISCOVERY_IDLE_MAX: Duration = Duration::from_secs(60);
/// Most peers one room tracks at once (a full mesh: one channel per pair); further peers are
/// reported ([`RoomError::RoomFull`]) and ignored until one leaves. Each tracked peer has at
/// most one live session (one peer connection), so this also bounds the sessions of a room.
pub const DEFAULT_MAX_PEERS: usize = 16;
/// How often every open channel is pinged (round-trip times for [`Room::peers`], and
/// liveness).
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// An open channel that carried nothing (not even a pong) for this long is taken as gone:
/// [`RoomEvent::PeerLeft`] is reported and the pair negotiates again if the peer comes back.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(4);
/// Capacity of the room's event channel to the application.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;
/// Capacity of the channel carrying WebRTC events into the room actor.
const RTC_EVENT_CAPACITY: usize = 1024;
/// Capacity of the channel carrying finished DHT lookups into the room actor.
const INTERNAL_CAPACITY: usize = 256;
/// The longest [`Room::leave`] takes: the goodbyes, the `Leave` announcement and the
/// connections' teardown, each bounded.
pub const LEAVE_LIMIT: Duration = Duration::from_secs(5);
/// How long leaving waits for the `Leave` announcement, and for connection teardown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long leaving waits for what was sent before to be acknowledged, and then for the
/// goodbye on open channels to be sent.
const BYE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long leaving waits for the remote to acknowledge what was sent on a connection before
/// it closes it (see [`PeerConnection::flush`]); part of the teardown's [`LEAVE_TIMEOUT`].
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a peer that left (or was given up on) is not rediscovered through stale provider
/// records; a fresh announcement from it, or a new topic subscription, brings it back sooner.
const DEPARTED_MEMORY: Duration = Duration::from_secs(120);
/// Most departed peers remembered.
const MAX_DEPARTED: usize = 256;
/// Most [`RoomError::WrongPassphrase`] events a room reports per minute; past it (a flood of
/// identities with another key) they are only logged at debug level.
const MAX_WRONG_PASSPHRASE_REPORTS_PER_MINUTE: u32 = 10;

/// Settings of one joined room.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Timers of each pair's negotiation.
    pub negotiation: NegotiationConfig,
    /// See [`DEFAULT_ENVELOPE_TTL`].
    pub envelope_ttl: Duration,
    /// See [`DEFAULT_DISCOVERY_INITIAL`].
    pub discovery_initial: Duration,
    /// See [`DEFAULT_DISCOVERY_MAX`].
    pub discovery_max: Duration,
    /// See [`DEFAULT_DISCOVERY_IDLE_MAX`].
    pub discovery_idle_max: Duration,
    /// See [`DEFAULT_MAX_PEERS`].
    pub max_peers: usize,
    /// Whether offers and answers are also published on the room topic (the fast path).
    /// `false` leaves only the mailbox records: slower, for networks that filter gossipsub
    /// and for testing the DHT path alone. Default `true`.
    pub signal_on_topic: bool,
    /// The room passphrase. `None` (the default) seals envelope bodies under a key derived
    /// from the room name alone; with a passphrase the key also goes through argon2id
    /// (see [`kadrtc_proto::RoomKey::derive_with_passphrase`]), and members with another
    /// passphrase cannot read each other ([`RoomError::WrongPassphrase`]).
    pub passphrase: Option<Passphrase>,
    /// Admission: when set, only these peers are negotiated with; envelopes from anyone
    /// else are ignored. `None` (the default) admits everyone who knows the room (and
    /// passphrase).
    pub allow: Option<HashSet<PeerId>>,
}

/// A room passphrase. `Debug` never prints it, and it is wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(String);

/// How a peer was discovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Discovery {
    /// Through a Kademlia `get_providers` lookup of the room's presence key.
    Dht,
    /// Through the room's gossipsub topic (a subscription, a presence announcement or an
    /// envelope addressed to us).
    Gossipsub,
}

/// What happens in a room. Marked `#[non_exhaustive]`: match with a wildcard arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum RoomEvent {
    /// Another member of the room became known.
    PeerDiscovered {
        /// The member.
        peer: PeerId,
        /// How it was found.
        via: Discovery,
    },
    /// A data channel to `peer` is open, and `peer` proved over it that it holds the key
    /// named in its envelopes.
    ChannelOpen {
        /// The remote member.
        peer: PeerId,
        /// Time since [`crate::Node::join`] began.
        elapsed: Duration,
        /// The candidate pair ICE selected: both `host` or reflexive means a direct path,
        /// `relay` on either side a path through a TURN relay. `None` when webrtc-rs does not
        /// report it.
        candidate_pair: Option<CandidatePair>,
    },
    /// A message arrived on the channel from `peer`.
    Message {
        /// The sender.
        peer: PeerId,
        /// The message, as sent.
        data: Vec<u8>,
    },
    /// `peer` offers a file on a channel of its own: accept it with
    /// [`IncomingFile::accept`] or refuse it with [`IncomingFile::reject`] (dropping it
    /// refuses it).
    IncomingFile(IncomingFile),
    /// `peer` left the room, its open channel closed, or it answered no ping for
    /// [`PEER_TIMEOUT`].
    PeerLeft {
        /// The member.
        peer: PeerId,
    },
    /// Something failed that the application may want to show; the room goes on.
    Error {
        /// The peer concerned, if any.
        peer: Option<PeerId>,
        /// What went wrong.
        error: RoomError,
    },
}

/// Problems reported by [`RoomEvent::Error`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The negotiation with this peer failed too often; the peer is forgotten until it
    /// announces itself again.
    #[error("gave up after {failures} failed attempts")]
    GaveUp {
        /// Failed attempts in a row.
        failures: u32,
    },
    /// A negotiation attempt ended without an open channel.
    #[error("no channel after attempt {failures}{}", retry_text(*.retry_in))]
    AttemptFailed {
        /// Failed attempts in a row.
        failures: u32,
        /// When the next attempt starts (the offerer's side), if this side retries.
        retry_in: Option<Duration>,
    },
    /// The WebRTC stack refused a step.
    #[error("webrtc: {0}")]
    Rtc(#[source] RtcError),
    /// The peer's envelopes do not open with this room's key: it uses another passphrase
    /// (or none). The peer is ignored for a while.
    #[error("cannot read this peer's signaling: wrong passphrase or different room")]
    WrongPassphrase,
    /// The channel opened, but the peer did not prove over it that it holds the key of the
    /// peer named in the envelopes (see [`kadrtc_proto::ChannelBinding`]); the channel was
    /// closed.
    #[error("channel-binding check failed, channel closed: {0}")]
    ChannelBinding(#[source] BindingError),
    /// ICE tried every candidate pair and none worked (RFC 8445 §8.1: state `failed`). When
    /// `relay_known` is false, both sides are likely behind NATs that allow no direct path
    /// (symmetric NATs, RFC 4787 §4.1) and only a TURN relay can connect them: connect to a
    /// node that runs one (`kadrtc node --relay`). The attempt is retried as usual.
    #[error("{}", no_path_text(*.relay_known))]
    NoPath {
        /// Whether this side had a TURN relay to try.
        relay_known: bool,
    },
    /// The room has [`RoomConfig::max_peers`] members already: this peer is ignored until
    /// one leaves (reported once per peer while the room stays full).
    #[error("the room is full ({max} peers); this peer is ignored until one leaves")]
    RoomFull {
        /// The limit.
        max: usize,
    },
}

fn no_path_text(relay_known: bool) -> &'static str {
    if relay_known {
        "no path to this peer was found, neither direct nor through the known TURN relays"
    } else {
        "no direct path to this peer was found and no relay is known; connect to a node \
         started with --relay (kadrtc node --relay) so that peers behind symmetric NATs can meet"
    }
}

/// Why [`Room::send`] or [`Room::broadcast`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    /// There is no open channel to this peer.
    #[error("no open channel to {0}")]
    NoChannel(PeerId),
    /// The channel refused the message.
    #[error("sending to {peer} failed")]
    Rtc {
        /// The peer.
        peer: PeerId,
        /// The cause.
        #[source]
        source: RtcError,
    },
}

/// Why [`Room::ping`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PingError {
    /// There is no open channel to this peer.
    #[error("no open channel to {0}")]
    NoChannel(PeerId),
    /// No answer within the timeout, or the channel closed first.
    #[error("no answer from {0}")]
    NoAnswer(PeerId),
}

/// A joined room. Events come from [`Room::next_event`]; [`Room::leave`] (or dropping the
/// room) announces the departure and closes every channel.
pub struct Room {
    name: RoomName,
    local: PeerId,
    events: mpsc::Receiver<RoomEvent>,
    commands: mpsc::Sender<Command>,
    channels: Links,
}

/// The open channels of a room, by peer, shared between the room actor and its handle.
type Links = Arc<RwLock<HashMap<PeerId, Link>>>;

/// One open channel and what is known about it.
struct Link {
    channel: Channel,
    info: PeerInfo,
}

/// What the [`Room`] handle asks of its actor.
enum Command {
    Leave(oneshot::Sender<()>),
    Ping {
        peer: PeerId,
        reply: oneshot::Sender<Duration>,
    },
}

/// A ping waiting for its pong.
struct PendingPing {
    peer: PeerId,
    sent_at: Instant,
    reply: Option<oneshot::Sender<Duration>>,
}

struct RoomActor {
    node: Arc<NodeInner>,
    room: RoomId,
    key: RoomKey,
    topic: String,
    local: PeerId,
    config: RoomConfig,
    joined_at: Instant,
    peers: HashMap<PeerId, PeerEntry>,
    channels: Links,
    events: mpsc::Sender<RoomEvent>,
    rtc_tx: mpsc::Sender<(PeerTag, RtcEvent)>,
    internal_tx: mpsc::Sender<Internal>,
    /// Events produced by synchronous handlers, delivered (awaited) by the run loop.
    outbox: VecDeque<RoomEvent>,
    /// Peers that left or were given up on, with when (Unix ms).
    departed: HashMap<PeerId, u64>,
    next_discovery: Instant,
    discovery_interval: Duration,
    discovery_in_flight: bool,
    /// Bounds the wrong-passphrase events, see [`MAX_WRONG_PASSPHRASE_REPORTS_PER_MINUTE`].
    wrong_passphrase_reports: governor::DefaultDirectRateLimiter,
    /// Peers refused because the room was full, reported once each until a slot frees.
    refused_full: HashSet<PeerId>,
    next_ping: Instant,
    pings: HashMap<u64, PendingPing>,
}

struct PeerEntry {
    negotiation: Negotiation,
    connection: Option<(SessionId, PeerConnection)>,
    open: bool,
    left_reported: bool,
    /// `created_at` of the newest envelope seen from the peer (Unix ms).
    newest_created_at: u64,
    /// Latest signed envelope for the remote's mailbox; a writer task puts it, in order.
    mailbox: watch::Sender<Option<Vec<u8>>>,
    /// The open channel of a session while its binding proof is awaited, with the
    /// transcript the proof must cover.
    binding: Option<PendingBinding>,
    /// The session whose ICE agent has both descriptions and has not found a working
    /// candidate pair yet (or that cannot have one: relay-only with no relay known): if its
    /// attempt fails, it is reported as [`RoomError::NoPath`].
    seeking_path: Option<SessionId>,
    /// When the open channel last carried a message from the peer.
    last_heard: Instant,
    /// Set while a ping or pong of ours is being sent: one at a time, so that a peer that
    /// stops acknowledging cannot pile up sending tasks.
    control_busy: Arc<AtomicBool>,
    /// Side channels the peer opened while its binding proof was still on its way; handed
    /// on once the channel is open (at most [`kadrtc_rtc::MAX_SIDE_CHANNELS`]).
    early_sides: Vec<(SessionId, kadrtc_rtc::SideChannel)>,
}

struct PendingBinding {
    session: SessionId,
    channel: kadrtc_rtc::Channel,
    transcript: ChannelBinding,
}

#[derive(Clone, Copy)]
struct PeerTag {
    peer: PeerId,
    session: SessionId,
}

enum Internal {
    Providers(Vec<PeerId>),
    Fetched { peer: PeerId, values: Vec<Vec<u8>> },
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            negotiation: NegotiationConfig::default(),
            envelope_ttl: DEFAULT_ENVELOPE_TTL,
            discovery_initial: DEFAULT_DISCOVERY_INITIAL,
            discovery_max: DEFAULT_DISCOVERY_MAX,
            discovery_idle_max: DEFAULT_DISCOVERY_IDLE_MAX,
            max_peers: DEFAULT_MAX_PEERS,
            signal_on_topic: true,
            passphrase: None,
            allow: None,
        }
    }
}

impl RoomConfig {
    /// Sets the room passphrase (see [`RoomConfig::passphrase`]).
    pub fn with_passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.passphrase = Some(Passphrase::new(passphrase));
        self
    }

    /// Restricts the room to `peers` (see [`RoomConfig::allow`]).
    pub fn with_allow(mut self, peers: impl IntoIterator<Item = PeerId>) -> Self {
        self.allow = Some(peers.into_iter().collect());
        self
    }
}

impl Passphrase {
    /// Wraps a passphrase.
    pub fn new(passphrase: impl Into<String>) -> Self {
        Self(passphrase.into())
    }

    /// The passphrase text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Room {
    pub(crate) async fn join(
        node: Arc<NodeInner>,
        name: RoomName,
        config: RoomConfig,
    ) -> Result<Self, crate::JoinError> {
        let joined_at = Instant::now();
        let key = room_key(&name, config.passphrase.as_ref()).await?;
        let room = name.id();
        let topic = room.topic();
        if !node
            .rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(room)
        {
            return Err(crate::JoinError::AlreadyJoined(name.to_string()));
        }
        let topic_rx = match node.dht.subscribe(topic.clone()).await {
            Ok(topic_rx) => topic_rx,
            Err(error) => {
                node.rooms
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&room);
                return Err(crate::JoinError::Dht(error));
            }
        };
        let local = node.dht.peer_id();
        let (events_tx, events) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let (commands, commands_rx) = mpsc::channel(1);
        let (rtc_tx, rtc_rx) = mpsc::channel(RTC_EVENT_CAPACITY);
        let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_CAPACITY);
        let channels = Arc::new(RwLock::new(HashMap::new()));
        let actor = RoomActor {
            node,
            room,
            key,
            topic,
            local,
            discovery_interval: config.discovery_initial,
            config,
            joined_at,
            peers: HashMap::new(),
            channels: channels.clone(),
            events: events_tx,
            rtc_tx,
            internal_tx,
            outbox: VecDeque::new(),
            departed: HashMap::new(),
            next_discovery: joined_at,
            discovery_in_flight: false,
            wrong_passphrase_reports: governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(MAX_WRONG_PASSPHRASE_REPORTS_PER_MINUTE)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
            refused_full: HashSet::new(),
            next_ping: joined_at + PING_INTERVAL,
            pings: HashMap::new(),
        };
        tokio::spawn(actor.run(commands_rx, topic_rx, rtc_rx, internal_rx));
        Ok(Self {
            name,
            local,
            events,
            commands,
            channels,
        })
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// This node's `PeerId`.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// The peers with an open channel.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.links().keys().copied().collect()
    }

    /// Every member with an open channel, with its round-trip time and path, in no order.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.links()
            .values()
            .map(|link| link.info.clone())
            .collect()
    }

    /// The open channel to `peer`, to send messages or files on.
    pub fn channel(&self, peer: PeerId) -> Option<Channel> {
        self.links().get(&peer).map(|link| link.channel.clone())
    }

    /// Pings `peer` over its channel and returns the round-trip time, waiting at most
    /// [`PEER_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`PingError::NoChannel`] when no channel to `peer` is open; [`PingError::NoAnswer`]
    /// when no answer came in time.
    pub async fn ping(&self, peer: PeerId) -> Result<Duration, PingError> {
        if !self.links().contains_key(&peer) {
            return Err(PingError::NoChannel(peer));
        }
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Ping { peer, reply })
            .await
            .is_err()
        {
            return Err(PingError::NoChannel(peer));
        }
        match tokio::time::timeout(PEER_TIMEOUT, answer).await {
            Ok(Ok(rtt)) => Ok(rtt),
            _ => Err(PingError::NoAnswer(peer)),
        }
    }

    /// The next event, or `None` once the room has been left.
    pub async fn next_event(&mut self) -> Option<RoomEvent> {
        self.events.recv().await
    }

    /// Sends one message (at most [`crate::MAX_MESSAGE_SIZE`] bytes) to `peer`; waits while
    /// the channel's send buffer is full.
    ///
    /// # Errors
    ///
    /// [`SendError::NoChannel`] when no channel to `peer` is open; [`SendError::Rtc`] when
    /// the channel refuses the message.
    pub async fn send(&self, peer: PeerId, data: &[u8]) -> Result<(), SendError> {
        let channel = self.channel(peer).ok_or(SendError::NoChannel(peer))?;
        channel.send(data).await
    }

    /// Sends one message to every peer with an open channel and returns how many it reached.
    /// A peer whose channel refuses the message is skipped with a log line.
    pub async fn broadcast(&self, data: &[u8]) -> usize {
        let channels: Vec<Channel> = self
            .links()
            .values()
            .map(|link| link.channel.clone())
            .collect();
        let mut reached = 0;
        for channel in channels {
            match channel.send(data).await {
                Ok(()) => reached += 1,
                Err(error) => tracing::warn!(peer = %channel.peer(), %error, "message not sent"),
            }
        }
        reached
    }

    fn links(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PeerId, Link>> {
        self.channels.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leaves the room: says goodbye on every open channel (the members report
    /// [`RoomEvent::PeerLeft`] at once), announces the departure on the room topic, withdraws
    /// the presence announcement and closes every channel once the members acknowledged what
    /// was sent on it (at most 1 s each), waiting at most [`LEAVE_LIMIT`] in all.
    pub async fn leave(self) {
        let Room {
            events, commands, ..
        } = self;
        // Unread events must not keep the actor from seeing the command.
        drop(events);
        let (reply, done) = oneshot::channel();
        let leaving = async {
            if commands.send(Command::Leave(reply)).await.is_ok() {
                let _ = done.await;
            }
        };
        let _ = tokio::time::timeout(LEAVE_LIMIT, leaving).await;
    }
}

/// The room's events as a `Stream`, the same as [`Room::next_event`].
impl futures::Stream for Room {
    type Item = RoomEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RoomEvent>> {
        self.events.poll_recv(cx)
    }
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("name", &self.name)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl RoomActor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut topic_rx: mpsc::Receiver<TopicEvent>,
        mut rtc_rx: mpsc::Receiver<(PeerTag, RtcEvent)>,
        mut internal_rx: mpsc::Receiver<Internal>,
    ) {
        self.announce_presence();
        let dht = self.node.dht.clone();
        let presence_key = self.room.presence_key();
        tokio::spawn(async move {
            if let Err(error) = dht.start_providing(presence_key).await {
                tracing::debug!(%error, "presence announcement reached no peer yet");
            }
        });
        loop {
            self.drive().await;
            while let Some(event) = self.outbox.pop_front() {
                self.emit(event).await;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Ping { peer, reply }) => self.ping(peer, Some(reply)),
                    Some(Command::Leave(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some(event) = topic_rx.recv() => self.handle_topic_event(event),
                Some((tag, event)) = rtc_rx.recv() => self.handle_rtc_event(tag, event).await,
                Some(internal) = internal_rx.recv() => self.handle_internal(internal),
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let discovery = if self.discovery_in_flight {
            Instant::now() + self.config.discovery_max
        } else {
            self.next_discovery
        };
        self.peers
            .values()
            .filter_map(|p| p.negotiation.poll_timeout())
            .fold(discovery.min(self.next_ping), Instant::min)
    }

    /// Runs due timers and carries out every pending negotiation action.
    async fn drive(&mut self) {
        let now = Instant::now();
        if !self.discovery_in_flight && self.next_discovery <= now {
            self.start_discovery(now);
        }
        if self.next_ping <= now {
            self.next_ping = now + PING_INTERVAL;
            self.check_liveness(now).await;
        }
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            if let Some(entry) = self.peers.get_mut(&peer) {
                if entry.negotiation.poll_timeout().is_some_and(|t| t <= now) {
                    entry.negotiation.handle_timeout(now);
                }
            }
            while let Some(action) = self
                .peers
                .get_mut(&peer)
                .and_then(|e| e.negotiation.poll_action())
            {
                self.perform(peer, action).await;
            }
        }
    }

    async fn perform(&mut self, peer: PeerId, action: Action) {
        if let Action::AcceptOffer {
            session,
            sdp,
            candidates,
        }
        | Action::ApplyAnswer {
            session,
            sdp,
            candidates,
        } = &action
        {
            if self
                .refuse_unparsable(peer, *session, sdp, candidates)
                .await
            {
                return;
            }
        }
        match action {
            Action::StartOffer { session } => {
                tracing::debug!(%peer, %session, "creating offer");
                self.connect(peer, session, None).await;
            }
            Action::AcceptOffer {
                session,
                sdp,
                candidates,
            } => {
                tracing::debug!(%peer, %session, "accepting offer");
                self.connect(peer, session, Some((sdp, candidates))).await;
            }
            Action::ApplyAnswer {
                session,
                sdp,
                candidates,
            } => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return;
                };
                let Some((_, pc)) = entry.connection.as_ref().filter(|(s, _)| *s == session) else {
                    return;
                };
                tracing::debug!(%peer, %session, "applying answer");
                match pc.apply_answer(sdp, &candidates).await {
                    Ok(()) => {
                        entry.seeking_path = Some(session);
                        entry.negotiation.handle_remote_description_applied(session)
                    }
                    Err(error) => {
                        tracing::warn!(%peer, %error, "answer refused");
                        entry.negotiation.handle_failed(session, Instant::now());
                    }
                }
            }
            Action::AddRemoteCandidates {
                session,
                candidates,
            } => {
                let Some(entry) = self.peers.get(&peer) else {
                    return;
                };
                let Some((_, pc)) = entry.connection.as_ref().filter(|(s, _)| *s == session) else {
                    return;
                };
                for candidate in candidates {
                    if let Err(error) = pc.add_candidate(candidate).await {
                        tracing::debug!(%peer, %error, "remote candidate refused");
                    }
                }
            }
            Action::Publish { session, seq, body } => {
                let envelope = self.envelope(Some(peer), session, seq, body);
                match envelope.sign(&self.node.keypair, &self.key) {
                    Ok(bytes) => {
                        if let Some(entry) = self.peers.get(&peer) {
                            entry.mailbox.send_replace(Some(bytes.clone()));
                        }
                        if self.config.signal_on_topic {
                            self.publish_on_topic(bytes);
                        }
                    }
                    Err(error) => tracing::warn!(%peer, %error, "envelope not published"),
                }
            }
            Action::FetchRemote => {
                let dht = self.node.dht.clone();
                let key = self.room.mailbox_key(&peer, &self.local);
                let internal = self.internal_tx.clone();
                tokio::spawn(async move {
                    let values = dht.get_record(key).await.unwrap_or_default();
                    let _ = internal.send(Internal::Fetched { peer, values }).await;
                });
            }
            Action::Close { session } => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return;
                };
                if entry.binding.as_ref().is_some_and(|b| b.session == session) {
                    entry.binding = None;
                }
                if entry
                    .connection
                    .as_ref()
                    .is_some_and(|(s, _)| *s == session)
                {
                    if let Some((_, pc)) = entry.connection.take() {
                        tokio::spawn(async move { pc.close().await });
                    }
                    if entry.open {
                        entry.open = false;
                        entry.left_reported = true;
                        self.channel_lost(peer);
                        self.outbox.push_back(RoomEvent::PeerLeft { peer });
                    }
                }
            }
            Action::AttemptFailed {
                session,
                failures,
                retry_in,
            } => {
                tracing::warn!(%peer, failures, ?retry_in, "negotiation attempt failed");
                let no_path = session.is_some()
                    && self
                        .peers
                        .get_mut(&peer)
                        .is_some_and(|entry| entry.seeking_path.take() == session);
                let error = if no_path {
                    RoomError::NoPath {
                        relay_known: self.node.ice.relay_known().await,
                    }
                } else {
                    RoomError::AttemptFailed { failures, retry_in }
                };
                self.emit(RoomEvent::Error {
                    peer: Some(peer),
                    error,
                })
                .await;
            }
            Action::GiveUp { failures } => {
                tracing::warn!(%peer, failures, "giving up on peer");
                if let Some(entry) = self.peers.get_mut(&peer) {
                    // It never had an open channel to lose: no departure to report.
                    entry.left_reported = true;
                }
                self.remove_peer(peer);
                self.outbox.push_back(RoomEvent::Error {
                    peer: Some(peer),
                    error: RoomError::GaveUp { failures },
                });
            }
            _ => {}
        }
    }

    /// Checks a remote description and its candidates with webrtc-rs's parsers before any of
    /// it reaches a peer connection; a description that does not parse fails the attempt
    /// with an error event. Returns whether it was refused.
    async fn refuse_unparsable(
        &mut self,
        peer: PeerId,
        session: SessionId,
        sdp: &str,
        candidates: &[String],
    ) -> bool {
        let Err(error) = kadrtc_rtc::check_remote_description(sdp, candidates) else {
            return false;
        };
        tracing::warn!(%peer, %session, %error, "refused remote description");
        self.fail_session(peer, session, Some(RoomError::Rtc(error)))
            .await;
        true
    }

    /// Builds the peer connection of `session` with its local description: an offer, or the
    /// answer to `offer` (SDP and candidates). Stores it, or fails the attempt.
    async fn connect(
        &mut self,
        peer: PeerId,
        session: SessionId,
        offer: Option<(String, Vec<String>)>,
    ) {
        let tag = PeerTag { peer, session };
        let config = self.node.rtc_config().await;
        let answering = offer.is_some();
        // webrtc-rs refuses to build a relay-only connection without a TURN server.
        let pathless = config.relay_only && !config.ice_servers.iter().any(IceServer::is_turn);
        let result = match PeerConnection::new(&config, tag, self.rtc_tx.clone()).await {
            Ok(pc) => match offer {
                None => pc.create_offer().await,
                Some((sdp, candidates)) => pc.accept_offer(sdp, &candidates).await,
            }
            .map(|sdp| (pc, sdp)),
            Err(error) => Err(error),
        };
        self.install(peer, session, result);
        if let Some(entry) = self.peers.get_mut(&peer) {
            // The answerer's ICE agent has both descriptions now; the offerer's once the
            // answer is applied.
            let installed = entry
                .connection
                .as_ref()
                .is_some_and(|(s, _)| *s == session);
            entry.seeking_path = ((answering && installed) || pathless).then_some(session);
        }
    }

    /// Stores a new connection and its local description, or fails the attempt.
    fn install(
        &mut self,
        peer: PeerId,
        session: SessionId,
        result: Result<(PeerConnection, String), RtcError>,
    ) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        if let Some((_, old)) = entry.connection.take() {
            tokio::spawn(async move { old.close().await });
        }
        match result {
            Ok((pc, sdp)) => {
                entry.connection = Some((session, pc));
                entry
                    .negotiation
                    .handle_local_description(session, sdp, Instant::now());
            }
            Err(error) => {
                tracing::warn!(%peer, %error, "peer connection setup failed");
                entry.negotiation.handle_failed(session, Instant::now());
            }
        }
    }

    async fn handle_rtc_event(&mut self, tag: PeerTag, event: RtcEvent) {
        let PeerTag { peer, session } = tag;
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        let current = entry.negotiation.session() == Some(session);
        match event {
            RtcEvent::LocalCandidate(candidate) => {
                entry.negotiation.handle_local_candidate(session, candidate)
            }
            RtcEvent::GatheringComplete => entry.negotiation.handle_end_of_candidates(session),
            // One channel per connection: a second open (which kadrtc-rtc refuses) must not
            // re-arm the binding check.
            RtcEvent::ChannelOpen(channel) if current && !entry.open && entry.binding.is_none() => {
                self.start_binding(peer, session, channel).await;
            }
            RtcEvent::Message(data) if current && entry.binding.is_some() => {
                self.finish_binding(peer, session, &data).await;
            }
            RtcEvent::Message(data) if current && entry.open => {
                entry.last_heard = Instant::now();
                self.on_message(peer, data).await;
            }
            RtcEvent::SideChannelOpen(side) if current && entry.open => {
                self.on_side_channel(peer, side);
            }
            // The peer may open one as soon as it has our proof, before its own reaches us.
            RtcEvent::SideChannelOpen(side)
                if current
                    && entry.binding.is_some()
                    && entry.early_sides.len() < kadrtc_rtc::MAX_SIDE_CHANNELS =>
            {
                entry.early_sides.push((session, side));
            }
            RtcEvent::IceConnected if entry.seeking_path == Some(session) => {
                entry.seeking_path = None;
            }
            RtcEvent::ChannelClosed | RtcEvent::Failed(_) if current => {
                entry.binding = None;
                let was_open = std::mem::take(&mut entry.open);
                entry.negotiation.handle_failed(session, Instant::now());
                if was_open {
                    entry.left_reported = true;
                    self.channel_lost(peer);
                    self.emit(RoomEvent::PeerLeft { peer }).await;
                }
            }
            _ => {}
        }
    }

    /// The channel of `session` is open: sends this side's binding proof and waits for the
    /// peer's (DESIGN.md, "Signaling flow", step 6). The channel is reported open only once
    /// the peer's proof verifies, in [`RoomActor::finish_binding`].
    async fn start_binding(
        &mut self,
        peer: PeerId,
        session: SessionId,
        channel: kadrtc_rtc::Channel,
    ) {
        let Some(entry) = self.peers.get(&peer) else {
            return;
        };
        let Some((_, pc)) = entry.connection.as_ref().filter(|(s, _)| *s == session) else {
            return;
        };
        let fingerprints = async {
            let local_sdp = pc.local_description().await?;
            let remote = Fingerprint::of_certificate(&pc.remote_certificate().await?);
            Ok::<_, RtcError>((Fingerprint::from_sdp(&local_sdp), remote))
        };
        let binding = match fingerprints.await {
            Ok((Some(local), remote)) => match entry.negotiation.role() {
                Role::Offerer => ChannelBinding::new(session, local, remote),
                Role::Answerer => ChannelBinding::new(session, remote, local),
            },
            Ok((None, _)) => {
                tracing::warn!(%peer, "local description has no sha-256 fingerprint");
                self.fail_session(peer, session, None).await;
                return;
            }
            Err(error) => {
                tracing::warn!(%peer, %error, "DTLS certificates unavailable");
                self.fail_session(peer, session, Some(RoomError::Rtc(error)))
                    .await;
                return;
            }
        };
        let sent = match binding.prove(&self.node.keypair) {
            Ok(proof) => channel.send(&proof).await.map_err(RoomError::Rtc),
            Err(error) => Err(RoomError::ChannelBinding(error)),
        };
        if let Err(error) = sent {
            tracing::warn!(%peer, %error, "channel-binding proof not sent");
            self.fail_session(peer, session, Some(error)).await;
            return;
        }
        if let Some(entry) = self.peers.get_mut(&peer) {
            entry.binding = Some(PendingBinding {
                session,
                channel,
                transcript: binding,
            });
        }
    }

    /// The first message on the channel of `session`: the peer's binding proof. Opens the
    /// channel to the application when it verifies; closes it with an error event otherwise.
    async fn finish_binding(&mut self, peer: PeerId, session: SessionId, proof: &[u8]) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(PendingBinding {
            channel,
            transcript,
            ..
        }) = entry.binding.take_if(|b| b.session == session)
        else {
            return;
        };
        if let Err(error) = transcript.verify(proof, &peer) {
            tracing::warn!(%peer, %session, %error, "channel-binding check failed; closing the channel");
            self.fail_session(peer, session, Some(RoomError::ChannelBinding(error)))
                .await;
            return;
        }
        entry.negotiation.handle_connected(session);
        entry.open = true;
        entry.left_reported = false;
        entry.last_heard = Instant::now();
        let elapsed = self.joined_at.elapsed();
        let Some((_, connection)) = entry.connection.clone() else {
            return;
        };
        let candidate_pair = connection.selected_candidate_pair().await;
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                peer,
                Link {
                    channel: Channel {
                        peer,
                        main: channel,
                        connection,
                    },
                    info: PeerInfo {
                        peer,
                        connected_at: Instant::now(),
                        candidate_pair,
                        rtt: None,
                    },
                },
            );
        self.emit(RoomEvent::ChannelOpen {
            peer,
            elapsed,
            candidate_pair,
        })
        .await;
        let early = self
            .peers
            .get_mut(&peer)
            .map(|entry| std::mem::take(&mut entry.early_sides))
            .unwrap_or_default();
        // Those of an earlier session are dropped, which closes them.
        for (_, side) in early.into_iter().filter(|(s, _)| *s == session) {
            self.on_side_channel(peer, side);
        }
    }

    /// A framed message on the open channel of `peer`.
    async fn on_message(&mut self, peer: PeerId, data: Vec<u8>) {
        match data.split_first() {
            Some((&frame::DATA, _)) => {
                let mut data = data;
                data.remove(0);
                self.emit(RoomEvent::Message { peer, data }).await;
            }
            Some((&frame::PING, body)) => match ping_nonce(body) {
                Some(nonce) => {
                    self.send_control(peer, ping_frame(frame::PONG, nonce));
                }
                None => tracing::debug!(%peer, "malformed ping ignored"),
            },
            Some((&frame::BYE, _)) => {
                tracing::debug!(%peer, "the peer left the room");
                self.remove_peer(peer);
            }
            Some((&frame::PONG, body)) => {
                let pending = ping_nonce(body)
                    .and_then(|nonce| self.pings.remove(&nonce))
                    .filter(|ping| ping.peer == peer);
                if let Some(ping) = pending {
                    let rtt = ping.sent_at.elapsed();
                    if let Some(link) = self
                        .channels
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_mut(&peer)
                    {
                        link.info.rtt = Some(rtt);
                    }
                    if let Some(reply) = ping.reply {
                        let _ = reply.send(rtt);
                    }
                }
            }
            _ => tracing::debug!(%peer, "message with an unknown frame byte ignored"),
        }
    }

    fn channel(&self, peer: PeerId) -> Option<Channel> {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .map(|link| link.channel.clone())
    }

    /// Sends a ping to `peer`; its pong updates the round-trip time and answers `reply`.
    fn ping(&mut self, peer: PeerId, reply: Option<oneshot::Sender<Duration>>) {
        let nonce: u64 = rand::random();
        if self.send_control(peer, ping_frame(frame::PING, nonce)) {
            self.pings.insert(
                nonce,
                PendingPing {
                    peer,
                    sent_at: Instant::now(),
                    reply,
                },
            );
        }
    }

    /// Sends a ping or pong on the open channel of `peer` in the background, unless one is
    /// still being sent; returns whether it was sent.
    fn send_control(&self, peer: PeerId, frame: [u8; 9]) -> bool {
        let (Some(channel), Some(entry)) = (self.channel(peer), self.peers.get(&peer)) else {
            return false;
        };
        let busy = entry.control_busy.clone();
        if busy.swap(true, Ordering::AcqRel) {
            return false;
        }
        tokio::spawn(async move {
            let _ = channel.main.send(&frame).await;
            busy.store(false, Ordering::Release);
        });
        true
    }

    /// A side channel the peer opened on its open channel's connection.
    fn on_side_channel(&self, peer: PeerId, side: kadrtc_rtc::SideChannel) {
        if side.label() == FILE_LABEL {
            tokio::spawn(file::offered(peer, side, self.events.clone(), true));
        } else {
            tracing::debug!(%peer, label = side.label(), "unknown side channel closed");
        }
    }

    /// Once every [`PING_INTERVAL`]: reports open channels silent for [`PEER_TIMEOUT`] as
    /// left (their sessions fail, so the pair negotiates again if the peer comes back), and
    /// pings the others.
    async fn check_liveness(&mut self, now: Instant) {
        self.pings
            .retain(|_, ping| now.duration_since(ping.sent_at) < PEER_TIMEOUT);
        // While a side channel carries a file, pings queue behind its data in SCTP's one
        // send queue and may wait long on a slow path: the transfer's own stall timeout and
        // ICE watch the connection then. Idle file channels kept for the next file do not
        // count.
        for entry in self.peers.values_mut().filter(|entry| entry.open) {
            let busy = entry
                .connection
                .as_ref()
                .is_some_and(|(_, pc)| pc.side_channels_in_use() > 0);
            if busy {
                entry.last_heard = now;
            }
        }
        let open: Vec<(PeerId, Option<SessionId>, Instant)> = self
            .peers
            .iter()
            .filter(|(_, entry)| entry.open)
            .map(|(peer, entry)| (*peer, entry.negotiation.session(), entry.last_heard))
            .collect();
        for (peer, session, last_heard) in open {
            if now.duration_since(last_heard) < PEER_TIMEOUT {
                self.ping(peer, None);
                continue;
            }
            tracing::info!(%peer, "no message on the channel for {PEER_TIMEOUT:?}; taking the peer as gone");
            let Some(entry) = self.peers.get_mut(&peer) else {
                continue;
            };
            entry.open = false;
            entry.binding = None;
            entry.left_reported = true;
            if let Some(session) = session {
                entry.negotiation.handle_failed(session, now);
            }
            self.channel_lost(peer);
            self.emit(RoomEvent::PeerLeft { peer }).await;
        }
    }

    /// Ends the attempt of `session` (its connection is closed by the resulting
    /// [`Action::Close`]) and reports `error`, if any.
    async fn fail_session(&mut self, peer: PeerId, session: SessionId, error: Option<RoomError>) {
        if let Some(entry) = self.peers.get_mut(&peer) {
            entry.binding = None;
            entry.negotiation.handle_failed(session, Instant::now());
        }
        if let Some(error) = error {
            self.emit(RoomEvent::Error {
                peer: Some(peer),
                error,
            })
            .await;
        }
    }

    fn handle_topic_event(&mut self, event: TopicEvent) {
        match event {
            TopicEvent::PeerSubscribed { peer } if !self.admitted(&peer) => {
                tracing::trace!(%peer, "subscriber not admitted to the room");
            }
            TopicEvent::PeerSubscribed { peer } if peer != self.local => {
                // A (re)subscription is a (re)join.
                self.departed.remove(&peer);
                self.discover(peer, Discovery::Gossipsub);
                // The newcomer missed our earlier announcement, and any signaling state we
                // published for it before it could hear us.
                self.announce_presence();
                let latest = self
                    .peers
                    .get(&peer)
                    .and_then(|entry| entry.mailbox.borrow().clone());
                if let Some(bytes) = latest.filter(|_| self.config.signal_on_topic) {
                    self.publish_on_topic(bytes);
                }
            }
            TopicEvent::AlreadySubscribed { peer }
                if peer != self.local && self.admitted(&peer) =>
            {
                // On the topic before us: it hears the announcement made once we subscribed.
                self.discover(peer, Discovery::Gossipsub);
            }
            TopicEvent::Message {
                envelope,
                propagation_source,
                ..
            } => {
                // Decoded and verified by the DHT layer already; still sealed.
                let from = envelope.from;
                if !self.peers.contains_key(&from) && propagation_source != from {
                    // Relayed from a peer we have no connection to: anyone can sign envelopes
                    // with fresh keys, so a newcomer is only negotiated with (or reported as
                    // unreadable) once it proves its key to us (a direct connection, whose
                    // subscription then arrives) or to the DHT (a provider record). An
                    // announcement, or an envelope for us, brings the next provider lookup
                    // forward.
                    let for_us = envelope.to.is_none_or(|to| to == self.local);
                    if for_us && from != self.local && self.admitted(&from) {
                        tracing::trace!(%from, via = %propagation_source, "relayed envelope from an unknown peer; looking up providers");
                        self.hurry_discovery();
                    }
                    return;
                }
                let Some(envelope) = self.addressed_to_us(*envelope) else {
                    return;
                };
                if matches!(envelope.body, Body::Leave) {
                    // A replayed Leave older than what the peer said since changes nothing.
                    let newest = self.peers.get(&from).map_or(0, |e| e.newest_created_at);
                    if envelope.created_at >= newest {
                        self.remove_peer(from);
                    }
                    return;
                }
                if self
                    .departed
                    .get(&from)
                    .is_some_and(|left| envelope.created_at > *left)
                {
                    self.departed.remove(&from);
                }
                self.discover(from, Discovery::Gossipsub);
                if let Some(entry) = self.peers.get_mut(&from) {
                    entry.newest_created_at = entry.newest_created_at.max(envelope.created_at);
                }
                if !matches!(envelope.body, Body::Presence) {
                    self.apply_remote(&envelope);
                }
            }
            _ => {}
        }
    }

    fn handle_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Providers(providers) => {
                self.discovery_in_flight = false;
                for peer in providers {
                    if peer != self.local {
                        self.discover(peer, Discovery::Dht);
                    }
                }
            }
            Internal::Fetched { peer, values } => {
                // Only the peer's own envelopes, under its mailbox key for us, are opened: a
                // storing node may serve anything.
                let key = self.room.mailbox_key(&peer, &self.local);
                let mut envelopes: Vec<Envelope> = Vec::with_capacity(values.len());
                for value in &values {
                    match Envelope::decode(value, unix_time_ms()) {
                        Ok(sealed) if sealed.from != peer => {
                            tracing::warn!(from = %sealed.from, mailbox_of = %peer, "ignored envelope of another sender");
                        }
                        Ok(sealed) => match sealed.check_mailbox_key(&key) {
                            Ok(()) => envelopes.extend(self.addressed_to_us(sealed)),
                            Err(error) => tracing::warn!(from = %peer, %error, "ignored envelope"),
                        },
                        Err(error) => tracing::warn!(%error, "ignored invalid envelope"),
                    }
                }
                envelopes.sort_by_key(|e| (e.created_at, e.seq));
                for envelope in envelopes {
                    self.apply_remote(&envelope);
                }
            }
        }
    }

    /// The envelope, opened, when it is from an admitted peer, for this room and for us or
    /// everyone; `None` (silently) when it is our own, for another member or from a peer
    /// not admitted, `None` with a log line for another room or a body that does not open.
    fn addressed_to_us(&mut self, envelope: Envelope<Sealed>) -> Option<Envelope> {
        if envelope.from == self.local {
            return None;
        }
        if !self.admitted(&envelope.from) {
            tracing::trace!(from = %envelope.from, "envelope from a peer not admitted ignored");
            return None;
        }
        match envelope.check_addressed(&self.room, &self.local) {
            Ok(()) => self.open(envelope),
            Err(EnvelopeError::WrongRecipient) => None,
            Err(error) => {
                tracing::warn!(from = %envelope.from, %error, "ignored envelope");
                None
            }
        }
    }

    /// Opens a sealed envelope with the room key. A peer whose envelopes do not open uses
    /// another passphrase: it is reported once ([`RoomError::WrongPassphrase`]) and set aside
    /// like a departed peer.
    fn open(&mut self, envelope: Envelope<Sealed>) -> Option<Envelope> {
        let (from, created_at) = (envelope.from, envelope.created_at);
        match envelope.open(&self.key) {
            Ok(envelope) => Some(envelope),
            Err(error @ EnvelopeError::Unseal { .. }) => {
                self.set_aside_unreadable(from, created_at, &error);
                None
            }
            Err(error) => {
                tracing::warn!(%from, %error, "ignored envelope");
                None
            }
        }
    }

    /// A peer whose envelope (created at `created_at`) does not open uses another key: it is
    /// set aside like a departed peer (a tracked peer only when the envelope is newer than the
    /// last one of its that did open, so that a replay of an old one cannot evict it), and
    /// reported once, within [`MAX_WRONG_PASSPHRASE_REPORTS_PER_MINUTE`].
    fn set_aside_unreadable(&mut self, from: PeerId, created_at: u64, error: &EnvelopeError) {
        let newest_readable = self.peers.get(&from).map(|entry| entry.newest_created_at);
        match newest_readable {
            Some(newest) if created_at <= newest => {
                tracing::debug!(%from, "ignored an older envelope that does not open: {error}");
                return;
            }
            Some(_) => {
                if let Some(entry) = self.peers.get_mut(&from) {
                    // It never had a channel with this key: no departure to report.
                    entry.left_reported = !entry.open;
                }
                self.remove_peer(from);
            }
            None if self.recently_departed(&from) => {
                tracing::debug!(%from, "ignored envelope: {error}");
                return;
            }
            None => self.mark_departed(from),
        }
        if self.wrong_passphrase_reports.check().is_ok() {
            tracing::warn!(%from, "ignored envelope: {error}");
            self.outbox.push_back(RoomEvent::Error {
                peer: Some(from),
                error: RoomError::WrongPassphrase,
            });
        } else {
            tracing::debug!(%from, "ignored envelope (reports over their rate): {error}");
        }
    }

    fn apply_remote(&mut self, envelope: &Envelope) {
        if let Some(entry) = self.peers.get_mut(&envelope.from) {
            let disposition = entry.negotiation.handle_remote(envelope, Instant::now());
            match disposition {
                Disposition::Stale => {
                    tracing::debug!(from = %envelope.from, session = %envelope.session, seq = envelope.seq, "ignored stale envelope (older seq or another session)")
                }
                Disposition::OfferMismatch => {
                    tracing::warn!(from = %envelope.from, session = %envelope.session, "ignored answer that does not echo our offer's hash")
                }
                _ => {
                    tracing::trace!(from = %envelope.from, seq = envelope.seq, ?disposition, "envelope")
                }
            }
        }
    }

    fn admitted(&self, peer: &PeerId) -> bool {
        self.config
            .allow
            .as_ref()
            .is_none_or(|allow| allow.contains(peer))
    }

    fn discover(&mut self, peer: PeerId, via: Discovery) {
        if self.peers.contains_key(&peer) {
            return;
        }
        if !self.admitted(&peer) {
            tracing::trace!(%peer, "peer not admitted to the room");
            return;
        }
        if self.recently_departed(&peer) {
            tracing::trace!(%peer, "departed peer not rediscovered yet");
            return;
        }
        self.departed.remove(&peer);
        if self.peers.len() >= self.config.max_peers {
            tracing::debug!(%peer, max = self.config.max_peers, "room is full; peer ignored");
            if self.refused_full.len() < MAX_DEPARTED && self.refused_full.insert(peer) {
                self.outbox.push_back(RoomEvent::Error {
                    peer: Some(peer),
                    error: RoomError::RoomFull {
                        max: self.config.max_peers,
                    },
                });
            }
            return;
        }
        let (mailbox, mailbox_rx) = watch::channel(None);
        tokio::spawn(write_mailbox(
            self.node.dht.clone(),
            self.room.mailbox_key(&self.local, &peer),
            self.config.envelope_ttl,
            mailbox_rx,
        ));
        let negotiation = Negotiation::new(
            &self.local,
            peer,
            self.config.negotiation.clone(),
            Instant::now(),
        );
        self.peers.insert(
            peer,
            PeerEntry {
                negotiation,
                connection: None,
                open: false,
                left_reported: false,
                newest_created_at: 0,
                mailbox,
                binding: None,
                seeking_path: None,
                last_heard: Instant::now(),
                control_busy: Arc::new(AtomicBool::new(false)),
                early_sides: Vec::new(),
            },
        );
        self.outbox
            .push_back(RoomEvent::PeerDiscovered { peer, via });
        self.unsettle_discovery();
    }

    fn remove_peer(&mut self, peer: PeerId) {
        let Some(entry) = self.peers.remove(&peer) else {
            return;
        };
        // A slot is free: peers refused while the room was full are reported again.
        self.refused_full.clear();
        if let Some((_, pc)) = entry.connection {
            tokio::spawn(async move { pc.close().await });
        }
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer);
        if !entry.left_reported {
            self.outbox.push_back(RoomEvent::PeerLeft { peer });
        }
        self.mark_departed(peer);
    }

    /// Remembers that `peer` left (or was set aside) now, forgetting the oldest such peer
    /// past [`MAX_DEPARTED`].
    fn mark_departed(&mut self, peer: PeerId) {
        if self.departed.len() >= MAX_DEPARTED && !self.departed.contains_key(&peer) {
            let oldest = self
                .departed
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(peer, _)| *peer);
            if let Some(oldest) = oldest {
                self.departed.remove(&oldest);
            }
        }
        self.departed.insert(peer, unix_time_ms());
    }

    fn recently_departed(&self, peer: &PeerId) -> bool {
        self.departed.get(peer).is_some_and(|left| {
            u128::from(unix_time_ms().saturating_sub(*left)) < DEPARTED_MEMORY.as_millis()
        })
    }

    /// Brings the next provider lookup forward to at most [`RoomConfig::discovery_initial`]
    /// from now (so a flood of hints causes at most a few lookups a second).
    fn hurry_discovery(&mut self) {
        let soon = Instant::now() + self.config.discovery_initial;
        self.next_discovery = self.next_discovery.min(soon);
        self.discovery_interval = self.config.discovery_initial;
    }

    /// The open channel to `peer` is gone: it leaves the room's channel map, and the next
    /// presence lookup comes within [`RoomConfig::discovery_max`] (see
    /// [`Self::unsettle_discovery`]).
    fn channel_lost(&mut self, peer: PeerId) {
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer);
        self.unsettle_discovery();
    }

    /// A member is new or its channel closed: the next presence lookup comes within
    /// [`RoomConfig::discovery_max`] again, however far the idle back-off had pushed it.
    fn unsettle_discovery(&mut self) {
        let bound = Instant::now() + self.config.discovery_max;
        self.next_discovery = self.next_discovery.min(bound);
        self.discovery_interval = self.discovery_interval.min(self.config.discovery_max);
    }

    fn start_discovery(&mut self, now: Instant) {
        self.discovery_in_flight = true;
        let settled = !self.peers.is_empty() && self.peers.values().all(|entry| entry.open);
        let longest = if settled {
            self.config
                .discovery_idle_max
                .max(self.config.discovery_max)
        } else {
            self.config.discovery_max
        };
        // Back to the shorter bound when a member is new or its channel closed (see also
        // unsettle_discovery, which brings a far-off lookup forward).
        self.discovery_interval = self.discovery_interval.min(longest);
        self.next_discovery = now + self.discovery_interval;
        self.discovery_interval = (self.discovery_interval * 2).min(longest);
        let dht = self.node.dht.clone();
        let key = self.room.presence_key();
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            let providers = dht.get_providers(key).await.unwrap_or_default();
            let _ = internal.send(Internal::Providers(providers)).await;
        });
    }

    fn announce_presence(&self) {
        let envelope = self.envelope(None, SessionId::from_bytes([0; 16]), 0, Body::Presence);
        match envelope.sign(&self.node.keypair, &self.key) {
            Ok(bytes) => self.publish_on_topic(bytes),
            Err(error) => tracing::warn!(%error, "presence not announced"),
        }
    }

    fn publish_on_topic(&self, bytes: Vec<u8>) {
        let dht = self.node.dht.clone();
        let topic = self.topic.clone();
        tokio::spawn(async move {
            if let Err(error) = dht.publish(topic, bytes).await {
                // Normal before any room member is connected; mailboxes carry the state.
                tracing::debug!(%error, "topic publish");
            }
        });
    }

    fn envelope(&self, to: Option<PeerId>, session: SessionId, seq: u64, body: Body) -> Envelope {
        let now = unix_time_ms();
        Envelope {
            version: ENVELOPE_VERSION,
            room_id: self.room,
            from: self.local,
            to,
            session,
            seq,
            created_at: now,
            expires_at: now.saturating_add(
                u64::try_from(self.config.envelope_ttl.as_millis()).unwrap_or(u64::MAX),
            ),
            body,
        }
    }

    async fn emit(&self, event: RoomEvent) {
        // The application dropped the room handle; the room is shutting down.
        let _ = self.events.send(event).await;
    }

    async fn shutdown(&mut self) {
        // What was sent before (a file's last reply) is acknowledged before the goodbye,
        // which has the member close the connection at once and could overtake it.
        let sent_before = self
            .peers
            .values()
            .filter_map(|entry| entry.connection.as_ref())
            .map(|(_, pc)| pc.flush(BYE_TIMEOUT));
        futures::future::join_all(sent_before).await;
        // Open channels hear it first, and report the departure at once.
        let channels: Vec<Channel> = self
            .channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|link| link.channel.clone())
            .collect();
        let goodbyes = channels
            .iter()
            .map(|channel| channel.main.send(&[frame::BYE]));
        let _ = tokio::time::timeout(BYE_TIMEOUT, futures::future::join_all(goodbyes)).await;
        let leave = self.envelope(None, SessionId::from_bytes([0; 16]), 0, Body::Leave);
        if let Ok(bytes) = leave.sign(&self.node.keypair, &self.key) {
            let publish = self.node.dht.publish(self.topic.clone(), bytes);
            if let Ok(Err(error)) = tokio::time::timeout(LEAVE_TIMEOUT, publish).await {
                tracing::debug!(%error, "leave announcement");
            }
        }
        self.node.dht.stop_providing(self.room.presence_key()).await;
        self.node.dht.unsubscribe(self.topic.clone()).await;
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let closing: Vec<_> = self
            .peers
            .drain()
            .filter_map(|(_, entry)| entry.connection.map(|(_, pc)| pc))
            .collect();
        // What is still on its way (a file's last reply, the goodbye) arrives before the
        // close, which aborts the association and has the remote drop what it holds unread.
        let close_all = futures::future::join_all(closing.iter().map(|pc| async move {
            pc.flush(FLUSH_TIMEOUT).await;
            pc.close().await;
        }));
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, close_all).await;
        // Only now may the room be joined again.
        self.node
            .rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.room);
    }
}

/// Puts the latest envelope for one remote peer into its mailbox record, one put at a time,
/// so that storing nodes see increasing `seq`. Ends when the peer entry is dropped.
async fn write_mailbox(
    dht: DhtHandle,
    key: Vec<u8>,
    ttl: Duration,
    mut latest: watch::Receiver<Option<Vec<u8>>>,
) {
    while latest.changed().await.is_ok() {
        let value = latest.borrow_and_update().clone();
        if let Some(value) = value {
            if let Err(error) = dht.put_record(key.clone(), value, ttl).await {
                tracing::debug!(%error, "mailbox put");
            }
        }
    }
}

/// The room's sealing key: from the name alone, or through argon2id with the passphrase (on a
/// blocking thread: it takes about 0.13 s and 64 MiB).
async fn room_key(
    name: &RoomName,
    passphrase: Option<&Passphrase>,
) -> Result<RoomKey, crate::JoinError> {
    let Some(passphrase) = passphrase else {
        return Ok(RoomKey::derive(name));
    };
    let (name, passphrase) = (name.clone(), passphrase.clone());
    tokio::task::spawn_blocking(move || RoomKey::derive_with_passphrase(&name, passphrase.as_str()))
        .await
        .unwrap_or_else(|join| Err(KeyError::Argon2(join.to_string())))
        .map_err(crate::JoinError::Passphrase)
}

fn retry_text(retry_in: Option<Duration>) -> String {
    match retry_in {
        Some(delay) => format!("; retrying in {} ms", delay.as_millis()),
        None => "; waiting for a new offer".into(),
    }
}
