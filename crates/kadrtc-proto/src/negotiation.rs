//! The per-pair negotiation state machine: which side offers, what to publish, what to apply,
//! when to poll the remote mailbox and when to retry. Sans-IO: time is passed in.
//!
//! Drive it like quinn-proto or str0m: feed inputs with the `handle_*` methods, then drain
//! [`Negotiation::poll_action`] and arm a timer for [`Negotiation::poll_timeout`], calling
//! [`Negotiation::handle_timeout`] when it fires.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use libp2p_identity::PeerId;

use crate::envelope::{offer_hash, Body, Envelope, Signal, MAX_CANDIDATES};
use crate::ids::{is_offerer, SessionId};

/// How long one attempt may take from its start to an open channel before it is abandoned
/// and retried with a new session id.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// First interval between polls of the remote mailbox (`get_record`) while no channel is open.
pub const DEFAULT_FETCH_INITIAL: Duration = Duration::from_millis(100);
/// Longest interval between polls of the remote mailbox; the interval doubles up to this.
pub const DEFAULT_FETCH_MAX: Duration = Duration::from_secs(3);
/// First delay before the offerer retries a failed attempt; it doubles up to
/// [`DEFAULT_RETRY_MAX`].
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Longest delay between the offerer's retries.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a local description waits for its first candidate before it is published
/// anyway. Publishing the SDP together with a candidate lets the remote put it in the remote
/// description, so ICE has a candidate pair from its first check instead of waiting for its
/// next check round.
pub const DEFAULT_GATHER_GRACE: Duration = Duration::from_millis(50);
/// Failed attempts in a row (on the answerer's side: attempt timeouts spent waiting for an
/// offer too) after which the negotiation gives up on the peer.
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// How many abandoned session ids are remembered, so that their offers, still stored in the
/// mailbox, are not accepted again.
const ABANDONED_SESSIONS: usize = 8;

/// Which side of the pair this node plays. Fixed per pair: the smaller `PeerId` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Creates the peer connection, the data channel and the offer.
    Offerer,
    /// Waits for an offer and answers it.
    Answerer,
}

/// Timers of a [`Negotiation`].
#[derive(Debug, Clone)]
pub struct NegotiationConfig {
    /// See [`DEFAULT_ATTEMPT_TIMEOUT`].
    pub attempt_timeout: Duration,
    /// See [`DEFAULT_FETCH_INITIAL`].
    pub fetch_initial: Duration,
    /// See [`DEFAULT_FETCH_MAX`].
    pub fetch_max: Duration,
    /// See [`DEFAULT_RETRY_INITIAL`].
    pub retry_initial: Duration,
    /// See [`DEFAULT_RETRY_MAX`].
    pub retry_max: Duration,
    /// See [`DEFAULT_MAX_FAILURES`].
    pub max_failures: u32,
    /// See [`DEFAULT_GATHER_GRACE`].
    pub gather_grace: Duration,
}

impl Default for NegotiationConfig {
    fn default() -> Self {
        Self {
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            fetch_initial: DEFAULT_FETCH_INITIAL,
            fetch_max: DEFAULT_FETCH_MAX,
            retry_initial: DEFAULT_RETRY_INITIAL,
            retry_max: DEFAULT_RETRY_MAX,
            max_failures: DEFAULT_MAX_FAILURES,
            gather_grace: DEFAULT_GATHER_GRACE,
        }
    }
}

/// What the driver of a [`Negotiation`] must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Offerer: build a peer connection and data channel for `session`, create the offer, set
    /// it as local description and report it with [`Negotiation::handle_local_description`].
    StartOffer {
        /// The new session.
        session: SessionId,
    },
    /// Answerer: build a peer connection for `session`, set `sdp` with `candidates` as remote
    /// description, create the answer, set it as local description and report it with
    /// [`Negotiation::handle_local_description`].
    AcceptOffer {
        /// The offerer's session.
        session: SessionId,
        /// The offer's SDP.
        sdp: String,
        /// The offer's candidates known so far, to be put in the remote description
        /// (`a=candidate` lines, RFC 8839 §5.1); they count as applied.
        candidates: Vec<String>,
    },
    /// Offerer: set `sdp` with `candidates` as remote description, then call
    /// [`Negotiation::handle_remote_description_applied`].
    ApplyAnswer {
        /// The current session.
        session: SessionId,
        /// The answer's SDP.
        sdp: String,
        /// The answer's candidates known so far, as for [`Action::AcceptOffer`].
        candidates: Vec<String>,
    },
    /// Add these remote candidates to the peer connection of `session` (the remote
    /// description is set by now; earlier candidates were buffered here).
    AddRemoteCandidates {
        /// The current session.
        session: SessionId,
        /// New candidates, in the remote's gathering order.
        candidates: Vec<String>,
    },
    /// Sign and publish this state to the remote's mailbox and the room topic.
    Publish {
        /// The current session.
        session: SessionId,
        /// Sequence number, increasing within the session.
        seq: u64,
        /// [`Body::Offer`] or [`Body::Answer`] with the whole local state.
        body: Body,
    },
    /// Poll the remote's mailbox (`get_record`) and feed what it holds to
    /// [`Negotiation::handle_remote`].
    FetchRemote,
    /// Close the peer connection of `session`; it is abandoned.
    Close {
        /// The abandoned session.
        session: SessionId,
    },
    /// An attempt ended without an open channel; the offerer retries after `retry_in`.
    AttemptFailed {
        /// The abandoned session (`None` when the answerer waited in vain for an offer).
        session: Option<SessionId>,
        /// How many attempts have failed in a row.
        failures: u32,
        /// Delay before the next attempt (the offerer's) or `None` (the answerer waits).
        retry_in: Option<Duration>,
    },
    /// [`NegotiationConfig::max_failures`] attempts in a row failed: forget the peer. The
    /// negotiation does nothing more.
    GiveUp {
        /// Failed attempts in a row.
        failures: u32,
    },
}

/// What [`Negotiation::handle_remote`] did with an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The envelope moved the negotiation on.
    Applied,
    /// Older than what is known (lower `seq`, or an abandoned session): ignored.
    Stale,
    /// Not a body this role expects (an answer sent to the answerer, presence, ...): ignored.
    Ignored,
    /// An answer of the current session whose [`Signal::offer_hash`] is not the hash of the
    /// offer this side made (a replayed or tampered answer): ignored.
    OfferMismatch,
}

/// The negotiation with one remote peer of a room.
#[derive(Debug)]
pub struct Negotiation {
    remote: PeerId,
    role: Role,
    config: NegotiationConfig,
    connected: bool,
    session: Option<SessionId>,
    local_seq: u64,
    local: Signal,
    local_description_set: bool,
    remote_seq: u64,
    remote_created_at: u64,
    remote_candidates: Vec<String>,
    applied_candidates: usize,
    remote_description_applied: bool,
    answer_requested: bool,
    failures: u32,
    given_up: bool,
    publish_at: Option<Instant>,
    abandoned: VecDeque<SessionId>,
    attempt_deadline: Option<Instant>,
    retry_at: Option<Instant>,
    next_fetch: Option<Instant>,
    fetch_interval: Duration,
    actions: VecDeque<Action>,
}

impl Negotiation {
    /// Starts negotiating with `remote`. The offerer asks for its first offer at once; both
    /// sides start polling the remote mailbox.
    pub fn new(local: &PeerId, remote: PeerId, config: NegotiationConfig, now: Instant) -> Self {
        let role = if is_offerer(local, &remote) {
            Role::Offerer
        } else {
            Role::Answerer
        };
        let mut negotiation = Self {
            remote,
            role,
            fetch_interval: config.fetch_initial,
            config,
            connected: false,
            session: None,
            local_seq: 0,
            local: Signal::default(),
            local_description_set: false,
            remote_seq: 0,
            remote_created_at: 0,
            remote_candidates: Vec::new(),
            applied_candidates: 0,
            remote_description_applied: false,
            answer_requested: false,
            failures: 0,
            given_up: false,
            publish_at: None,
            abandoned: VecDeque::new(),
            attempt_deadline: None,
            retry_at: None,
            next_fetch: Some(now),
            actions: VecDeque::new(),
        };
        match role {
            Role::Offerer => negotiation.start_attempt(now),
            // The answerer waits for an offer, but not forever.
            Role::Answerer => {
                negotiation.attempt_deadline = Some(now + negotiation.config.attempt_timeout)
            }
        }
        negotiation
    }

    /// The remote peer.
    pub fn remote(&self) -> PeerId {
        self.remote
    }

    /// This node's role towards the remote peer.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current session, if an attempt is under way or connected.
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// Whether the negotiation gave up on the peer (see [`Action::GiveUp`]).
    pub fn has_given_up(&self) -> bool {
        self.given_up
    }

    /// Whether the channel of the current session is open.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The local description of `session` is set; `sdp` is its SDP. Publishes the local state
    /// as soon as it holds a candidate, or after [`NegotiationConfig::gather_grace`].
    pub fn handle_local_description(&mut self, session: SessionId, sdp: String, now: Instant) {
        if self.session != Some(session) {
            return;
        }
        self.local.sdp = sdp;
        self.local_description_set = true;
        if self.role == Role::Answerer {
            // The answer was created after the offer was applied.
            self.remote_description_applied = true;
            self.flush_candidates();
        }
        if self.local.candidates.is_empty() && !self.local.end_of_candidates {
            self.publish_at = Some(now + self.config.gather_grace);
        } else {
            self.publish();
        }
    }

    /// A local candidate of `session` was gathered (`candidate:...` form). Republishes the
    /// whole local state with a higher `seq`. Candidates past [`MAX_CANDIDATES`] are dropped.
    pub fn handle_local_candidate(&mut self, session: SessionId, candidate: String) {
        if self.session != Some(session) || self.local.candidates.len() >= MAX_CANDIDATES {
            return;
        }
        self.local.candidates.push(candidate);
        if self.local_description_set {
            self.publish();
        }
    }

    /// Local gathering of `session` has finished.
    pub fn handle_end_of_candidates(&mut self, session: SessionId) {
        if self.session != Some(session) || self.local.end_of_candidates {
            return;
        }
        self.local.end_of_candidates = true;
        if self.local_description_set {
            self.publish();
        }
    }

    /// The offerer has set the answer as remote description of `session`; buffered remote
    /// candidates are released.
    pub fn handle_remote_description_applied(&mut self, session: SessionId) {
        if self.session != Some(session) {
            return;
        }
        self.remote_description_applied = true;
        self.flush_candidates();
    }

    /// An envelope from the remote peer (already decoded, verified and checked to be from
    /// [`Negotiation::remote`], for this room and for us).
    pub fn handle_remote(&mut self, envelope: &Envelope, now: Instant) -> Disposition {
        if self.given_up {
            return Disposition::Ignored;
        }
        match (&envelope.body, self.role) {
            (Body::Offer(signal), Role::Answerer) => self.handle_offer(envelope, signal, now),
            (Body::Answer(signal), Role::Offerer) => self.handle_answer(envelope, signal),
            _ => Disposition::Ignored,
        }
    }

    /// The channel of `session` is open: stop polling and timing the attempt.
    pub fn handle_connected(&mut self, session: SessionId) {
        if self.session != Some(session) {
            return;
        }
        self.connected = true;
        self.failures = 0;
        self.attempt_deadline = None;
        self.next_fetch = None;
    }

    /// The peer connection or channel of `session` failed or closed. The offerer retries with
    /// a new session after a backoff; the answerer polls for the next offer.
    pub fn handle_failed(&mut self, session: SessionId, now: Instant) {
        if self.session != Some(session) {
            return;
        }
        self.abandon(now);
    }

    /// The earliest time at which [`Negotiation::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.publish_at,
            self.attempt_deadline,
            self.retry_at,
            self.next_fetch,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.publish_at.is_some_and(|t| t <= now) {
            self.publish();
        }
        if self.attempt_deadline.is_some_and(|t| t <= now) {
            self.attempt_deadline = None;
            self.abandon(now);
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.start_attempt(now);
        }
        if self.next_fetch.is_some_and(|t| t <= now) {
            self.actions.push_back(Action::FetchRemote);
            self.fetch_interval = (self.fetch_interval * 2).min(self.config.fetch_max);
            self.next_fetch = Some(now + self.fetch_interval);
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn handle_offer(&mut self, envelope: &Envelope, signal: &Signal, now: Instant) -> Disposition {
        if self.session == Some(envelope.session) {
            if envelope.seq <= self.remote_seq {
                return Disposition::Stale;
            }
            self.remote_seq = envelope.seq;
            self.remote_candidates.clone_from(&signal.candidates);
            self.flush_candidates();
            return Disposition::Applied;
        }
        if envelope.created_at < self.remote_created_at
            || self.abandoned.contains(&envelope.session)
        {
            return Disposition::Stale;
        }
        if let Some(old) = self.session {
            self.actions.push_back(Action::Close { session: old });
        }
        self.reset_session(envelope.session, now);
        self.remote_seq = envelope.seq;
        self.remote_created_at = envelope.created_at;
        self.remote_candidates.clone_from(&signal.candidates);
        self.applied_candidates = self.remote_candidates.len();
        self.local.offer_hash = Some(offer_hash(&signal.sdp));
        self.actions.push_back(Action::AcceptOffer {
            session: envelope.session,
            sdp: signal.sdp.clone(),
            candidates: signal.candidates.clone(),
        });
        Disposition::Applied
    }

    fn handle_answer(&mut self, envelope: &Envelope, signal: &Signal) -> Disposition {
        let Some(session) = self.session else {
            return Disposition::Stale;
        };
        if envelope.session != session || envelope.seq <= self.remote_seq {
            return Disposition::Stale;
        }
        if !self.local_description_set || signal.offer_hash != Some(offer_hash(&self.local.sdp)) {
            return Disposition::OfferMismatch;
        }
        self.remote_seq = envelope.seq;
        self.remote_candidates.clone_from(&signal.candidates);
        if !self.answer_requested {
            self.answer_requested = true;
            self.applied_candidates = self.remote_candidates.len();
            self.actions.push_back(Action::ApplyAnswer {
                session,
                sdp: signal.sdp.clone(),
                candidates: signal.candidates.clone(),
            });
        }
        self.flush_candidates();
        Disposition::Applied
    }

    fn start_attempt(&mut self, now: Instant) {
        let session = SessionId::random();
        self.reset_session(session, now);
        self.actions.push_back(Action::StartOffer { session });
    }

    fn reset_session(&mut self, session: SessionId, now: Instant) {
        self.session = Some(session);
        self.connected = false;
        self.local_seq = 0;
        self.local = Signal::default();
        self.local_description_set = false;
        self.remote_seq = 0;
        self.remote_candidates.clear();
        self.applied_candidates = 0;
        self.remote_description_applied = false;
        self.answer_requested = false;
        self.publish_at = None;
        self.attempt_deadline = Some(now + self.config.attempt_timeout);
        self.fetch_interval = self.config.fetch_initial;
        self.next_fetch = Some(now + self.fetch_interval);
    }

    fn abandon(&mut self, now: Instant) {
        let session = self.session.take();
        // A channel that was open and closed is not a failed attempt: reconnect promptly.
        let was_connected = std::mem::take(&mut self.connected);
        self.attempt_deadline = None;
        self.publish_at = None;
        if let Some(session) = session {
            self.actions.push_back(Action::Close { session });
            if self.abandoned.len() == ABANDONED_SESSIONS {
                self.abandoned.pop_front();
            }
            self.abandoned.push_back(session);
        }
        self.failures = if was_connected {
            0
        } else {
            self.failures.saturating_add(1)
        };
        if self.failures >= self.config.max_failures {
            self.given_up = true;
            self.retry_at = None;
            self.next_fetch = None;
            self.actions.push_back(Action::GiveUp {
                failures: self.failures,
            });
            return;
        }
        let retry_in = match self.role {
            Role::Offerer => {
                // After a closed channel (failures == 0) the first delay applies too.
                let exponent = self.failures.saturating_sub(1).min(16);
                let delay =
                    (self.config.retry_initial * 2u32.pow(exponent)).min(self.config.retry_max);
                self.retry_at = Some(now + delay);
                Some(delay)
            }
            Role::Answerer => {
                self.attempt_deadline = Some(now + self.config.attempt_timeout);
                None
            }
        };
        self.fetch_interval = self.config.fetch_initial;
        self.next_fetch = Some(now + self.fetch_interval);
        if !was_connected {
            self.actions.push_back(Action::AttemptFailed {
                session,
                failures: self.failures,
                retry_in,
            });
        }
    }

    fn publish(&mut self) {
        self.publish_at = None;
        let Some(session) = self.session else {
            return;
        };
        self.local_seq += 1;
        let body = match self.role {
            Role::Offerer => Body::Offer(self.local.clone()),
            Role::Answerer => Body::Answer(self.local.clone()),
        };
        self.actions.push_back(Action::Publish {
            session,
            seq: self.local_seq,
            body,
        });
    }

    fn flush_candidates(&mut self) {
        let Some(session) = self.session else {
            return;
        };
        if !self.remote_description_applied
            || self.remote_candidates.len() <= self.applied_candidates
        {
            return;
        }
        let candidates = self.remote_candidates[self.applied_candidates..].to_vec();
        self.applied_candidates = self.remote_candidates.len();
        self.actions.push_back(Action::AddRemoteCandidates {
            session,
            candidates,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ENVELOPE_VERSION;
    use crate::ids::RoomName;

    /// Two peer ids ordered so that the first offers.
    fn ordered_pair() -> (PeerId, PeerId) {
        let (a, b) = (PeerId::random(), PeerId::random());
        if is_offerer(&a, &b) {
            (a, b)
        } else {
            (b, a)
        }
    }

    /// The offerer `a`'s negotiation with `b` once its offer SDP ("offer") is set, with its
    /// actions so far drained, and the session of that offer.
    fn offering(a: PeerId, b: PeerId, now: Instant) -> (Negotiation, SessionId) {
        let mut offerer = Negotiation::new(&a, b, NegotiationConfig::default(), now);
        let Some(Action::StartOffer { session }) = offerer.poll_action() else {
            panic!("offerer must start");
        };
        offerer.handle_local_description(session, "offer".into(), now);
        drain(&mut offerer);
        (offerer, session)
    }

    fn drain(n: &mut Negotiation) -> Vec<Action> {
        std::iter::from_fn(|| n.poll_action()).collect()
    }

    /// An envelope of room "lobby" from `from` to `to`, valid for a minute after `created_at`.
    fn envelope(
        (from, to): (PeerId, PeerId),
        session: SessionId,
        seq: u64,
        created_at: u64,
        body: Body,
    ) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            room_id: RoomName::new("lobby").unwrap().id(),
            from,
            to: Some(to),
            session,
            seq,
            created_at,
            expires_at: created_at + 60_000,
            body,
        }
    }

    fn envelope_from(from: PeerId, to: PeerId, action: &Action, created_at: u64) -> Envelope {
        let Action::Publish { session, seq, body } = action else {
            panic!("not a publish: {action:?}");
        };
        envelope((from, to), *session, *seq, created_at, body.clone())
    }

    fn last_publish(actions: &[Action]) -> &Action {
        actions
            .iter()
            .rev()
            .find(|a| matches!(a, Action::Publish { .. }))
            .expect("a publish")
    }

    #[test]
    fn smaller_peer_id_offers_and_the_other_waits() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let mut offerer = Negotiation::new(&a, b, NegotiationConfig::default(), now);
        let mut answerer = Negotiation::new(&b, a, NegotiationConfig::default(), now);
        assert_eq!(offerer.role(), Role::Offerer);
        assert_eq!(answerer.role(), Role::Answerer);
        assert!(matches!(
            drain(&mut offerer).as_slice(),
            [Action::StartOffer { .. }]
        ));
        assert!(drain(&mut answerer).is_empty());
    }

    #[test]
    fn full_exchange_reaches_both_sides_and_every_candidate_is_applied_once() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let mut offerer = Negotiation::new(&a, b, NegotiationConfig::default(), now);
        let mut answerer = Negotiation::new(&b, a, NegotiationConfig::default(), now);
        let Some(Action::StartOffer { session }) = offerer.poll_action() else {
            panic!("offerer must start");
        };
        offerer.handle_local_description(session, "offer-sdp".into(), now);
        assert!(
            drain(&mut offerer).is_empty(),
            "the offer waits for its first candidate"
        );
        offerer.handle_local_candidate(session, "c1".into());
        let published = drain(&mut offerer);
        assert_eq!(published.len(), 1, "{published:?}");
        let offer = envelope_from(a, b, last_publish(&published), 1);
        assert_eq!(answerer.handle_remote(&offer, now), Disposition::Applied);
        assert_eq!(
            drain(&mut answerer),
            vec![Action::AcceptOffer {
                session,
                sdp: "offer-sdp".into(),
                candidates: vec!["c1".into()],
            }]
        );
        answerer.handle_local_description(session, "answer-sdp".into(), now);
        answerer.handle_local_candidate(session, "c2".into());
        let actions = drain(&mut answerer);
        assert_eq!(actions.len(), 1, "c1 came with the offer: {actions:?}");
        let answer = envelope_from(b, a, last_publish(&actions), 2);
        assert_eq!(offerer.handle_remote(&answer, now), Disposition::Applied);
        assert_eq!(
            drain(&mut offerer),
            vec![Action::ApplyAnswer {
                session,
                sdp: "answer-sdp".into(),
                candidates: vec!["c2".into()],
            }]
        );
        offerer.handle_remote_description_applied(session);
        assert!(drain(&mut offerer).is_empty(), "c2 came with the answer");

        // A later candidate is republished and applied once.
        offerer.handle_local_candidate(session, "c3".into());
        let published = drain(&mut offerer);
        let mut update = envelope_from(a, b, last_publish(&published), 3);
        assert_eq!(answerer.handle_remote(&update, now), Disposition::Applied);
        assert_eq!(
            drain(&mut answerer),
            vec![Action::AddRemoteCandidates {
                session,
                candidates: vec!["c3".into()]
            }]
        );
        update.created_at = 4;
        assert_eq!(answerer.handle_remote(&update, now), Disposition::Stale);

        offerer.handle_connected(session);
        answerer.handle_connected(session);
        assert!(offerer.is_connected() && answerer.is_connected());
        assert_eq!(offerer.poll_timeout(), None);
        assert_eq!(answerer.poll_timeout(), None);
    }

    #[test]
    fn description_without_candidates_is_published_after_the_gather_grace() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let config = NegotiationConfig::default();
        let mut offerer = Negotiation::new(&a, b, config.clone(), now);
        let Some(Action::StartOffer { session }) = offerer.poll_action() else {
            panic!("offerer must start");
        };
        offerer.handle_local_description(session, "offer".into(), now);
        assert!(drain(&mut offerer).is_empty());
        assert_eq!(offerer.poll_timeout(), Some(now + config.gather_grace));
        offerer.handle_timeout(now + config.gather_grace);
        assert!(matches!(
            drain(&mut offerer).as_slice(),
            [Action::Publish { seq: 1, .. }]
        ));
    }

    #[test]
    fn candidates_before_the_remote_description_are_buffered_not_dropped() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let (mut offerer, session) = offering(a, b, now);
        // The answer arrives in two envelopes with growing candidate lists before the offerer
        // has applied the answer.
        let mut answer = envelope(
            (b, a),
            session,
            1,
            1,
            Body::Answer(Signal {
                sdp: "answer".into(),
                candidates: vec!["c1".into()],
                end_of_candidates: false,
                offer_hash: Some(offer_hash("offer")),
            }),
        );
        offerer.handle_remote(&answer, now);
        answer.seq = 2;
        answer.body = Body::Answer(Signal {
            sdp: "answer".into(),
            candidates: vec!["c1".into(), "c2".into()],
            end_of_candidates: true,
            offer_hash: Some(offer_hash("offer")),
        });
        offerer.handle_remote(&answer, now);
        let actions = drain(&mut offerer);
        assert_eq!(
            actions,
            vec![Action::ApplyAnswer {
                session,
                sdp: "answer".into(),
                candidates: vec!["c1".into()],
            }],
            "only the answer with the candidates it came with, c2 waits"
        );
        offerer.handle_remote_description_applied(session);
        assert_eq!(
            drain(&mut offerer),
            vec![Action::AddRemoteCandidates {
                session,
                candidates: vec!["c2".into()]
            }]
        );
    }

    #[test]
    fn stale_seq_and_other_sessions_are_ignored() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let (mut offerer, session) = offering(a, b, now);
        let mut answer = envelope(
            (b, a),
            session,
            5,
            1,
            Body::Answer(Signal {
                offer_hash: Some(offer_hash("offer")),
                ..Signal::default()
            }),
        );
        assert_eq!(offerer.handle_remote(&answer, now), Disposition::Applied);
        assert_eq!(offerer.handle_remote(&answer, now), Disposition::Stale);
        answer.seq = 4;
        assert_eq!(offerer.handle_remote(&answer, now), Disposition::Stale);
        answer.seq = 9;
        answer.session = SessionId::from_bytes([1; 16]);
        assert_eq!(offerer.handle_remote(&answer, now), Disposition::Stale);
    }

    #[test]
    fn answer_to_another_offer_is_refused() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let (mut offerer, session) = offering(a, b, now);
        for offer_hash in [None, Some(offer_hash("an earlier offer"))] {
            let answer = envelope(
                (b, a),
                session,
                1,
                1,
                Body::Answer(Signal {
                    sdp: "answer".into(),
                    offer_hash,
                    ..Signal::default()
                }),
            );
            assert_eq!(
                offerer.handle_remote(&answer, now),
                Disposition::OfferMismatch
            );
        }
        assert!(drain(&mut offerer).is_empty(), "nothing was applied");
    }

    #[test]
    fn answer_echoes_the_hash_of_the_offer_it_answers() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let mut answerer = Negotiation::new(&b, a, NegotiationConfig::default(), now);
        let session = SessionId::from_bytes([3; 16]);
        let offer = envelope(
            (a, b),
            session,
            1,
            1,
            Body::Offer(Signal {
                sdp: "the offer".into(),
                ..Signal::default()
            }),
        );
        answerer.handle_remote(&offer, now);
        answerer.handle_local_description(session, "answer".into(), now);
        answerer.handle_end_of_candidates(session);
        let actions = drain(&mut answerer);
        let Action::Publish {
            body: Body::Answer(signal),
            ..
        } = last_publish(&actions)
        else {
            panic!("an answer is published: {actions:?}");
        };
        assert_eq!(signal.offer_hash, Some(offer_hash("the offer")));
    }

    #[test]
    fn answerer_ignores_an_older_offer_after_a_newer_one() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let mut answerer = Negotiation::new(&b, a, NegotiationConfig::default(), now);
        let offer = |session: u8, created_at: u64| {
            envelope(
                (a, b),
                SessionId::from_bytes([session; 16]),
                1,
                created_at,
                Body::Offer(Signal::default()),
            )
        };
        assert_eq!(
            answerer.handle_remote(&offer(2, 200), now),
            Disposition::Applied
        );
        assert_eq!(
            answerer.handle_remote(&offer(1, 100), now),
            Disposition::Stale
        );
        assert_eq!(answerer.session(), Some(SessionId::from_bytes([2; 16])));
    }

    #[test]
    fn timed_out_attempt_is_closed_and_retried_with_a_new_session_after_backoff() {
        let (a, b) = ordered_pair();
        let start = Instant::now();
        let config = NegotiationConfig::default();
        let mut offerer = Negotiation::new(&a, b, config.clone(), start);
        let Some(Action::StartOffer { session: first }) = offerer.poll_action() else {
            panic!("offerer must start");
        };
        let deadline = start + config.attempt_timeout;
        offerer.handle_timeout(deadline);
        let actions = drain(&mut offerer);
        assert!(actions.contains(&Action::Close { session: first }));
        assert!(actions.contains(&Action::AttemptFailed {
            session: Some(first),
            failures: 1,
            retry_in: Some(config.retry_initial)
        }));
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::StartOffer { .. })));
        offerer.handle_timeout(deadline + config.retry_initial);
        let Some(Action::StartOffer { session: second }) = drain(&mut offerer)
            .into_iter()
            .find(|a| matches!(a, Action::StartOffer { .. }))
        else {
            panic!("offerer must retry");
        };
        assert_ne!(first, second);
    }

    #[test]
    fn retry_backoff_doubles_and_is_capped() {
        let (a, b) = ordered_pair();
        let mut now = Instant::now();
        let config = NegotiationConfig {
            max_failures: u32::MAX,
            ..NegotiationConfig::default()
        };
        let mut offerer = Negotiation::new(&a, b, config.clone(), now);
        let mut delays = Vec::new();
        for _ in 0..10 {
            let session = offerer.session().expect("an attempt is running");
            offerer.handle_failed(session, now);
            let delay = drain(&mut offerer)
                .into_iter()
                .find_map(|a| match a {
                    Action::AttemptFailed { retry_in, .. } => retry_in,
                    _ => None,
                })
                .expect("a retry delay");
            delays.push(delay);
            now += delay;
            offerer.handle_timeout(now);
        }
        assert_eq!(delays[0], config.retry_initial);
        assert_eq!(delays[1], config.retry_initial * 2);
        assert_eq!(*delays.last().unwrap(), config.retry_max);
    }

    #[test]
    fn answerer_does_not_accept_again_the_offer_of_a_session_it_abandoned() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let config = NegotiationConfig::default();
        let mut answerer = Negotiation::new(&b, a, config.clone(), now);
        let offer = envelope(
            (a, b),
            SessionId::from_bytes([4; 16]),
            1,
            10,
            Body::Offer(Signal::default()),
        );
        assert_eq!(answerer.handle_remote(&offer, now), Disposition::Applied);
        answerer.handle_timeout(now + config.attempt_timeout);
        assert!(drain(&mut answerer).contains(&Action::Close {
            session: offer.session
        }));
        // The same offer, read again from the mailbox, is stale now.
        assert_eq!(answerer.handle_remote(&offer, now), Disposition::Stale);
        assert_eq!(answerer.session(), None);
    }

    #[test]
    fn offerer_gives_up_after_max_failures_and_then_does_nothing() {
        let (a, b) = ordered_pair();
        let mut now = Instant::now();
        let config = NegotiationConfig::default();
        let mut offerer = Negotiation::new(&a, b, config.clone(), now);
        let mut gave_up = None;
        for _ in 0..1000 {
            let Some(next) = offerer.poll_timeout() else {
                break;
            };
            now = next;
            offerer.handle_timeout(now);
            for action in drain(&mut offerer) {
                if let Action::GiveUp { failures } = action {
                    gave_up = Some(failures);
                }
            }
        }
        assert_eq!(gave_up, Some(config.max_failures));
        assert!(offerer.has_given_up());
        assert_eq!(offerer.poll_timeout(), None);
    }

    #[test]
    fn answerer_that_never_receives_an_offer_gives_up() {
        let (a, b) = ordered_pair();
        let start = Instant::now();
        let config = NegotiationConfig::default();
        let mut answerer = Negotiation::new(&b, a, config.clone(), start);
        let mut now = start;
        let mut failures = Vec::new();
        while let Some(next) = answerer.poll_timeout() {
            now = next;
            answerer.handle_timeout(now);
            for action in drain(&mut answerer) {
                match action {
                    Action::AttemptFailed { session, .. } => failures.push(session),
                    Action::GiveUp { .. } => failures.push(None),
                    _ => {}
                }
            }
        }
        assert_eq!(failures.len(), config.max_failures as usize);
        assert!(answerer.has_given_up());
        assert_eq!(now - start, config.attempt_timeout * config.max_failures);
    }

    #[test]
    fn closed_channel_is_reopened_without_reporting_a_failed_attempt() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let config = NegotiationConfig::default();
        let mut offerer = Negotiation::new(&a, b, config.clone(), now);
        let session = offerer.session().expect("an attempt is running");
        drain(&mut offerer);
        offerer.handle_connected(session);
        offerer.handle_failed(session, now);
        let actions = drain(&mut offerer);
        assert_eq!(actions, vec![Action::Close { session }]);
        offerer.handle_timeout(now + config.retry_initial);
        assert!(drain(&mut offerer)
            .iter()
            .any(|a| matches!(a, Action::StartOffer { .. })));
    }

    #[test]
    fn mailbox_polling_backs_off_and_stops_once_connected() {
        let (a, b) = ordered_pair();
        let start = Instant::now();
        let config = NegotiationConfig::default();
        let mut answerer = Negotiation::new(&b, a, config.clone(), start);
        let mut fetch_times = Vec::new();
        let mut now = start;
        while now < start + Duration::from_secs(10) {
            now = answerer.poll_timeout().expect("polling while unconnected");
            answerer.handle_timeout(now);
            if drain(&mut answerer).contains(&Action::FetchRemote) {
                fetch_times.push(now - start);
            }
        }
        assert_eq!(fetch_times[0], Duration::ZERO);
        assert_eq!(fetch_times[1], config.fetch_initial * 2);
        let gaps: Vec<_> = fetch_times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]));
        assert!(gaps.iter().all(|g| *g <= config.fetch_max));

        let offer = envelope(
            (a, b),
            SessionId::from_bytes([3; 16]),
            1,
            1,
            Body::Offer(Signal::default()),
        );
        answerer.handle_remote(&offer, now);
        answerer.handle_connected(offer.session);
        assert_eq!(answerer.poll_timeout(), None);
    }

    #[test]
    fn candidates_past_the_limit_are_dropped() {
        let (a, b) = ordered_pair();
        let now = Instant::now();
        let mut offerer = Negotiation::new(&a, b, NegotiationConfig::default(), now);
        let Some(Action::StartOffer { session }) = offerer.poll_action() else {
            panic!("offerer must start");
        };
        for i in 0..MAX_CANDIDATES + 5 {
            offerer.handle_local_candidate(session, format!("c{i}"));
        }
        offerer.handle_local_description(session, "sdp".into(), now);
        let Some(Action::Publish {
            body: Body::Offer(signal),
            ..
        }) = offerer.poll_action()
        else {
            panic!("a publish");
        };
        assert_eq!(signal.candidates.len(), MAX_CANDIDATES);
    }
}
