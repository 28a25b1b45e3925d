//! Copy-paste signaling: one WebRTC data channel between two sides that swap one line each by
//! hand (a chat, a mail, a QR code), with no DHT, no node and no signaling server.
//!
//! Each line is a session description in the browser's `RTCSessionDescriptionInit` shape (W3C
//! WebRTC §4.8.1.1), `{"type":"offer","sdp":"v=0\r\n…"}` and `{"type":"answer","sdp":"…"}`,
//! with every ICE candidate (RFC 8839 §5.1) inside the SDP: there is no channel to trickle
//! candidates on, so each side waits for gathering to finish before it hands out its line
//! (non-trickle ICE, RFC 8829 §4.1.9 and §5.2.1 on `a=end-of-candidates`). So the other side
//! can be another kadrtc, a browser tab (`JSON.stringify(pc.localDescription)` once gathering
//! completed), aiortc or any other standard WebRTC peer.
//!
//! The offering side calls [`ManualConnection::offer`] and hands out the [`Description`]'s
//! [`Description::to_line`]; the answering side reads it with [`Description::parse_line`],
//! calls [`ManualConnection::answer`] and hands back its own line; the offering side parses
//! it and calls [`ManualConnection::accept_answer`]. Both then read [`ManualEvent`]s: the
//! channel opens, messages arrive. Messages are the application's bytes as they are, with no
//! kadrtc framing, so a browser's `onmessage` sees exactly what [`ManualConnection::send_text`]
//! sent.
//!
//! ```no_run
//! # async fn run() -> Result<(), kadrtc::manual::ManualError> {
//! use kadrtc::manual::{Description, ManualConfig, ManualConnection, ManualEvent};
//!
//! let (mut connection, offer) = ManualConnection::offer(&ManualConfig::default()).await?;
//! println!("{}", offer.to_line()); // give this line to the other side
//! let mut line = String::new();
//! std::io::stdin().read_line(&mut line).expect("stdin"); // and paste its answer line here
//! connection.accept_answer(&Description::parse_line(&line)?).await?;
//! while let Some(event) = connection.next_event().await {
//!     match event {
//!         ManualEvent::ChannelOpen { .. } => connection.send_text("hello").await?,
//!         ManualEvent::Message(data) => println!("{}", String::from_utf8_lossy(&data)),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kadrtc_rtc::{CandidatePair, IceServer, PeerConnection, RtcConfig, RtcError, RtcEvent};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::mpsc;

/// How long [`ManualConnection::offer`] and [`ManualConnection::answer`] wait for ICE
/// gathering to complete before they return the description with the candidates gathered so
/// far: 10 s. Host candidates take milliseconds; a STUN or TURN server that does not answer
/// is what this bounds.
pub const GATHERING_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the offering side waits for the data channel once
/// [`ManualConnection::accept_answer`] has set the answer, before [`ManualEvent::Failed`]:
/// 30 s.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the answering side waits for the data channel once [`ManualConnection::answer`]
/// has returned its answer, before [`ManualEvent::Failed`]: 5 minutes, the time a person has
/// to carry the answer line to the offering side. The answering side's ICE keeps checking as
/// long (after the 5 s of [`kadrtc_rtc::ICE_DISCONNECTED_TIMEOUT`]), since its checks start
/// before the offering side has the answer; the offering side's fails after the usual
/// [`kadrtc_rtc::ICE_FAILED_TIMEOUT`]. So an answering side whose open channel loses its peer
/// without a close notices only after that long.
pub const ANSWER_CARRY_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest message [`ManualConnection::send`] and [`ManualConnection::send_text`] accept, in
/// bytes: 64 KiB, all of it the application's (no frame byte, unlike a room's
/// [`crate::MAX_MESSAGE_SIZE`]); RFC 8831 §6.6.
pub const MAX_MESSAGE_SIZE: usize = kadrtc_rtc::MAX_MESSAGE_SIZE;

/// The longest [`ManualConnection::close`] waits for the other side to acknowledge what was
/// sent before it closes: 1 s.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Connection events waiting to be read with [`ManualConnection::next_event`].
const EVENT_QUEUE: usize = 64;

/// The shape of a description line, for error messages.
const LINE_SHAPE: &str = r#"{"type":"offer","sdp":"v=0…"} or {"type":"answer","sdp":"v=0…"}"#;

/// Which of the two descriptions of an exchange (RFC 8829 §5.2 and §5.3): the `type` member
/// of `RTCSessionDescriptionInit` (W3C WebRTC §4.8.1.1). `"pranswer"` and `"rollback"` have no
/// use when one line goes each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DescriptionKind {
    /// `"offer"`: made first, by the side that creates the data channel.
    Offer,
    /// `"answer"`: made from the offer, by the other side.
    Answer,
}

/// One session description as it travels between the two sides: its kind and its SDP
/// (RFC 8866), every gathered ICE candidate in `a=candidate` lines (RFC 8839 §5.1) and, once
/// gathering completed, `a=end-of-candidates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// Offer or answer.
    pub kind: DescriptionKind,
    /// The SDP, `v=0\r\n…`, with CRLF line endings.
    pub sdp: String,
}

/// Where and how a [`ManualConnection`] gathers its candidates. `Default` binds every IPv4
/// interface and loopback and uses no STUN or TURN server: only host candidates, so both
/// sides must reach each other's addresses directly (one LAN, one host).
#[derive(Debug, Clone)]
pub struct ManualConfig {
    /// Local IPs to bind one UDP socket each and offer as host candidates (port chosen by the
    /// OS). An unspecified address (`0.0.0.0`, `::`) means every non-loopback interface of
    /// that family. Default `[0.0.0.0, 127.0.0.1]`.
    pub bind_ips: Vec<IpAddr>,
    /// STUN (RFC 7064 URLs, `stun:host:port`) and TURN servers to gather server-reflexive
    /// and relay candidates from. Default none.
    pub ice_servers: Vec<IceServer>,
    /// Offer relay candidates only (`iceTransportPolicy: "relay"`, W3C WebRTC §4.2.5): the
    /// other side never learns this host's addresses; needs a TURN server in
    /// [`ManualConfig::ice_servers`]. Default `false`.
    pub relay_only: bool,
}

/// One side of a copy-paste connection: made by [`ManualConnection::offer`] or
/// [`ManualConnection::answer`], read with [`ManualConnection::next_event`], written with
/// [`ManualConnection::send`]. Dropping it closes the connection in the background;
/// [`ManualConnection::close`] closes it before returning.
pub struct ManualConnection {
    pc: PeerConnection,
    events: mpsc::Receiver<((), RtcEvent)>,
    /// Events that arrived while gathering, handed out first by `next_event`. A few at most:
    /// before both descriptions are set only ICE state changes can happen.
    early: VecDeque<RtcEvent>,
    /// The kind of description this side made.
    role: DescriptionKind,
    /// When both descriptions were set on this side.
    described_at: Option<Instant>,
    /// When `next_event` gives up waiting for the channel, and the wait it allowed.
    open_deadline: Option<(tokio::time::Instant, Duration)>,
    /// The data channel, once open.
    channel: Option<kadrtc_rtc::Channel>,
    /// The channel opened `elapsed` after both descriptions were set; its
    /// [`ManualEvent::ChannelOpen`] waits for the candidate pair to be read. Kept here so that
    /// a cancelled `next_event` loses nothing.
    opening: Option<Duration>,
    /// [`ManualEvent::Closed`] or [`ManualEvent::Failed`] was handed out: nothing follows.
    ended: bool,
    /// [`ManualConnection::close`] ran; `Drop` has nothing to do.
    closed: bool,
}

/// What happens on a [`ManualConnection`], from [`ManualConnection::next_event`]. Marked
/// `#[non_exhaustive]`: match with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManualEvent {
    /// The data channel is open: [`ManualConnection::send`] works from now on.
    ChannelOpen {
        /// Time from both descriptions being set on this side (when
        /// [`ManualConnection::accept_answer`] or [`ManualConnection::answer`] returned) to
        /// the channel opening.
        elapsed: Duration,
        /// The candidate pair ICE selected (RFC 8445 §8.1.1): both `host` or reflexive means
        /// a direct path, `relay` on either side a path through a TURN relay. `None` when
        /// webrtc-rs does not report it.
        candidate_pair: Option<CandidatePair>,
    },
    /// A message arrived on the data channel, as the other side sent it (a text message as
    /// its UTF-8 bytes).
    Message(Vec<u8>),
    /// The data channel closed: the other side closed it or its connection. Nothing follows.
    /// Before [`ManualEvent::ChannelOpen`], the other side refused the channel.
    Closed,
    /// The connection failed, or the channel did not open within [`OPEN_TIMEOUT`] (offering
    /// side) or [`ANSWER_CARRY_TIMEOUT`] (answering side) of both descriptions being set.
    /// Holds what happened and what to check, for people. Nothing follows.
    Failed(String),
}

/// Why a description line was refused, or a [`ManualConnection`] step failed. Each message
/// says what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManualError {
    /// The line is not JSON (a partial paste, usually).
    #[error(
        "the description line is not JSON ({reason}); paste the whole line the other side \
         printed, {LINE_SHAPE}"
    )]
    NotJson {
        /// The JSON parser's reason, with the column where it stopped.
        reason: String,
    },
    /// The line is JSON but not an object.
    #[error("the description line is not a JSON object; expected {LINE_SHAPE}")]
    NotObject,
    /// The object has no `type` member.
    #[error("the description line has no \"type\"; expected {LINE_SHAPE}")]
    NoType,
    /// The `type` member is neither `"offer"` nor `"answer"`.
    #[error("the description line has type {found}; expected {LINE_SHAPE}")]
    UnknownType {
        /// The `type` member as it was, in JSON (`"pranswer"`, `5`, …).
        found: String,
    },
    /// The object has no `sdp` member.
    #[error("the description line has no \"sdp\"; expected {LINE_SHAPE}")]
    NoSdp,
    /// The `sdp` member is not a string.
    #[error("the description line's \"sdp\" is not a string; expected {LINE_SHAPE}")]
    SdpNotString,
    /// The `sdp` member is empty or blank.
    #[error("the description line's \"sdp\" is empty")]
    EmptySdp,
    /// The SDP or a candidate in it does not parse ([`kadrtc_rtc::check_remote_description`]).
    #[error("the description line's SDP is not valid")]
    InvalidSdp(#[source] RtcError),
    /// An offer was given where an answer belongs, or the reverse.
    #[error(
        "expected an {expected} but this line is an {found} (each side pastes the other \
         side's line: the offer goes to the answering side, the answer back to the offering \
         side)"
    )]
    WrongKind {
        /// The kind this step takes.
        expected: DescriptionKind,
        /// The kind it was given.
        found: DescriptionKind,
    },
    /// [`ManualConnection::accept_answer`] on a connection that made no offer, or that has
    /// its answer already.
    #[error("this connection is not waiting for an answer: it answered an offer, or has its answer already")]
    NotAwaitingAnswer,
    /// The peer connection cannot be built: usually an address in
    /// [`ManualConfig::bind_ips`] that is not this host's.
    #[error("cannot set up the WebRTC connection (check the bind addresses)")]
    Setup(#[source] RtcError),
    /// webrtc-rs refused to create the offer.
    #[error("cannot create the offer")]
    CreateOffer(#[source] RtcError),
    /// webrtc-rs refused the offer (it parses, but cannot be answered: no data channel
    /// section, for example).
    #[error("cannot accept the offer (was it made for a data channel?)")]
    AcceptOffer(#[source] RtcError),
    /// webrtc-rs refused the answer.
    #[error("cannot apply the answer (was it made for this offer?)")]
    ApplyAnswer(#[source] RtcError),
    /// The connection failed before gathering completed; holds webrtc-rs's reason.
    #[error("the WebRTC connection failed while gathering: {0}")]
    GatheringFailed(String),
    /// Gathering found no candidate, so the other side would have no address to reach.
    #[error(
        "no ICE candidate was gathered: the other side would have no address to reach (check \
         the bind addresses)"
    )]
    NoCandidates,
    /// The local description cannot be read after gathering.
    #[error("cannot read the local description")]
    LocalDescription(#[source] RtcError),
    /// [`ManualConnection::send`] before [`ManualEvent::ChannelOpen`].
    #[error("no open channel yet; message not sent")]
    NotOpen,
    /// The channel refused the message: over [`MAX_MESSAGE_SIZE`], or closed.
    #[error("message not sent")]
    Send(#[source] RtcError),
}

impl DescriptionKind {
    /// The `type` value: `"offer"` or `"answer"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::Answer => "answer",
        }
    }
}

impl fmt::Display for DescriptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Description {
    /// The description as one line of JSON with no line break (the SDP's CRLFs escaped),
    /// members in the browser's order: `{"type":"offer","sdp":"v=0\r\n…"}`. A browser reads
    /// it with `JSON.parse` and hands it to `setRemoteDescription` as it is.
    pub fn to_line(&self) -> String {
        format!(
            "{{\"type\":{},\"sdp\":{}}}",
            Value::from(self.kind.as_str()),
            Value::from(self.sdp.as_str())
        )
    }

    /// Reads a description line as [`Description::to_line`] writes it, or as a browser's
    /// `JSON.stringify(pc.localDescription)` does: a JSON object with `type` (`"offer"` or
    /// `"answer"`) and `sdp` members in any order, other members ignored, whitespace around
    /// it (a trailing `\r\n`, say) ignored. The SDP and the candidates in it are checked with
    /// webrtc-rs's own parsers ([`kadrtc_rtc::check_remote_description`]), so a line that
    /// passes is refused later only for what parsing cannot see (a fingerprint or ICE
    /// credentials that do not match, an answer to another offer).
    ///
    /// # Errors
    ///
    /// [`ManualError::NotJson`], [`ManualError::NotObject`], [`ManualError::NoType`],
    /// [`ManualError::UnknownType`], [`ManualError::NoSdp`], [`ManualError::SdpNotString`],
    /// [`ManualError::EmptySdp`] and [`ManualError::InvalidSdp`], checked in that order.
    pub fn parse_line(line: &str) -> Result<Self, ManualError> {
        let value: Value =
            serde_json::from_str(line.trim()).map_err(|error| ManualError::NotJson {
                reason: error.to_string(),
            })?;
        let Value::Object(fields) = value else {
            return Err(ManualError::NotObject);
        };
        let kind = match fields.get("type") {
            Some(Value::String(t)) if t == "offer" => DescriptionKind::Offer,
            Some(Value::String(t)) if t == "answer" => DescriptionKind::Answer,
            Some(other) => {
                return Err(ManualError::UnknownType {
                    found: other.to_string(),
                })
            }
            None => return Err(ManualError::NoType),
        };
        let sdp = match fields.get("sdp") {
            Some(Value::String(sdp)) if !sdp.trim().is_empty() => sdp.clone(),
            Some(Value::String(_)) => return Err(ManualError::EmptySdp),
            Some(_) => return Err(ManualError::SdpNotString),
            None => return Err(ManualError::NoSdp),
        };
        kadrtc_rtc::check_remote_description(&sdp, &[]).map_err(ManualError::InvalidSdp)?;
        Ok(Self { kind, sdp })
    }
}

impl ManualConfig {
    /// Binds 127.0.0.1 only, no server: both sides on this host (tests, demos).
    pub fn loopback() -> Self {
        let rtc = RtcConfig::loopback();
        Self {
            bind_ips: rtc.bind_ips,
            ice_servers: rtc.ice_servers,
            relay_only: rtc.relay_only,
        }
    }
}

impl Default for ManualConfig {
    fn default() -> Self {
        let rtc = RtcConfig::all_interfaces();
        Self {
            bind_ips: rtc.bind_ips,
            ice_servers: rtc.ice_servers,
            relay_only: rtc.relay_only,
        }
    }
}

impl ManualConnection {
    /// The offering side: builds the connection and its data channel (labelled
    /// [`kadrtc_rtc::CHANNEL_LABEL`], reliable and ordered, RFC 8831), creates the offer and
    /// waits for ICE gathering to complete, at most [`GATHERING_TIMEOUT`] (past it, the offer
    /// holds the candidates gathered so far and a warning is logged). Hand the offer's
    /// [`Description::to_line`] to the other side, then give its answer to
    /// [`ManualConnection::accept_answer`].
    ///
    /// # Errors
    ///
    /// [`ManualError::Setup`] when the sockets cannot be bound; [`ManualError::CreateOffer`];
    /// [`ManualError::GatheringFailed`]; [`ManualError::NoCandidates`];
    /// [`ManualError::LocalDescription`].
    pub async fn offer(config: &ManualConfig) -> Result<(Self, Description), ManualError> {
        let mut connection = Self::new(config, DescriptionKind::Offer).await?;
        connection
            .pc
            .create_offer()
            .await
            .map_err(ManualError::CreateOffer)?;
        let sdp = connection.gathered_description().await?;
        Ok((
            connection,
            Description {
                kind: DescriptionKind::Offer,
                sdp,
            },
        ))
    }

    /// The answering side: builds the connection, sets `offer` as the remote description,
    /// creates the answer and waits for gathering as [`ManualConnection::offer`] does. Hand
    /// the answer's [`Description::to_line`] back to the offering side: the channel opens
    /// once it applies it, within [`ANSWER_CARRY_TIMEOUT`]. The offer's first data channel is
    /// taken whatever its label, so a browser's or aiortc's offer works as kadrtc's does.
    ///
    /// # Errors
    ///
    /// [`ManualError::WrongKind`] when `offer` is an answer; [`ManualError::Setup`];
    /// [`ManualError::AcceptOffer`]; [`ManualError::GatheringFailed`];
    /// [`ManualError::NoCandidates`]; [`ManualError::LocalDescription`].
    pub async fn answer(
        config: &ManualConfig,
        offer: &Description,
    ) -> Result<(Self, Description), ManualError> {
        if offer.kind != DescriptionKind::Offer {
            return Err(ManualError::WrongKind {
                expected: DescriptionKind::Offer,
                found: offer.kind,
            });
        }
        let mut connection = Self::new(config, DescriptionKind::Answer).await?;
        connection
            .pc
            .accept_offer(offer.sdp.clone(), &[])
            .await
            .map_err(ManualError::AcceptOffer)?;
        let sdp = connection.gathered_description().await?;
        connection.described(ANSWER_CARRY_TIMEOUT);
        Ok((
            connection,
            Description {
                kind: DescriptionKind::Answer,
                sdp,
            },
        ))
    }

    /// The offering side: sets the other side's `answer` as the remote description. ICE
    /// checks start, and the channel opens within [`OPEN_TIMEOUT`] or
    /// [`ManualConnection::next_event`] reports [`ManualEvent::Failed`].
    ///
    /// # Errors
    ///
    /// [`ManualError::WrongKind`] when `answer` is an offer;
    /// [`ManualError::NotAwaitingAnswer`] on the answering side or once the answer is set;
    /// [`ManualError::ApplyAnswer`] when webrtc-rs refuses it (an answer to another offer).
    pub async fn accept_answer(&mut self, answer: &Description) -> Result<(), ManualError> {
        if answer.kind != DescriptionKind::Answer {
            return Err(ManualError::WrongKind {
                expected: DescriptionKind::Answer,
                found: answer.kind,
            });
        }
        if self.role != DescriptionKind::Offer || self.described_at.is_some() {
            return Err(ManualError::NotAwaitingAnswer);
        }
        self.pc
            .apply_answer(answer.sdp.clone(), &[])
            .await
            .map_err(ManualError::ApplyAnswer)?;
        self.described(OPEN_TIMEOUT);
        Ok(())
    }

    /// The next event, or `None` once [`ManualEvent::Closed`] or [`ManualEvent::Failed`] was
    /// handed out. Read events promptly: the connection holds 64 and waits while they are
    /// unread. Cancel safe: it can be one branch of a `tokio::select!`, nothing is lost.
    pub async fn next_event(&mut self) -> Option<ManualEvent> {
        loop {
            if let Some(elapsed) = self.opening {
                let candidate_pair = self.pc.selected_candidate_pair().await;
                self.opening = None;
                return Some(ManualEvent::ChannelOpen {
                    elapsed,
                    candidate_pair,
                });
            }
            if self.ended {
                return None;
            }
            let event = match self.early.pop_front() {
                Some(event) => event,
                None => {
                    let deadline = self.open_deadline.filter(|_| self.channel.is_none());
                    let open_timeout = async move {
                        match deadline {
                            Some((at, _)) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        event = self.events.recv() => match event {
                            Some(((), event)) => event,
                            None => return Some(self.end_with("the WebRTC connection stopped".into())),
                        },
                        () = open_timeout => {
                            let waited = deadline.map_or(Duration::ZERO, |(_, waited)| waited);
                            return Some(self.end_with(format!(
                                "the data channel did not open within {} s of both \
                                 descriptions being set",
                                waited.as_secs()
                            )));
                        }
                    }
                }
            };
            if let Some(event) = self.translate(event) {
                return Some(event);
            }
        }
    }

    /// Sends one binary message (a `Blob` or `ArrayBuffer` in a browser's `onmessage`, RFC
    /// 8831 §6.6 PPID 53), reliable and ordered; waits while the channel's send buffer is
    /// full (backpressure).
    ///
    /// # Errors
    ///
    /// [`ManualError::NotOpen`] before [`ManualEvent::ChannelOpen`]; [`ManualError::Send`]
    /// over [`MAX_MESSAGE_SIZE`] bytes or once the channel closed.
    pub async fn send(&self, data: &[u8]) -> Result<(), ManualError> {
        let channel = self.channel.as_ref().ok_or(ManualError::NotOpen)?;
        channel.send(data).await.map_err(ManualError::Send)
    }

    /// Sends one text message (a string in a browser's `onmessage`, RFC 8831 §6.6 PPID 51);
    /// as [`ManualConnection::send`] otherwise.
    ///
    /// # Errors
    ///
    /// As [`ManualConnection::send`].
    pub async fn send_text(&self, text: &str) -> Result<(), ManualError> {
        let channel = self.channel.as_ref().ok_or(ManualError::NotOpen)?;
        channel.send_text(text).await.map_err(ManualError::Send)
    }

    /// Closes the channel and the connection once what was sent has arrived (at most
    /// [`CLOSE_FLUSH_TIMEOUT`]); the other side sees [`ManualEvent::Closed`] (or its WebRTC
    /// stack's equivalent).
    pub async fn close(mut self) {
        self.pc.flush(CLOSE_FLUSH_TIMEOUT).await;
        // Only now: dropped during the flush, the connection is still closed by `Drop`.
        self.closed = true;
        self.pc.close().await;
    }

    async fn new(config: &ManualConfig, role: DescriptionKind) -> Result<Self, ManualError> {
        let rtc = RtcConfig {
            bind_ips: config.bind_ips.clone(),
            ice_servers: config.ice_servers.clone(),
            relay_only: config.relay_only,
            // A browser or aiortc names its channel as it likes; kadrtc's offer says "kadrtc".
            any_remote_label: role == DescriptionKind::Answer,
            // ICE on the answering side starts before the offering side has the answer; the
            // offering side starts once it has both, and fails as fast as a room's.
            ice_failed_timeout: match role {
                DescriptionKind::Answer => ANSWER_CARRY_TIMEOUT,
                DescriptionKind::Offer => kadrtc_rtc::ICE_FAILED_TIMEOUT,
            },
            ..RtcConfig::all_interfaces()
        };
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let pc = PeerConnection::new(&rtc, (), events_tx)
            .await
            .map_err(ManualError::Setup)?;
        Ok(Self {
            pc,
            events,
            early: VecDeque::new(),
            role,
            described_at: None,
            open_deadline: None,
            channel: None,
            opening: None,
            ended: false,
            closed: false,
        })
    }

    /// Both descriptions are set: the channel has `open_timeout` to open.
    fn described(&mut self, open_timeout: Duration) {
        self.described_at = Some(Instant::now());
        self.open_deadline = Some((tokio::time::Instant::now() + open_timeout, open_timeout));
    }

    /// Waits until gathering completes (at most [`GATHERING_TIMEOUT`]) and returns the local
    /// description's SDP. webrtc-rs adds every candidate gathered so far to the description
    /// it returns (a candidate line for ICE components 1 and 2 each, the second ignored by
    /// peers that multiplex RTCP), and `a=end-of-candidates` once gathering completed.
    async fn gathered_description(&mut self) -> Result<String, ManualError> {
        let deadline = tokio::time::Instant::now() + GATHERING_TIMEOUT;
        let mut candidates = 0usize;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    tracing::warn!(
                        candidates,
                        "ICE gathering did not complete within {GATHERING_TIMEOUT:?}; \
                         using the candidates gathered so far"
                    );
                    break;
                }
                Ok(None) => {
                    return Err(ManualError::GatheringFailed(
                        "the connection stopped".into(),
                    ))
                }
                Ok(Some(((), event))) => match event {
                    RtcEvent::LocalCandidate(_) => candidates += 1,
                    RtcEvent::GatheringComplete => break,
                    RtcEvent::Failed(reason) => return Err(ManualError::GatheringFailed(reason)),
                    other => self.early.push_back(other),
                },
            }
        }
        if candidates == 0 {
            return Err(ManualError::NoCandidates);
        }
        self.pc
            .local_description()
            .await
            .map_err(ManualError::LocalDescription)
    }

    /// What `event` means to the application, if anything.
    fn translate(&mut self, event: RtcEvent) -> Option<ManualEvent> {
        match event {
            RtcEvent::ChannelOpen(channel) => {
                if self.channel.is_none() {
                    self.channel = Some(channel);
                    // `next_event` reads the candidate pair and hands out the event.
                    self.opening =
                        Some(self.described_at.map_or(Duration::ZERO, |at| at.elapsed()));
                }
                None
            }
            RtcEvent::Message(data) => Some(ManualEvent::Message(data)),
            RtcEvent::ChannelClosed => {
                self.ended = true;
                Some(ManualEvent::Closed)
            }
            RtcEvent::Failed(reason) => {
                let reason = self.failure(&reason);
                Some(self.end_with(reason))
            }
            RtcEvent::LocalCandidate(candidate) => {
                tracing::debug!(%candidate, "candidate gathered after the description was made; not signaled");
                None
            }
            RtcEvent::SideChannelOpen(side) => {
                // Dropping it closes it: copy-paste connections have one channel.
                tracing::debug!(label = side.label(), "side channel from the remote closed");
                None
            }
            RtcEvent::IceConnected => {
                tracing::debug!("ICE connected");
                None
            }
            other => {
                tracing::debug!(?other, "event ignored");
                None
            }
        }
    }

    /// What a failure reported by webrtc-rs means at this point, and what to check.
    fn failure(&self, reason: &str) -> String {
        if self.channel.is_some() {
            return format!("the connection failed after the data channel opened ({reason})");
        }
        if self.described_at.is_none() {
            return format!("the WebRTC connection failed: {reason}");
        }
        let hint = "ICE found no working path between the two sides' candidates (check the \
                    bind addresses on both sides)";
        match self.role {
            DescriptionKind::Offer => {
                format!("the connection failed before the data channel opened ({reason}): {hint}")
            }
            DescriptionKind::Answer => format!(
                "the connection failed before the data channel opened ({reason}): {hint}, or the \
                 offering side did not apply this answer within {} s",
                ANSWER_CARRY_TIMEOUT.as_secs()
            ),
        }
    }

    /// The last event: nothing follows it.
    fn end_with(&mut self, reason: String) -> ManualEvent {
        self.ended = true;
        ManualEvent::Failed(reason)
    }
}

impl Drop for ManualConnection {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let pc = self.pc.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { pc.close().await });
        }
    }
}

impl fmt::Debug for ManualConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualConnection")
            .field("role", &self.role)
            .field("open", &self.channel.is_some())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";

    fn description(kind: DescriptionKind) -> Description {
        Description {
            kind,
            sdp: SDP.into(),
        }
    }

    fn error(line: &str) -> String {
        let error = Description::parse_line(line).unwrap_err();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    #[test]
    fn description_lines_round_trip_with_surrounding_whitespace() {
        let answer = description(DescriptionKind::Answer);
        let line = answer.to_line();
        assert!(
            line.starts_with(r#"{"type":"answer","sdp":"v=0\r\n"#),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line: {line}");
        assert_eq!(
            Description::parse_line(&format!("  {line}\r\n")).unwrap(),
            answer
        );
        let extra = format!(r#"{{"sdp":{},"type":"offer","extra":1}}"#, Value::from(SDP));
        assert_eq!(
            Description::parse_line(&extra).unwrap(),
            description(DescriptionKind::Offer)
        );
    }

    #[test]
    fn bad_description_lines_give_clear_errors() {
        let not_json = error(r#"{"type":"answer","sdp":"v=0"#);
        assert!(not_json.contains("not JSON ("), "{not_json}");
        assert!(not_json.contains("paste the whole line"), "{not_json}");
        assert!(error("[1]").contains("not a JSON object"));
        assert!(error(r#"{"type":"pranswer","sdp":"v=0"}"#).contains("type \"pranswer\""));
        assert!(error(r#"{"type":5,"sdp":"v=0"}"#).contains("type 5"));
        assert!(error(r#"{"sdp":"v=0"}"#).contains("no \"type\""));
        assert!(error(r#"{"type":"answer"}"#).contains("no \"sdp\""));
        assert!(error(r#"{"type":"answer","sdp":" "}"#).contains("is empty"));
        assert!(error(r#"{"type":"answer","sdp":5}"#).contains("not a string"));
        let garbage = error(r#"{"type":"answer","sdp":"not sdp"}"#);
        assert!(
            garbage.contains("SDP is not valid: invalid session description"),
            "{garbage}"
        );
    }

    #[test]
    fn a_description_of_the_wrong_kind_says_where_it_belongs() {
        let error = ManualError::WrongKind {
            expected: DescriptionKind::Answer,
            found: DescriptionKind::Offer,
        }
        .to_string();
        assert!(
            error.starts_with("expected an answer but this line is an offer"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn answering_an_answer_is_refused_before_any_socket_is_bound() {
        let config = ManualConfig {
            // Not this host's: binding it would fail, so reaching it would be a Setup error.
            bind_ips: vec!["192.0.2.1".parse().unwrap()],
            ..ManualConfig::default()
        };
        let error = ManualConnection::answer(&config, &description(DescriptionKind::Answer))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                ManualError::WrongKind {
                    expected: DescriptionKind::Offer,
                    found: DescriptionKind::Answer
                }
            ),
            "{error:?}"
        );
    }
}
