//! kadrtc's WebRTC layer: the only crate that depends on `webrtc` (webrtc-rs 0.21).
//!
//! One [`PeerConnection`] per negotiation attempt, with one reliable, ordered data channel
//! (RFC 8831) labelled [`CHANNEL_LABEL`], and side channels (labels starting with
//! [`SIDE_LABEL_PREFIX`], each with its own message queue) that either side opens later with
//! [`PeerConnection::open_side_channel`], for example for a file transfer. Everything the connection reports arrives as
//! [`RtcEvent`]s on a bounded channel, tagged with a value of the caller's choosing (kadrtc
//! tags them with the remote peer and the session id).
//!
//! ```no_run
//! # async fn run() -> Result<(), kadrtc_rtc::RtcError> {
//! use kadrtc_rtc::{PeerConnection, RtcConfig, RtcEvent};
//! let (tx, mut rx) = tokio::sync::mpsc::channel(64);
//! let offerer = PeerConnection::new(&RtcConfig::loopback(), "a", tx.clone()).await?;
//! let answerer = PeerConnection::new(&RtcConfig::loopback(), "b", tx).await?;
//! let offer = offerer.create_offer().await?;
//! let answer = answerer.accept_offer(offer, &[]).await?;
//! offerer.apply_answer(answer, &[]).await?;
//! while let Some((tag, event)) = rx.recv().await {
//!     match (tag, event) {
//!         ("a", RtcEvent::LocalCandidate(c)) => answerer.add_candidate(c).await?,
//!         ("b", RtcEvent::LocalCandidate(c)) => offerer.add_candidate(c).await?,
//!         (_, RtcEvent::ChannelOpen(channel)) => channel.send(b"hello").await?,
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod runtime;

pub use runtime::UDP_BUFFER_SIZE;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceCandidateType, RTCIceConnectionState, RTCIceGatheringState,
    RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSdpType, RTCSessionDescription, SettingEngineBuilder,
};

/// Label of the data channel kadrtc opens between two peers.
pub const CHANNEL_LABEL: &str = "kadrtc";

/// Labels of side channels start with this (`kadrtc-file`, for example); the remote's other
/// channels are closed.
pub const SIDE_LABEL_PREFIX: &str = "kadrtc-";

/// Most side channels open on one connection at once that each side opened (so up to twice as
/// many in all): a further one from the remote is closed, and
/// [`PeerConnection::open_side_channel`] refuses one over it. The two counts are separate, so
/// that a remote holding its channels open cannot stop this side from opening its own.
pub const MAX_SIDE_CHANNELS: usize = 8;

/// Messages a side channel holds for its reader; while it is full, webrtc-rs stops reading
/// the connection (receive backpressure, which holds up every channel of the connection).
pub const SIDE_CHANNEL_QUEUE: usize = 64;

/// How long [`PeerConnection::open_side_channel`] waits for the remote to open the channel.
pub const SIDE_CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// First wait before [`PeerConnection::open_side_channel`] tries again after a channel closed
/// before it opened; it doubles up to [`SIDE_CHANNEL_RETRY_MAX`], within
/// [`SIDE_CHANNEL_OPEN_TIMEOUT`].
const SIDE_CHANNEL_RETRY_INITIAL: Duration = Duration::from_millis(50);
const SIDE_CHANNEL_RETRY_MAX: Duration = Duration::from_secs(1);
/// How often [`PeerConnection::flush`] looks at what its channels have outstanding.
const FLUSH_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Bytes a channel may have handed to SCTP but not yet had acknowledged before
/// [`Channel::send`] waits (send backpressure). 1 MiB matches the SCTP receive window.
pub const DEFAULT_SEND_BUFFER_LIMIT: usize = 1024 * 1024;

/// Largest message [`Channel::send`] accepts, in bytes. 64 KiB is the message size every
/// WebRTC implementation interoperates with (RFC 8831 §6.6 recommends staying at or below it).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// How long ICE goes without a working candidate pair before the connection state becomes
/// `disconnected` (webrtc-rs's default).
pub const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after `disconnected` ICE gives up (`failed`): with [`ICE_DISCONNECTED_TIMEOUT`],
/// a connection that never finds a path fails 10 s after checking starts (webrtc-rs's default
/// 25 s would make that 30 s).
pub const ICE_FAILED_TIMEOUT: Duration = Duration::from_secs(5);

/// How often ICE runs a round of connectivity checks while it looks for a candidate pair:
/// 5 ms (webrtc-rs's default is 200 ms, which alone costs ≈ 200 ms of every connection
/// set-up on a fast path). webrtc-rs checks every waiting pair each round, so this is pacing
/// per pair, not the global pacing (Ta ≥ 5 ms) of RFC 8445 §14.2: SECURITY.md lists what
/// that allows. Rounds stop once a pair is selected; afterwards the keepalive (webrtc-rs's
/// default) paces the connection, so this costs nothing for a connection's life.
pub const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(5);
/// Binding requests sent on a candidate pair before it fails: with [`ICE_CHECK_INTERVAL`],
/// 2 s of patience (webrtc-rs's default is 7 × 200 ms = 1.4 s), enough for a NAT's hole to
/// open on both sides over a slow path.
pub const ICE_MAX_BINDING_REQUESTS: u16 = 400;

/// Where and how peer connections gather candidates.
#[derive(Debug, Clone)]
pub struct RtcConfig {
    /// Local IPs to bind one UDP socket each (port chosen by the OS). An unspecified address
    /// (`0.0.0.0`, `::`) means every non-loopback interface of that family. Loopback
    /// addresses are bound and offered as host candidates too, which webrtc-rs skips by
    /// default (DESIGN.md facts), so peers on 127.0.0.1 can connect.
    pub bind_ips: Vec<IpAddr>,
    /// STUN and TURN servers; empty by default: no public server is used.
    pub ice_servers: Vec<IceServer>,
    /// Use relay candidates only (`iceTransportPolicy: "relay"`, W3C WebRTC §4.2.5): the
    /// remote never learns this host's addresses, and the connection needs a TURN server.
    pub relay_only: bool,
    /// Whether the offerer's data channel delivers messages in order (`ordered`, W3C WebRTC
    /// §6.2; RFC 8831 §6.4). Either way it is reliable. Default `true`.
    pub ordered: bool,
    /// Take the remote's first data channel as the main channel whatever its label, instead of
    /// only one labelled [`CHANNEL_LABEL`]: for answering an offer from another WebRTC
    /// implementation (a browser tab names its channel as it likes). Default `false`.
    pub any_remote_label: bool,
    /// How long ICE keeps checking after [`ICE_DISCONNECTED_TIMEOUT`] before the connection
    /// fails; default [`ICE_FAILED_TIMEOUT`]. Copy-paste signaling, where a person carries the
    /// answer over, needs minutes.
    pub ice_failed_timeout: Duration,
}

/// One STUN or TURN server for ICE gathering (the `RTCIceServer` dictionary of W3C WebRTC
/// §4.2.4).
#[derive(Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port` (RFC 7064) or `turn:host:port?transport=udp` (RFC 7065).
    pub url: String,
    /// TURN username; empty for STUN.
    pub username: String,
    /// TURN password; empty for STUN.
    pub credential: String,
}

impl IceServer {
    /// A STUN server at `addr`.
    pub fn stun(addr: SocketAddr) -> Self {
        Self::url(format!("stun:{addr}"))
    }

    /// A TURN server at `addr` over UDP, with long-term credentials (RFC 8489 §9.2).
    pub fn turn(addr: SocketAddr, username: String, credential: String) -> Self {
        Self {
            url: format!("turn:{addr}?transport=udp"),
            username,
            credential,
        }
    }

    /// A server given by URL alone (no credentials).
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: String::new(),
            credential: String::new(),
        }
    }

    /// Whether this is a TURN server (`turn:` or `turns:`): one that gives relay candidates.
    pub fn is_turn(&self) -> bool {
        self.url.starts_with("turn:") || self.url.starts_with("turns:")
    }
}

/// The credential is a secret: shown redacted.
impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// How a candidate reaches its host (RFC 8445 §5.1.1): the kind of path a candidate pair
/// gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateType {
    /// An address of one of the host's own interfaces.
    Host,
    /// The address a STUN server saw (a NAT's public side).
    ServerReflexive,
    /// An address learnt from the remote's connectivity checks.
    PeerReflexive,
    /// An address of a TURN relay: traffic goes through the relay.
    Relay,
}

/// The candidate pair ICE selected for a connection (RFC 8445 §8.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CandidatePair {
    /// This side's candidate.
    pub local: CandidateType,
    /// The remote's candidate.
    pub remote: CandidateType,
}

/// What a [`PeerConnection`] reports. Marked `#[non_exhaustive]`: match with a wildcard arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum RtcEvent {
    /// A local ICE candidate was gathered, in its `candidate:...` attribute form
    /// (RFC 8839 §5.1).
    LocalCandidate(String),
    /// Local gathering finished (end-of-candidates, RFC 8838 §4.1).
    GatheringComplete,
    /// The data channel is open.
    ChannelOpen(Channel),
    /// The remote opened a side channel (label starting with [`SIDE_LABEL_PREFIX`]), and it
    /// is open. Its messages arrive on it, not as [`RtcEvent::Message`].
    SideChannelOpen(SideChannel),
    /// A message arrived on the data channel.
    Message(Vec<u8>),
    /// The data channel closed.
    ChannelClosed,
    /// ICE found a working candidate pair (the ICE connection state `connected`, W3C WebRTC
    /// §5.6.4). Without it, a connection fails [`ICE_DISCONNECTED_TIMEOUT`] +
    /// [`ICE_FAILED_TIMEOUT`] after checking starts.
    IceConnected,
    /// The peer connection failed (ICE or DTLS) or was closed.
    Failed(String),
}

/// Why a WebRTC operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RtcError {
    /// webrtc-rs reported an error.
    #[error("webrtc: {0}")]
    Webrtc(String),
    /// The connection has no local description after it was set.
    #[error("no local description after setting it")]
    NoLocalDescription,
    /// The DTLS handshake has not presented a remote certificate (the channel is not open).
    #[error("no remote DTLS certificate yet")]
    NoRemoteCertificate,
    /// [`MAX_SIDE_CHANNELS`] side channels are open on this connection already.
    #[error("{MAX_SIDE_CHANNELS} side channels are open already")]
    TooManySideChannels,
    /// A side channel did not open within [`SIDE_CHANNEL_OPEN_TIMEOUT`], or the connection
    /// closed first.
    #[error("the side channel did not open")]
    SideChannelNotOpen,
    /// A message is larger than [`MAX_MESSAGE_SIZE`].
    #[error("message is {size} bytes; at most {MAX_MESSAGE_SIZE} are allowed")]
    MessageTooLarge {
        /// Size of the rejected message.
        size: usize,
    },
    /// A remote session description is not SDP that webrtc-rs parses (RFC 8866), alone or
    /// with the remote's candidates added to it; holds webrtc-rs's reason.
    #[error("invalid session description: {0}")]
    InvalidDescription(String),
    /// A remote ICE candidate is not an `a=candidate` value that webrtc-rs parses
    /// (RFC 8839 §5.1); holds webrtc-rs's reason.
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
}

/// One WebRTC peer connection with kadrtc's data channel. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct PeerConnection {
    inner: Arc<dyn webrtc::peer_connection::PeerConnection>,
    /// Shared with the event handler: see `Handler::channel_taken`.
    channel_taken: Arc<AtomicBool>,
    /// Starts forwarding a locally created channel's events, tagged like the connection's.
    watch: Arc<dyn Fn(Arc<dyn DataChannel>) + Send + Sync>,
    /// Side channels this side opened, open now.
    local_side_channels: Arc<AtomicUsize>,
    /// Side channels the remote opened, open now (shared with the event handler).
    remote_side_channels: Arc<AtomicUsize>,
    /// Side channels this side opened and [released](SideChannel::release), open and idle.
    idle_side_channels: IdleSideChannels,
    /// Side channels carrying something now (see [`SideChannel::in_use`]), either side's.
    side_channels_in_use: Arc<AtomicUsize>,
    /// See [`RtcConfig::ordered`].
    ordered: bool,
    /// Every data channel of the connection, either side's: see [`PeerConnection::flush`].
    channels: ChannelSet,
}

type IdleSideChannels = Arc<std::sync::Mutex<Vec<SideChannel>>>;

/// The data channels of one connection, held weakly: a channel closed and dropped leaves.
#[derive(Clone, Default)]
struct ChannelSet(Arc<std::sync::Mutex<Vec<Weak<dyn DataChannel>>>>);

impl ChannelSet {
    fn add(&self, channel: &Arc<dyn DataChannel>) {
        let mut channels = lock(&self.0);
        channels.retain(|channel| channel.strong_count() > 0);
        channels.push(Arc::downgrade(channel));
    }

    /// Bytes given to the channels that SCTP has not yet seen acknowledged (or abandoned).
    async fn outstanding_bytes(&self) -> usize {
        let channels: Vec<Arc<dyn DataChannel>> =
            lock(&self.0).iter().filter_map(Weak::upgrade).collect();
        let mut outstanding = 0;
        for channel in channels {
            // A channel that is closed has nothing left to deliver.
            outstanding += channel.outstanding_bytes().await.unwrap_or(0);
        }
        outstanding
    }
}

/// An open data channel. Cheap to clone; sends from clones interleave message by message.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<dyn DataChannel>,
}

/// An open side channel: a [`Channel`] to send on, and its own queue of received messages
/// (at most [`SIDE_CHANNEL_QUEUE`]). Dropping it closes the channel;
/// [`SideChannel::release`] keeps it open for the next [`PeerConnection::open_side_channel`].
pub struct SideChannel {
    label: String,
    channel: Channel,
    messages: mpsc::Receiver<Vec<u8>>,
    /// Where [`SideChannel::release`] puts it: set on side channels this side opened.
    idle: Option<Weak<std::sync::Mutex<Vec<SideChannel>>>>,
    /// The connection's count of side channels in use.
    in_use: Arc<AtomicUsize>,
}

/// Counts one side channel as in use (see [`SideChannel::in_use`]) until dropped.
#[derive(Debug)]
pub struct InUse(Arc<AtomicUsize>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one open side channel; the count drops with it.
struct SideSlot(Arc<AtomicUsize>);

struct Handler<T> {
    tag: T,
    events: mpsc::Sender<(T, RtcEvent)>,
    /// Set once the connection has its data channel (created locally by the offerer, or the
    /// remote's first one); further channels from the remote are closed.
    channel_taken: Arc<AtomicBool>,
    /// The connection this handler serves, once built: see [`wake_until_open`].
    connection: Arc<OnceLock<Weak<dyn webrtc::peer_connection::PeerConnection>>>,
    /// Set when the data channel opens.
    opened: Arc<AtomicBool>,
    /// Side channels the remote opened, open now.
    remote_side_channels: Arc<AtomicUsize>,
    /// See [`PeerConnection::side_channels_in_use`].
    side_channels_in_use: Arc<AtomicUsize>,
    /// See [`RtcConfig::any_remote_label`].
    any_remote_label: bool,
    /// See [`PeerConnection::flush`].
    channels: ChannelSet,
}

impl RtcConfig {
    /// Binds 127.0.0.1 only: for tests and local testnets.
    pub fn loopback() -> Self {
        Self {
            bind_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ice_servers: Vec::new(),
            relay_only: false,
            ordered: true,
            any_remote_label: false,
            ice_failed_timeout: ICE_FAILED_TIMEOUT,
        }
    }

    /// Binds every IPv4 interface and loopback.
    pub fn all_interfaces() -> Self {
        Self {
            bind_ips: vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ],
            ice_servers: Vec::new(),
            relay_only: false,
            ordered: true,
            any_remote_label: false,
            ice_failed_timeout: ICE_FAILED_TIMEOUT,
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self::all_interfaces()
    }
}

impl PeerConnection {
    /// Builds a peer connection whose events arrive on `events`, each tagged with `tag`.
    ///
    /// # Errors
    ///
    /// [`RtcError::Webrtc`] when the sockets cannot be bound or the configuration is invalid.
    pub async fn new<T>(
        config: &RtcConfig,
        tag: T,
        events: mpsc::Sender<(T, RtcEvent)>,
    ) -> Result<Self, RtcError>
    where
        T: Clone + Send + Sync + 'static,
    {
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(
                config
                    .ice_servers
                    .iter()
                    .map(|server| RTCIceServer {
                        urls: vec![server.url.clone()],
                        username: server.username.clone(),
                        credential: server.credential.clone(),
                    })
                    .collect(),
            )
            .with_ice_transport_policy(if config.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            })
            .build();
        let settings = SettingEngineBuilder::new()
            .with_include_loopback_candidate(true)
            .with_ice_timeouts(
                Some(ICE_DISCONNECTED_TIMEOUT),
                Some(config.ice_failed_timeout),
                None,
            )
            // No mDNS (.local) host candidates, and no multicast socket: webrtc-rs's default
            // (query only) joins 224.0.0.251 and cannot start on a host or namespace without
            // a multicast route. A peer's .local candidate then goes unresolved, and its
            // address arrives as a peer-reflexive candidate once it checks us.
            .with_multicast_dns_mode(rtc_ice::mdns::MulticastDnsMode::Disabled)
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            .build();
        let bind: Vec<SocketAddr> = config
            .bind_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, 0))
            .collect();
        let channel_taken = Arc::new(AtomicBool::new(false));
        let connection = Arc::new(OnceLock::new());
        let opened = Arc::new(AtomicBool::new(false));
        let remote_side_channels = Arc::new(AtomicUsize::new(0));
        let side_channels_in_use = Arc::new(AtomicUsize::new(0));
        let channels = ChannelSet::default();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Handler {
                tag: tag.clone(),
                events: events.clone(),
                channel_taken: channel_taken.clone(),
                connection: connection.clone(),
                opened: opened.clone(),
                remote_side_channels: remote_side_channels.clone(),
                side_channels_in_use: side_channels_in_use.clone(),
                any_remote_label: config.any_remote_label,
                channels: channels.clone(),
            }))
            .with_udp_addrs(bind)
            .with_runtime(Arc::new(runtime::BufferedRuntime::new()))
            .with_data_channel_send_buffer_limit(DEFAULT_SEND_BUFFER_LIMIT)
            .build()
            .await
            .map_err(webrtc_error)?;
        let pc: Arc<dyn webrtc::peer_connection::PeerConnection> = Arc::new(pc);
        let _ = connection.set(Arc::downgrade(&pc));
        Ok(Self {
            inner: pc,
            channel_taken,
            local_side_channels: Arc::new(AtomicUsize::new(0)),
            remote_side_channels,
            idle_side_channels: IdleSideChannels::default(),
            side_channels_in_use,
            watch: Arc::new(move |channel| {
                tokio::spawn(pump_channel(
                    channel,
                    tag.clone(),
                    events.clone(),
                    opened.clone(),
                ));
            }),
            ordered: config.ordered,
            channels,
        })
    }

    /// Offerer: creates the data channel and the offer, sets it as local description and
    /// returns its SDP. Candidates follow as [`RtcEvent::LocalCandidate`].
    ///
    /// # Errors
    ///
    /// [`RtcError`] when webrtc-rs refuses a step.
    pub async fn create_offer(&self) -> Result<String, RtcError> {
        // The offerer's channel is its own: the answerer may not add a second one.
        self.channel_taken.store(true, Ordering::SeqCst);
        let channel = self
            .inner
            .create_data_channel(
                CHANNEL_LABEL,
                Some(RTCDataChannelInit {
                    ordered: self.ordered,
                    ..Default::default()
                }),
            )
            .await
            .map_err(webrtc_error)?;
        self.channels.add(&channel);
        (self.watch)(channel);
        let offer = self.inner.create_offer(None).await.map_err(webrtc_error)?;
        self.inner
            .set_local_description(offer)
            .await
            .map_err(webrtc_error)?;
        self.local_sdp().await
    }

    /// Answerer: sets the offer `sdp`, with `candidates` (`candidate:...` form) added to it,
    /// as remote description, creates the answer, sets it as local description and returns its
    /// SDP. Candidates given here give ICE its candidate pairs before its first check.
    ///
    /// # Errors
    ///
    /// [`RtcError`] when the offer is not valid SDP or webrtc-rs refuses a step.
    pub async fn accept_offer(
        &self,
        sdp: String,
        candidates: &[String],
    ) -> Result<String, RtcError> {
        let offer = RTCSessionDescription::offer(with_candidates(&sdp, candidates))
            .map_err(webrtc_error)?;
        self.inner
            .set_remote_description(offer)
            .await
            .map_err(webrtc_error)?;
        let answer = self.inner.create_answer(None).await.map_err(webrtc_error)?;
        self.inner
            .set_local_description(answer)
            .await
            .map_err(webrtc_error)?;
        self.local_sdp().await
    }

    /// Offerer: sets the answer `sdp`, with `candidates` added to it, as remote description.
    ///
    /// # Errors
    ///
    /// [`RtcError`] when the answer is not valid SDP or does not match the offer.
    pub async fn apply_answer(&self, sdp: String, candidates: &[String]) -> Result<(), RtcError> {
        let answer = RTCSessionDescription::answer(with_candidates(&sdp, candidates))
            .map_err(webrtc_error)?;
        self.inner
            .set_remote_description(answer)
            .await
            .map_err(webrtc_error)
    }

    /// Adds a remote candidate (`candidate:...` form). Call only after the remote description
    /// is set.
    ///
    /// # Errors
    ///
    /// [`RtcError`] when the candidate does not parse.
    pub async fn add_candidate(&self, candidate: String) -> Result<(), RtcError> {
        self.inner
            .add_ice_candidate(RTCIceCandidateInit {
                candidate,
                sdp_mline_index: Some(0),
                ..Default::default()
            })
            .await
            .map_err(webrtc_error)
    }

    /// The SDP of the local description, once set.
    ///
    /// # Errors
    ///
    /// [`RtcError::NoLocalDescription`] before the offer or answer was created.
    pub async fn local_description(&self) -> Result<String, RtcError> {
        self.local_sdp().await
    }

    /// The DER certificate the remote presented in the DTLS handshake (RFC 8827 §6.5: the
    /// one whose fingerprint the remote description carries). Available once the data
    /// channel is open.
    ///
    /// # Errors
    ///
    /// [`RtcError::NoRemoteCertificate`] before the handshake has finished.
    pub async fn remote_certificate(&self) -> Result<Vec<u8>, RtcError> {
        let sctp = self
            .inner
            .sctp()
            .await
            .ok_or(RtcError::NoRemoteCertificate)?;
        sctp.transport()
            .get_remote_certificates()
            .await
            .map_err(webrtc_error)?
            .into_iter()
            .next()
            .ok_or(RtcError::NoRemoteCertificate)
    }

    /// The candidate pair ICE selected, once connected; `None` before (or when webrtc-rs
    /// reports a candidate of unspecified type).
    pub async fn selected_candidate_pair(&self) -> Option<CandidatePair> {
        let sctp = self.inner.sctp().await?;
        let pair = sctp
            .transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await
            .ok()??;
        Some(CandidatePair {
            local: CandidateType::from_webrtc(pair.local().typ)?,
            remote: CandidateType::from_webrtc(pair.remote().typ)?,
        })
    }

    /// Opens a reliable, ordered side channel labelled `label` (which must start with
    /// [`SIDE_LABEL_PREFIX`]) on this connected peer connection and waits until it is open
    /// (RFC 8832's DCEP handshake), at most [`SIDE_CHANNEL_OPEN_TIMEOUT`].
    ///
    /// A side channel of the same label that this side [released](SideChannel::release)
    /// and that is still open is returned instead of a new one: the remote must expect a
    /// channel to be used again once whatever it carried ended.
    ///
    /// # Errors
    ///
    /// [`RtcError::TooManySideChannels`] over [`MAX_SIDE_CHANNELS`];
    /// [`RtcError::SideChannelNotOpen`] when it does not open in time; [`RtcError::Webrtc`]
    /// when webrtc-rs refuses it (the connection is not established, or the label is not a
    /// side label).
    pub async fn open_side_channel(&self, label: &str) -> Result<SideChannel, RtcError> {
        if !is_side_label(label) {
            return Err(RtcError::Webrtc(format!(
                "side channel labels start with {SIDE_LABEL_PREFIX:?}; {label:?} does not"
            )));
        }
        if let Some(side) = self.take_idle_side_channel(label) {
            return Ok(side);
        }
        let deadline = tokio::time::Instant::now() + SIDE_CHANNEL_OPEN_TIMEOUT;
        let mut retry_in = SIDE_CHANNEL_RETRY_INITIAL;
        let mut evicted_one = false;
        for attempt in 1.. {
            let slot = match SideSlot::take(&self.local_side_channels) {
                Some(slot) => slot,
                None => {
                    // Idle channels of other labels hold slots: one (and only one, however
                    // long its close takes) is closed to make room, and its pump frees the
                    // slot once the close is reported.
                    if !evicted_one {
                        let evicted = lock(&self.idle_side_channels).pop();
                        let Some(evicted) = evicted else {
                            return Err(RtcError::TooManySideChannels);
                        };
                        drop(evicted);
                        evicted_one = true;
                    }
                    tokio::time::sleep(retry_in).await;
                    retry_in = (retry_in * 2).min(SIDE_CHANNEL_RETRY_MAX);
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    continue;
                }
            };
            let channel = self
                .inner
                .create_data_channel(label, Some(RTCDataChannelInit::default()))
                .await
                .map_err(webrtc_error)?;
            self.channels.add(&channel);
            let (open_tx, open_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(pump_side_channel::<()>(
                channel.clone(),
                label.to_string(),
                slot,
                self.side_channels_in_use.clone(),
                SideOpen::Reply(open_tx, Arc::downgrade(&self.idle_side_channels)),
            ));
            match tokio::time::timeout_at(deadline, open_rx).await {
                Ok(Ok(side)) => return Ok(side),
                // Closed before it opened: webrtc-rs may hand out the stream id of a channel
                // whose reset (RFC 8831 §6.7) has not finished, and the remote refuses it. On
                // a loaded machine that lasts longer than a few short tries.
                Ok(Err(_)) if tokio::time::Instant::now() + retry_in < deadline => {
                    tracing::debug!(attempt, %label, "side channel closed before it opened");
                    tokio::time::sleep(retry_in).await;
                    retry_in = (retry_in * 2).min(SIDE_CHANNEL_RETRY_MAX);
                }
                Ok(Err(_)) => break,
                Err(_) => {
                    // Its pump, and slot, end with the channel.
                    if let Err(error) = channel.close().await {
                        tracing::debug!(%error, "closing a side channel that did not open");
                    }
                    break;
                }
            }
        }
        Err(RtcError::SideChannelNotOpen)
    }

    /// A released side channel labelled `label` that is still open, if any, with nothing
    /// queued: what the remote sent while it was idle belongs to no one and is dropped.
    fn take_idle_side_channel(&self, label: &str) -> Option<SideChannel> {
        let mut idle = lock(&self.idle_side_channels);
        loop {
            // Channels the remote closed meanwhile are dropped here.
            idle.retain(|side| !side.messages.is_closed());
            let position = idle.iter().position(|side| side.label == label)?;
            let mut side = idle.swap_remove(position);
            loop {
                match side.messages.try_recv() {
                    Ok(stray) => {
                        tracing::debug!(%label, bytes = stray.len(), "message on an idle side channel dropped");
                    }
                    Err(mpsc::error::TryRecvError::Empty) => return Some(side),
                    // Closed while it was drained: look for another.
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
        }
    }

    /// Side channels of this connection marked [in use](SideChannel::in_use) now, by either
    /// side's holders: unlike [`PeerConnection::side_channels_open`], idle channels kept for
    /// later do not count.
    pub fn side_channels_in_use(&self) -> usize {
        self.side_channels_in_use.load(Ordering::Acquire)
    }

    /// Side channels open on this connection now, opened by either side (released ones
    /// included).
    pub fn side_channels_open(&self) -> usize {
        self.local_side_channels.load(Ordering::Acquire)
            + self.remote_side_channels.load(Ordering::Acquire)
    }

    /// Waits until the remote's SCTP has acknowledged (RFC 9260 §3.3.4, SACK) every message
    /// given to this connection's data channels, either side's, at most `limit`; returns
    /// whether it did. Call it before [`PeerConnection::close`] to have the last messages
    /// arrive: closing aborts the SCTP association (RFC 9260 §9.1), and the remote discards
    /// what it has not read yet.
    ///
    /// An acknowledged message is in the remote's SCTP stack, not necessarily read by its
    /// application; a connection whose remote is gone waits the whole `limit`.
    pub async fn flush(&self, limit: Duration) -> bool {
        // The limit covers webrtc-rs's own calls too, should its driver be stuck.
        let acknowledged = async {
            while self.channels.outstanding_bytes().await > 0 {
                tokio::time::sleep(FLUSH_POLL_INTERVAL).await;
            }
        };
        tokio::time::timeout(limit, acknowledged).await.is_ok()
    }

    /// Closes the connection and its channel.
    pub async fn close(&self) {
        if let Err(error) = self.inner.close().await {
            tracing::debug!(%error, "closing peer connection");
        }
    }

    async fn local_sdp(&self) -> Result<String, RtcError> {
        self.inner
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or(RtcError::NoLocalDescription)
    }
}

impl CandidateType {
    /// The candidate type's name in SDP (`typ host|srflx|prflx|relay`, RFC 8839 §5.1).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::ServerReflexive => "srflx",
            Self::PeerReflexive => "prflx",
            Self::Relay => "relay",
        }
    }

    fn from_webrtc(typ: RTCIceCandidateType) -> Option<Self> {
        match typ {
            RTCIceCandidateType::Host => Some(Self::Host),
            RTCIceCandidateType::Srflx => Some(Self::ServerReflexive),
            RTCIceCandidateType::Prflx => Some(Self::PeerReflexive),
            RTCIceCandidateType::Relay => Some(Self::Relay),
            _ => None,
        }
    }
}

impl fmt::Display for CandidateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CandidatePair {
    /// Whether traffic goes through a TURN relay on either side.
    pub fn is_relayed(&self) -> bool {
        self.local == CandidateType::Relay || self.remote == CandidateType::Relay
    }
}

impl fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConnection").finish_non_exhaustive()
    }
}

impl Channel {
    /// Sends one binary message; waits while more than [`DEFAULT_SEND_BUFFER_LIMIT`] bytes
    /// are unacknowledged.
    ///
    /// # Errors
    ///
    /// [`RtcError::MessageTooLarge`] over [`MAX_MESSAGE_SIZE`]; [`RtcError::Webrtc`] when the
    /// channel is closed.
    pub async fn send(&self, data: &[u8]) -> Result<(), RtcError> {
        if data.len() > MAX_MESSAGE_SIZE {
            return Err(RtcError::MessageTooLarge { size: data.len() });
        }
        self.inner
            .send(BytesMut::from(data))
            .await
            .map_err(webrtc_error)
    }

    /// Sends one text message (a string message in a browser's `onmessage`, RFC 8831 §6.6
    /// PPID 51); waits as [`Channel::send`].
    ///
    /// # Errors
    ///
    /// As [`Channel::send`].
    pub async fn send_text(&self, text: &str) -> Result<(), RtcError> {
        if text.len() > MAX_MESSAGE_SIZE {
            return Err(RtcError::MessageTooLarge { size: text.len() });
        }
        self.inner.send_text(text).await.map_err(webrtc_error)
    }

    /// Closes the channel.
    pub async fn close(&self) {
        if let Err(error) = self.inner.close().await {
            tracing::debug!(%error, "closing data channel");
        }
    }
}

impl SideChannel {
    /// The channel's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The channel, to send on (clones may be kept after this side channel is dropped).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The next message from the remote, or `None` once the channel closed.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.messages.recv().await
    }

    /// Sends one message; as [`Channel::send`].
    ///
    /// # Errors
    ///
    /// As [`Channel::send`].
    pub async fn send(&self, data: &[u8]) -> Result<(), RtcError> {
        self.channel.send(data).await
    }
}

impl SideChannel {
    /// Counts this channel as in use ([`PeerConnection::side_channels_in_use`]) until the
    /// returned mark is dropped: for the time it carries something, as opposed to an open
    /// channel waiting for its next use.
    pub fn in_use(&self) -> InUse {
        self.in_use.fetch_add(1, Ordering::AcqRel);
        InUse(self.in_use.clone())
    }

    /// Keeps this side channel open for the next [`PeerConnection::open_side_channel`] with
    /// its label, instead of closing it; it still counts against [`MAX_SIDE_CHANNELS`].
    /// A side channel the remote opened, or whose connection is gone, is closed instead.
    ///
    /// Closing a channel and opening the next one at once is what webrtc-rs 0.21 (rtc and
    /// rtc-sctp 0.21.1) cannot do reliably: the new channel takes the SCTP stream id just
    /// freed, and the resets that close the old stream (RFC 8831 §6.7) may arrive after it
    /// and close the new one. Releasing avoids the close.
    ///
    /// Messages still queued are discarded: release a channel only once what it carried
    /// ended on both sides.
    pub fn release(mut self) {
        let Some(idle) = self.idle.as_ref().and_then(Weak::upgrade) else {
            return;
        };
        if self.messages.is_closed() {
            return;
        }
        while self.messages.try_recv().is_ok() {}
        lock(&idle).push(self);
    }
}

/// Locks `mutex`, whether or not a holder panicked (what it guards stays consistent).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for SideChannel {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { channel.close().await });
        }
    }
}

impl fmt::Debug for SideChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideChannel")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl SideSlot {
    /// A slot, when fewer than [`MAX_SIDE_CHANNELS`] are taken.
    fn take(count: &Arc<AtomicUsize>) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SIDE_CHANNELS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for SideSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn is_side_label(label: &str) -> bool {
    label.len() > SIDE_LABEL_PREFIX.len() && label.starts_with(SIDE_LABEL_PREFIX)
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").finish_non_exhaustive()
    }
}

impl<T: Clone + Send + Sync + 'static> Handler<T> {
    async fn emit(&self, event: RtcEvent) {
        // The receiver is gone only when the room shut down; nothing is waiting for events.
        let _ = self.events.send((self.tag.clone(), event)).await;
    }
}

#[async_trait::async_trait]
impl<T: Clone + Send + Sync + 'static> PeerConnectionEventHandler for Handler<T> {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.emit(RtcEvent::LocalCandidate(init.candidate)).await,
            Err(error) => tracing::debug!(%error, "local candidate cannot be signaled"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.emit(RtcEvent::GatheringComplete).await;
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        tracing::debug!(%state, "ICE connection state");
        if state == RTCIceConnectionState::Connected {
            if let Some(connection) = self.connection.get() {
                tokio::spawn(wake_until_open(connection.clone(), self.opened.clone()));
            }
            self.emit(RtcEvent::IceConnected).await;
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");

        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            self.emit(RtcEvent::Failed(format!("peer connection {state}")))
                .await;
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        // The remote may open one main channel, labelled CHANNEL_LABEL (any label with
        // `any_remote_label`), and up to MAX_SIDE_CHANNELS side channels at once; anything
        // else is closed so that a peer cannot multiply channels or replace the one in use.
        let label = channel.label().await.unwrap_or_default();
        self.channels.add(&channel);
        if is_side_label(&label) && self.channel_taken.load(Ordering::SeqCst) {
            if let Some(slot) = SideSlot::take(&self.remote_side_channels) {
                tokio::spawn(pump_side_channel(
                    channel,
                    label,
                    slot,
                    self.side_channels_in_use.clone(),
                    SideOpen::Event(self.tag.clone(), self.events.clone()),
                ));
                return;
            }
        }
        let main_label = label == CHANNEL_LABEL || self.any_remote_label;
        if !main_label || self.channel_taken.swap(true, Ordering::SeqCst) {
            tracing::warn!(%label, "unexpected data channel from the remote closed");
            if let Err(error) = channel.close().await {
                tracing::debug!(%error, "closing unexpected data channel");
            }
            return;
        }
        tokio::spawn(pump_channel(
            channel,
            self.tag.clone(),
            self.events.clone(),
            self.opened.clone(),
        ));
    }
}

/// How often a connection's driver is woken between ICE connecting and the open channel.
const SETUP_WAKE_INTERVAL: Duration = Duration::from_millis(10);
/// The longest a connection keeps being woken.
const SETUP_WAKE_LIMIT: Duration = Duration::from_secs(2);

/// Wakes a peer connection's driver every [`SETUP_WAKE_INTERVAL`] from ICE connected until
/// the data channel is open (or [`SETUP_WAKE_LIMIT`]).
///
/// webrtc-rs 0.21's driver sends what its handlers queue while it handles an event (the SCTP
/// INIT once DTLS completes, the DCEP `DATA_CHANNEL_OPEN` once SCTP is established) only at
/// its next wake-up: a packet, an application call, or its timer, which after ICE connects
/// ticks at most every 200 ms. That cost two ticks, ≈ 400 ms, per connection (DESIGN.md
/// facts). The fix belongs in webrtc's driver loop (`PeerConnectionDriver::run` in
/// webrtc-0.21.1/src/peer_connection/driver.rs, which should poll writes again after
/// `poll_events`). Until then an application call wakes it: setting the configuration to
/// itself only queues it for the next ICE restart. The wakes stop with the set-up, so an
/// open connection costs nothing more.
async fn wake_until_open(
    connection: Weak<dyn webrtc::peer_connection::PeerConnection>,
    opened: Arc<AtomicBool>,
) {
    let deadline = tokio::time::Instant::now() + SETUP_WAKE_LIMIT;
    while !opened.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
        let Some(pc) = connection.upgrade() else {
            return;
        };
        let configuration = pc.get_configuration().await;
        if pc.set_configuration(configuration).await.is_err() {
            return;
        }
        drop(pc);
        tokio::time::sleep(SETUP_WAKE_INTERVAL).await;
    }
}

/// Where a side channel goes once open.
enum SideOpen<T> {
    /// To the caller of [`PeerConnection::open_side_channel`], releasable into the
    /// connection's idle side channels.
    Reply(
        tokio::sync::oneshot::Sender<SideChannel>,
        Weak<std::sync::Mutex<Vec<SideChannel>>>,
    ),
    /// As an [`RtcEvent::SideChannelOpen`] tagged `T`.
    Event(T, mpsc::Sender<(T, RtcEvent)>),
}

/// Forwards one side channel's messages to its [`SideChannel`] until it closes or the
/// [`SideChannel`] is dropped; holds its slot as long.
async fn pump_side_channel<T>(
    channel: Arc<dyn DataChannel>,
    label: String,
    _slot: SideSlot,
    in_use: Arc<AtomicUsize>,
    open: SideOpen<T>,
) {
    let (tx, messages) = mpsc::channel(SIDE_CHANNEL_QUEUE);
    let mut pending = Some((open, messages));
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                let Some((open, messages)) = pending.take() else {
                    continue;
                };
                let mut side = SideChannel {
                    label: label.clone(),
                    channel: Channel {
                        inner: channel.clone(),
                    },
                    messages,
                    idle: None,
                    in_use: in_use.clone(),
                };
                let delivered = match open {
                    SideOpen::Reply(reply, idle) => {
                        side.idle = Some(idle);
                        reply.send(side).is_ok()
                    }
                    SideOpen::Event(tag, events) => events
                        .send((tag, RtcEvent::SideChannelOpen(side)))
                        .await
                        .is_ok(),
                };
                if !delivered {
                    return;
                }
            }
            DataChannelEvent::OnMessage(message) => {
                let Ok(()) = tx.send(message.data.to_vec()).await else {
                    // The SideChannel was dropped (and closes the channel).
                    return;
                };
            }
            DataChannelEvent::OnClose => return,
            _ => {}
        }
    }
}

/// Forwards one data channel's events until it closes.
async fn pump_channel<T: Clone + Send + 'static>(
    channel: Arc<dyn DataChannel>,
    tag: T,
    events: mpsc::Sender<(T, RtcEvent)>,
    opened: Arc<AtomicBool>,
) {
    while let Some(event) = channel.poll().await {
        let event = match event {
            DataChannelEvent::OnOpen => {
                opened.store(true, Ordering::Release);
                RtcEvent::ChannelOpen(Channel {
                    inner: channel.clone(),
                })
            }
            DataChannelEvent::OnMessage(message) => RtcEvent::Message(message.data.to_vec()),
            DataChannelEvent::OnClose => RtcEvent::ChannelClosed,
            _ => continue,
        };
        let closed = matches!(event, RtcEvent::ChannelClosed);
        if events.send((tag.clone(), event)).await.is_err() || closed {
            return;
        }
    }
    let _ = events.send((tag, RtcEvent::ChannelClosed)).await;
}

/// Checks a remote session description and its candidates with webrtc-rs's own parsers, without
/// a peer connection: the SDP (`v=0\r\n...`, RFC 8866) as [`PeerConnection::accept_offer`] and
/// [`PeerConnection::apply_answer`] receive it, each candidate (`candidate:...` form,
/// RFC 8839 §5.1) as [`PeerConnection::add_candidate`] receives it, and the SDP with the
/// candidates added as those two methods hand it to webrtc-rs, every `a=candidate` line of
/// every media section included.
///
/// Passing means the text parses, not that a negotiation with it succeeds: ICE credentials,
/// the DTLS fingerprint and the offer/answer match are checked only when the description is
/// set.
///
/// # Errors
///
/// [`RtcError::InvalidDescription`] when the SDP, alone or with the candidates, does not parse;
/// [`RtcError::InvalidCandidate`] when a candidate, given or in the SDP, does not parse.
pub fn check_remote_description(sdp: &str, candidates: &[String]) -> Result<(), RtcError> {
    parse_description(sdp.to_string())?;
    for candidate in candidates {
        // As webrtc-rs's `add_ice_candidate`: the attribute name in front is optional, and an
        // empty value is the end-of-candidates sentinel, not parsed.
        let value = candidate.strip_prefix("candidate:").unwrap_or(candidate);
        if !value.is_empty() {
            parse_candidate(value)?;
        }
    }
    for candidate in parse_description(with_candidates(sdp, candidates))? {
        parse_candidate(&candidate)?;
    }
    Ok(())
}

/// Parses `sdp` with the parser webrtc-rs runs on a description it is given (the type, offer
/// or answer, does not change the parse) and returns the values of the `a=candidate`
/// attributes of all its media sections, which webrtc-rs parses next.
fn parse_description(sdp: String) -> Result<Vec<String>, RtcError> {
    // `RTCSessionDescription::offer` would parse twice (once to cache, once for us).
    let mut description = RTCSessionDescription::default();
    description.sdp_type = RTCSdpType::Offer;
    description.sdp = sdp;
    let parsed = description
        .unmarshal()
        .map_err(|e| RtcError::InvalidDescription(e.to_string()))?;
    Ok(parsed
        .media_descriptions
        .iter()
        .flat_map(|media| &media.attributes)
        // As webrtc-rs: an `a=candidate` without a value is ignored, not an error.
        .filter(|attribute| attribute.is_ice_candidate())
        .filter_map(|attribute| attribute.value.clone())
        .collect())
}

/// Parses the value of an `a=candidate` attribute (the text after `candidate:`) as webrtc-rs
/// does when it adds a remote candidate.
fn parse_candidate(value: &str) -> Result<(), RtcError> {
    rtc_ice::candidate::unmarshal_candidate(value)
        .map(drop)
        .map_err(|e| RtcError::InvalidCandidate(e.to_string()))
}

/// Adds `a=candidate` lines (RFC 8839 §5.1) for `candidates` at the end of the SDP's first
/// media section, kadrtc's only one. A candidate holding a line break or not in
/// `candidate:...` form is skipped, so it cannot inject other SDP lines.
fn with_candidates(sdp: &str, candidates: &[String]) -> String {
    let usable: Vec<&String> = candidates
        .iter()
        .filter(|c| c.starts_with("candidate:") && !c.chars().any(char::is_control))
        .collect();
    if usable.is_empty() {
        return sdp.to_string();
    }
    let mut out =
        String::with_capacity(sdp.len() + usable.iter().map(|c| c.len() + 4).sum::<usize>());
    let mut in_first_media = false;
    let mut inserted = false;
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("m=") {
            if in_first_media && !inserted {
                push_candidates(&mut out, &usable);
                inserted = true;
            }
            in_first_media = !inserted;
        }
        out.push_str(line);
    }
    if in_first_media && !inserted {
        if !out.ends_with('\n') {
            out.push_str("\r\n");
        }
        push_candidates(&mut out, &usable);
    }
    out
}

fn push_candidates(out: &mut String, candidates: &[&String]) {
    for candidate in candidates {
        out.push_str("a=");
        out.push_str(candidate);
        out.push_str("\r\n");
    }
}

fn webrtc_error(error: impl fmt::Display) -> RtcError {
    RtcError::Webrtc(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";

    #[test]
    fn candidates_are_added_to_the_first_media_section() {
        let candidate = "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".to_string();
        let sdp = with_candidates(SDP, std::slice::from_ref(&candidate));
        assert_eq!(sdp, format!("{SDP}a={candidate}\r\n"));

        let two_sections = format!("{SDP}m=audio 9 RTP/AVP 0\r\na=mid:1\r\n");
        let sdp = with_candidates(&two_sections, std::slice::from_ref(&candidate));
        assert!(sdp.contains(&format!("a=mid:0\r\na={candidate}\r\nm=audio")));
    }

    #[test]
    fn candidates_cannot_inject_sdp_lines() {
        let evil =
            "candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=fingerprint:sha-256 00".to_string();
        let not_a_candidate = "a=fingerprint:sha-256 00".to_string();
        assert_eq!(with_candidates(SDP, &[evil, not_a_candidate]), SDP);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_offer_and_its_candidates_pass_the_remote_check() {
        let (tx, mut rx) = mpsc::channel(64);
        let offerer = PeerConnection::new(&RtcConfig::loopback(), (), tx)
            .await
            .unwrap();
        let offer = offerer.create_offer().await.unwrap();
        let mut candidates = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                match rx.recv().await.expect("events until gathering completes").1 {
                    RtcEvent::LocalCandidate(candidate) => candidates.push(candidate),
                    RtcEvent::GatheringComplete => break,
                    _ => {}
                }
            }
        })
        .await
        .expect("loopback gathering completes within the deadline");
        assert!(!candidates.is_empty());
        check_remote_description(&offer, &candidates).unwrap();
        check_remote_description(SDP, &[]).unwrap();
        offerer.close().await;
    }

    #[test]
    fn garbage_descriptions_and_candidates_are_typed_errors() {
        for sdp in ["", "hello", "v=0\r\nm=application\r\n", "\u{0}\u{ff}"] {
            assert!(
                matches!(
                    check_remote_description(sdp, &[]),
                    Err(RtcError::InvalidDescription(_))
                ),
                "{sdp:?}"
            );
        }
        for candidate in [
            "candidate:",
            "candidate:1 1 udp",
            "candidate:1 1 udp 2130706431 127.0.0.1 99999 typ host",
            "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ nonsense",
            "candidate:1 1 udp 1 127.0.0.1 5000 typ srflx raddr 0.0.0.0",
        ] {
            assert!(
                matches!(
                    check_remote_description(SDP, &[candidate.to_string()]),
                    Err(RtcError::InvalidCandidate(_))
                ),
                "{candidate:?}"
            );
        }
    }
}
