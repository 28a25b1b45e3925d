//! kadrtc's sans-IO core: everything about signaling that needs no socket and no clock of its
//! own.
//!
//! - [`RoomName`] → [`RoomId`] (`SHA-256("kadrtc/room/v1" ‖ name)`), and from the room id the
//!   presence key (Kademlia provider records), the gossipsub topic and the mailbox record keys.
//! - [`RoomKey`]: the key that seals envelope bodies, from the room name (HKDF) or the room name
//!   and a passphrase (argon2id, RFC 9106).
//! - [`Envelope`]: the signed unit of signaling, with [`Envelope::sign`] (seal, then sign),
//!   [`Envelope::decode`] (size, version, signature, times: what every node checks) and
//!   [`Envelope::open`] (the room member's side: unseal and check limits).
//! - [`ChannelBinding`]: the proof each side sends first over an open data channel, binding the
//!   DTLS fingerprints and the session to its libp2p key.
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

mod binding;
mod envelope;
mod ids;
mod keys;
mod negotiation;

pub use binding::{BindingError, ChannelBinding, Fingerprint, BINDING_DOMAIN, MAX_BINDING_SIZE};
pub use envelope::{
    offer_hash, unix_time_ms, Body, Envelope, EnvelopeError, Sealed, Signal, ENVELOPE_VERSION,
    MAX_CANDIDATES, MAX_CANDIDATE_LEN, MAX_CLOCK_SKEW_MS, MAX_ENVELOPE_LIFETIME_MS,
    MAX_ENVELOPE_SIZE, SEAL_NONCE_LEN, SIGNATURE_DOMAIN,
};
pub use ids::{
    is_offerer, is_presence_key, RoomId, RoomName, RoomNameError, SessionId, MAILBOX_DOMAIN,
    MAILBOX_KEY_PREFIX, MAX_ROOM_NAME_LEN, PRESENCE_DOMAIN, ROOM_ID_DOMAIN,
};
pub use keys::{
    KeyError, RoomKey, ARGON2_ITERATIONS, ARGON2_LANES, ARGON2_MEMORY_KIB, MAX_PASSPHRASE_LEN,
    PASSPHRASE_SALT_DOMAIN, ROOM_KEY_SALT, SEAL_KEY_INFO,
};
pub use libp2p_identity::{Keypair, PeerId};
pub use negotiation::{
    Action, Disposition, Negotiation, NegotiationConfig, Role, DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_FETCH_INITIAL, DEFAULT_FETCH_MAX, DEFAULT_GATHER_GRACE, DEFAULT_MAX_FAILURES,
    DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX,
};
