//! kadrtc's sans-IO core: everything about signaling that needs no socket and no clock of its
//! own.
//!
//! - [`RoomName`] → [`RoomId`] (`SHA-256("kadrtc/room/v1" ‖ name)`), and from the room id the
//!   presence key (Kademlia provider records), the gossipsub topic and the mailbox record keys.
//! - [`Envelope`]: the signed unit of signaling, with [`Envelope::sign`] and
//!   [`Envelope::decode`], which checks size, version, signature, times and limits.
//! - [`Negotiation`]: the per-pair state machine (offerer = smaller `PeerId`), driven with
//!   `handle_*` inputs, [`Negotiation::poll_action`] and [`Negotiation::poll_timeout`].
//!
//! ```no_run
//! use std::time::Instant;
//! use kadrtc_proto::{Action, Negotiation, NegotiationConfig, RoomName};
//! use libp2p_identity::PeerId;
//!
//! let room = RoomName::new("lobby").unwrap().id();
//! let (me, them) = (PeerId::random(), PeerId::random());
//! let mut negotiation = Negotiation::new(&me, them, NegotiationConfig::default(), Instant::now());
//! while let Some(action) = negotiation.poll_action() {
//!     match action {
//!         Action::StartOffer { session } => { /* create the offer, then handle_local_description */ }
//!         Action::Publish { .. } => { /* sign, put_record(room.mailbox_key(&me, &them)), publish */ }
//!         _ => {}
//!     }
//! }
//! ```

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod envelope;
mod ids;
mod negotiation;

pub use envelope::{
    unix_time_ms, Body, Envelope, EnvelopeError, Signal, ENVELOPE_VERSION, MAX_CANDIDATES,
    MAX_CANDIDATE_LEN, MAX_CLOCK_SKEW_MS, MAX_ENVELOPE_LIFETIME_MS, MAX_ENVELOPE_SIZE,
    SIGNATURE_DOMAIN,
};
pub use ids::{
    is_offerer, is_presence_key, RoomId, RoomName, RoomNameError, SessionId, MAILBOX_DOMAIN,
    MAILBOX_KEY_PREFIX, MAX_ROOM_NAME_LEN, PRESENCE_DOMAIN, ROOM_ID_DOMAIN,
};
pub use libp2p_identity::{Keypair, PeerId};
pub use negotiation::{
    Action, Disposition, Negotiation, NegotiationConfig, Role, DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_FETCH_INITIAL, DEFAULT_FETCH_MAX, DEFAULT_GATHER_GRACE, DEFAULT_MAX_FAILURES,
    DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX,
};
