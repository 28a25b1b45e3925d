//! The envelope: the signed unit stored in a mailbox record and published on a room topic.
//!
//! Wire form (bincode 2, `config::standard()`, through serde):
//! `SignedEnvelope { payload, public_key, signature }`, where `payload` is the encoded
//! [`Envelope`], `public_key` the signer's libp2p public key in protobuf form, and `signature`
//! the signer's ed25519 signature over [`SIGNATURE_DOMAIN`] ‖ `payload`.
//!
//! The body (SDP and candidates, which hold the peers' IP addresses) is sealed with
//! XChaCha20-Poly1305 (RFC 8439 with the extended nonce of draft-irtf-cfrg-xchacha) under the
//! [`RoomKey`], with the encoded header as associated data: a node that stores or forwards an
//! envelope sees the room id, sender, recipient, session, times and the sealed body's size,
//! and nothing else. [`Envelope::decode`] gives an [`Envelope<Sealed>`] (what storing nodes
//! check); [`Envelope::open`] turns it into an [`Envelope<Body>`] for room members.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use libp2p_identity::{Keypair, PeerId, PublicKey, SigningError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::ids::{RoomId, SessionId};
use crate::keys::RoomKey;

/// Version of the envelope format this crate writes and accepts. 2: sealed bodies (issue 3);
/// 1 carried the body in the clear.
pub const ENVELOPE_VERSION: u8 = 2;

/// Domain tag signed in front of every envelope payload (DESIGN.md, "Envelope").
pub const SIGNATURE_DOMAIN: &[u8] = b"kadrtc/envelope/v1";

/// Largest encoded signed envelope accepted, in bytes. Kademlia packets are capped at 16 KiB;
/// a data-channel offer with a dozen candidates is about 1.5 KiB.
pub const MAX_ENVELOPE_SIZE: usize = 8 * 1024;

/// Most candidates one [`Signal`] may carry. RFC 8445 §5.1.3 suggests keeping the candidate
/// set small; a host with several interfaces, STUN and TURN stays well under this.
pub const MAX_CANDIDATES: usize = 32;

/// Longest candidate string accepted, in bytes (an `a=candidate` line is about 100 bytes).
pub const MAX_CANDIDATE_LEN: usize = 512;

/// Longest lifetime an envelope may claim, in milliseconds (`expires_at - created_at`).
pub const MAX_ENVELOPE_LIFETIME_MS: u64 = 10 * 60 * 1000;

/// How far in the future `created_at` may lie, in milliseconds, to tolerate clock skew.
pub const MAX_CLOCK_SKEW_MS: u64 = 60 * 1000;

/// The clock envelope times are read on: milliseconds since the Unix epoch, from the system
/// clock (0 if it is before 1970). The only clock access in this crate, for callers; nothing
/// here calls it, so the checks stay testable with any `now`.
pub fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Bytes of the XChaCha20-Poly1305 nonce in front of a sealed body.
pub const SEAL_NONCE_LEN: usize = 24;

/// The signaling unit: who sends what to whom, in which room and session.
///
/// `B` is the body: [`Body`] once opened (the default), [`Sealed`] as decoded by a node that
/// does not hold the room key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<B = Body> {
    /// Format version, [`ENVELOPE_VERSION`].
    pub version: u8,
    /// The room this envelope belongs to.
    pub room_id: RoomId,
    /// The signer.
    pub from: PeerId,
    /// The recipient; `None` for announcements to the whole room.
    pub to: Option<PeerId>,
    /// The negotiation attempt this envelope belongs to (all zeros for announcements).
    pub session: SessionId,
    /// Sequence number within the session; a higher `seq` replaces a lower one.
    pub seq: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: u64,
    /// Expiry time, milliseconds since the Unix epoch.
    pub expires_at: u64,
    /// What the envelope says, sealed or opened.
    pub body: B,
}

/// A sealed body: a 24-byte nonce followed by the XChaCha20-Poly1305 ciphertext and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

/// What an envelope says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Body {
    /// "I am in this room" (published on the room topic).
    Presence,
    /// The offerer's signaling state for one session.
    Offer(Signal),
    /// The answerer's signaling state for one session.
    Answer(Signal),
    /// "I am leaving this room."
    Leave,
}

/// One side's whole signaling state: its session description and every candidate gathered so
/// far, so that a reader who sees only the latest envelope has everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// The SDP (RFC 8866) of the offer or answer.
    pub sdp: String,
    /// ICE candidates in their `candidate:...` attribute form (RFC 8839 §5.1), in gathering
    /// order.
    pub candidates: Vec<String>,
    /// Whether gathering has finished (RFC 8838 §4.1, end-of-candidates).
    pub end_of_candidates: bool,
    /// In an answer: [`offer_hash`] of the offer SDP it answers, so that an answer cannot be
    /// replayed against another offer. `None` in offers.
    pub offer_hash: Option<[u8; 32]>,
}

/// Why bytes are not a valid envelope, or an envelope is not for us.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The encoded envelope is larger than [`MAX_ENVELOPE_SIZE`].
    #[error("envelope is {size} bytes; at most {MAX_ENVELOPE_SIZE} are accepted")]
    TooLarge {
        /// Size of the rejected bytes.
        size: usize,
    },
    /// The bytes are not a bincode-encoded envelope.
    #[error("malformed envelope")]
    Malformed(#[source] bincode::error::DecodeError),
    /// The envelope could not be encoded.
    #[error("envelope could not be encoded")]
    Encode(#[source] bincode::error::EncodeError),
    /// The envelope has a version this build does not speak.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// A peer id field is not a valid multihash peer id.
    #[error("envelope names an invalid peer id")]
    InvalidPeerId,
    /// The public key is not a valid libp2p public key.
    #[error("envelope carries an invalid public key")]
    InvalidPublicKey,
    /// The public key does not belong to the peer in `from`.
    #[error("envelope public key does not belong to the sender {from}")]
    SignerMismatch {
        /// The claimed sender.
        from: PeerId,
    },
    /// The signature does not verify.
    #[error("envelope signature from {from} does not verify")]
    BadSignature {
        /// The claimed sender.
        from: PeerId,
    },
    /// The envelope is expired.
    #[error("envelope expired at {expires_at} ms; now is {now} ms")]
    Expired {
        /// Expiry, ms since the Unix epoch.
        expires_at: u64,
        /// The time of the check, ms since the Unix epoch.
        now: u64,
    },
    /// The envelope's times are inconsistent or too far in the future.
    #[error("envelope times are invalid (created {created_at} ms, expires {expires_at} ms, now {now} ms)")]
    InvalidTimes {
        /// Creation, ms since the Unix epoch.
        created_at: u64,
        /// Expiry, ms since the Unix epoch.
        expires_at: u64,
        /// The time of the check, ms since the Unix epoch.
        now: u64,
    },
    /// A signal carries more than [`MAX_CANDIDATES`] candidates or one longer than
    /// [`MAX_CANDIDATE_LEN`].
    #[error("envelope carries too many or too long candidates")]
    TooManyCandidates,
    /// The envelope belongs to another room.
    #[error("envelope is for another room")]
    WrongRoom,
    /// The envelope is addressed to another peer.
    #[error("envelope is addressed to another peer")]
    WrongRecipient,
    /// The envelope is stored under a mailbox key that does not match its room, sender and
    /// recipient.
    #[error("envelope does not belong under this mailbox key")]
    WrongMailbox,
    /// An older envelope than the one already held for the same mailbox (earlier session, or
    /// lower `seq` of the same session).
    #[error("envelope is older than the one already stored")]
    Stale,
    /// Signing failed.
    #[error("signing the envelope failed")]
    Signing(#[source] SigningError),
    /// A topic message carries an envelope of another signer than the peer that published
    /// it: one libp2p identity may not speak for others on a room topic.
    #[error("topic message from {author:?} carries an envelope signed by {from}")]
    AuthorMismatch {
        /// The envelope's signer.
        from: PeerId,
        /// The gossipsub author of the message (boxed: two peer ids would make every
        /// `Result` carrying this error large).
        author: Option<Box<PeerId>>,
    },
    /// The body could not be sealed (XChaCha20-Poly1305 refuses only inputs of 256 GiB and up).
    #[error("sealing the envelope body failed")]
    Seal,
    /// The sealed body does not open with this room's key: the sender uses another passphrase
    /// (or room name with the same id, which SHA-256 makes impractical), or forged the body.
    #[error("cannot open the envelope from {from}: wrong passphrase or different room")]
    Unseal {
        /// The sender.
        from: PeerId,
    },
}

#[derive(Serialize, Deserialize)]
struct WireSigned {
    payload: Vec<u8>,
    public_key: Vec<u8>,
    signature: Vec<u8>,
}

/// The header fields, in wire order; their encoding is the sealed body's associated data.
#[derive(Serialize, Deserialize)]
struct WireHeader {
    version: u8,
    room_id: RoomId,
    from: Vec<u8>,
    to: Option<Vec<u8>>,
    session: SessionId,
    seq: u64,
    created_at: u64,
    expires_at: u64,
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope {
    header: WireHeader,
    body: Vec<u8>,
}

/// SHA-256 of an offer's SDP: what an answer echoes in [`Signal::offer_hash`].
pub fn offer_hash(sdp: &str) -> [u8; 32] {
    Sha256::digest(sdp.as_bytes()).into()
}

impl Envelope {
    /// Seals the body under `key`, then encodes and signs the envelope with `keypair`, which
    /// must be the key of `self.from`.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::SignerMismatch`] when `keypair` is not `from`'s key,
    /// [`EnvelopeError::TooLarge`] when the result exceeds [`MAX_ENVELOPE_SIZE`], and
    /// [`EnvelopeError::TooManyCandidates`] when a signal is over the candidate limits.
    pub fn sign(&self, keypair: &Keypair, key: &RoomKey) -> Result<Vec<u8>, EnvelopeError> {
        if keypair.public().to_peer_id() != self.from {
            return Err(EnvelopeError::SignerMismatch { from: self.from });
        }
        self.check_limits()?;
        let header = self.wire_header();
        let associated = encode(&header)?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = XChaCha20Poly1305::new(key.as_bytes().into())
            .encrypt(
                &nonce,
                Payload {
                    msg: &encode(&self.body)?,
                    aad: &associated,
                },
            )
            .map_err(|_| EnvelopeError::Seal)?;
        let mut sealed = Vec::with_capacity(SEAL_NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        let payload = encode(&WireEnvelope {
            header,
            body: sealed,
        })?;
        let signature = keypair
            .sign(&signed_message(&payload))
            .map_err(EnvelopeError::Signing)?;
        let bytes = encode(&WireSigned {
            payload,
            public_key: keypair.public().encode_protobuf(),
            signature,
        })?;
        if bytes.len() > MAX_ENVELOPE_SIZE {
            return Err(EnvelopeError::TooLarge { size: bytes.len() });
        }
        Ok(bytes)
    }

    /// Decodes and checks signed envelope bytes: size, format, version, signature (the key must
    /// belong to `from`) and times. `now` is milliseconds since the Unix epoch. The body stays
    /// sealed.
    ///
    /// This is the check every node runs before storing or forwarding an envelope; receivers
    /// add [`Envelope::check_addressed`] and [`Envelope::open`].
    ///
    /// # Errors
    ///
    /// The [`EnvelopeError`] naming the first check that failed.
    pub fn decode(bytes: &[u8], now: u64) -> Result<Envelope<Sealed>, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_SIZE {
            return Err(EnvelopeError::TooLarge { size: bytes.len() });
        }
        let signed: WireSigned = decode(bytes)?;
        let WireEnvelope { header: wire, body } = decode(&signed.payload)?;
        if wire.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(wire.version));
        }
        let from = PeerId::from_bytes(&wire.from).map_err(|_| EnvelopeError::InvalidPeerId)?;
        let to = wire
            .to
            .map(|to| PeerId::from_bytes(&to).map_err(|_| EnvelopeError::InvalidPeerId))
            .transpose()?;
        let public_key = PublicKey::try_decode_protobuf(&signed.public_key)
            .map_err(|_| EnvelopeError::InvalidPublicKey)?;
        if public_key.to_peer_id() != from {
            return Err(EnvelopeError::SignerMismatch { from });
        }
        if !public_key.verify(&signed_message(&signed.payload), &signed.signature) {
            return Err(EnvelopeError::BadSignature { from });
        }
        if body.len() < SEAL_NONCE_LEN {
            return Err(EnvelopeError::Malformed(
                bincode::error::DecodeError::OtherString(format!(
                    "sealed body of {} bytes is shorter than its nonce",
                    body.len()
                )),
            ));
        }
        let envelope = Envelope {
            version: wire.version,
            room_id: wire.room_id,
            from,
            to,
            session: wire.session,
            seq: wire.seq,
            created_at: wire.created_at,
            expires_at: wire.expires_at,
            body: Sealed(body),
        };
        envelope.check_times(now)?;
        Ok(envelope)
    }

    fn check_limits(&self) -> Result<(), EnvelopeError> {
        match &self.body {
            Body::Offer(signal) | Body::Answer(signal)
                if signal.candidates.len() > MAX_CANDIDATES
                    || signal
                        .candidates
                        .iter()
                        .any(|c| c.len() > MAX_CANDIDATE_LEN) =>
            {
                Err(EnvelopeError::TooManyCandidates)
            }
            _ => Ok(()),
        }
    }
}

impl Envelope<Sealed> {
    /// Opens the sealed body with the room key and checks its limits.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::Unseal`] when the body does not open with `key` (another passphrase,
    /// or bytes altered), [`EnvelopeError::Malformed`] when the opened body does not decode,
    /// [`EnvelopeError::TooManyCandidates`] over the candidate limits.
    pub fn open(self, key: &RoomKey) -> Result<Envelope, EnvelopeError> {
        let from = self.from;
        let associated = encode(&self.wire_header())?;
        let (nonce, ciphertext) = self.body.0.split_at(SEAL_NONCE_LEN);
        let plain = XChaCha20Poly1305::new(key.as_bytes().into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &associated,
                },
            )
            .map_err(|_| EnvelopeError::Unseal { from })?;
        let envelope = Envelope {
            version: self.version,
            room_id: self.room_id,
            from,
            to: self.to,
            session: self.session,
            seq: self.seq,
            created_at: self.created_at,
            expires_at: self.expires_at,
            body: decode(&plain)?,
        };
        envelope.check_limits()?;
        Ok(envelope)
    }
}

impl Sealed {
    /// Size of the sealed body (nonce, ciphertext and tag), in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the sealed body is empty (never, once decoded: it holds at least a nonce).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<B> Envelope<B> {
    /// Checks that the envelope belongs to `room` and, when it names a recipient, that the
    /// recipient is `me`.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::WrongRoom`] or [`EnvelopeError::WrongRecipient`].
    pub fn check_addressed(&self, room: &RoomId, me: &PeerId) -> Result<(), EnvelopeError> {
        if &self.room_id != room {
            return Err(EnvelopeError::WrongRoom);
        }
        match self.to {
            Some(to) if &to != me => Err(EnvelopeError::WrongRecipient),
            _ => Ok(()),
        }
    }

    /// Checks that the envelope may be stored under the mailbox record key `key`: it must name
    /// a recipient and `key` must be `room_id.mailbox_key(from, to)`.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::WrongMailbox`].
    pub fn check_mailbox_key(&self, key: &[u8]) -> Result<(), EnvelopeError> {
        match self.to {
            Some(to) if self.room_id.mailbox_key(&self.from, &to) == key => Ok(()),
            _ => Err(EnvelopeError::WrongMailbox),
        }
    }

    fn wire_header(&self) -> WireHeader {
        WireHeader {
            version: self.version,
            room_id: self.room_id,
            from: self.from.to_bytes(),
            to: self.to.map(PeerId::to_bytes),
            session: self.session,
            seq: self.seq,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }

    fn check_times(&self, now: u64) -> Result<(), EnvelopeError> {
        let invalid = EnvelopeError::InvalidTimes {
            created_at: self.created_at,
            expires_at: self.expires_at,
            now,
        };
        if self.expires_at < self.created_at
            || self.expires_at - self.created_at > MAX_ENVELOPE_LIFETIME_MS
            || self.created_at > now.saturating_add(MAX_CLOCK_SKEW_MS)
        {
            return Err(invalid);
        }
        if self.expires_at <= now {
            return Err(EnvelopeError::Expired {
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + payload.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(payload);
    message
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EnvelopeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(EnvelopeError::Encode)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    // The limit keeps a forged length prefix from allocating more than the input could hold.
    let config = bincode::config::standard().with_limit::<MAX_ENVELOPE_SIZE>();
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config).map_err(EnvelopeError::Malformed)?;
    if read != bytes.len() {
        return Err(EnvelopeError::Malformed(
            bincode::error::DecodeError::OtherString(format!(
                "{} trailing bytes",
                bytes.len() - read
            )),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomName;

    const NOW: u64 = 1_800_000_000_000;

    fn room_key() -> RoomKey {
        RoomKey::derive(&RoomName::new("lobby").unwrap())
    }

    fn offer(keypair: &Keypair, to: PeerId) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            room_id: RoomName::new("lobby").unwrap().id(),
            from: keypair.public().to_peer_id(),
            to: Some(to),
            session: SessionId::from_bytes([7; 16]),
            seq: 3,
            created_at: NOW,
            expires_at: NOW + 60_000,
            body: Body::Offer(Signal {
                sdp: "v=0\r\n".into(),
                candidates: vec!["candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".into()],
                end_of_candidates: true,
                offer_hash: None,
            }),
        }
    }

    #[test]
    fn signed_envelope_round_trips() {
        let key = Keypair::generate_ed25519();
        let envelope = offer(&key, PeerId::random());
        let bytes = envelope.sign(&key, &room_key()).unwrap();
        let sealed = Envelope::decode(&bytes, NOW + 1).unwrap();
        assert_eq!(sealed.from, envelope.from);
        assert_eq!(sealed.session, envelope.session);
        assert_eq!(sealed.open(&room_key()).unwrap(), envelope);
    }

    #[test]
    fn sealed_body_hides_sdp_and_candidates() {
        let key = Keypair::generate_ed25519();
        let bytes = offer(&key, PeerId::random())
            .sign(&key, &room_key())
            .unwrap();
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(b"127.0.0.1"));
        assert!(!contains(b"candidate:"));
        assert!(!contains(b"v=0"));
    }

    #[test]
    fn wrong_room_key_cannot_open() {
        let key = Keypair::generate_ed25519();
        let bytes = offer(&key, PeerId::random())
            .sign(&key, &room_key())
            .unwrap();
        let other =
            RoomKey::derive_with_passphrase(&RoomName::new("lobby").unwrap(), "pw").unwrap();
        let sealed = Envelope::decode(&bytes, NOW).unwrap();
        assert!(matches!(
            sealed.open(&other),
            Err(EnvelopeError::Unseal { from }) if from == key.public().to_peer_id()
        ));
    }

    #[test]
    fn sealed_body_is_bound_to_its_header() {
        // A room member cannot move Alice's sealed body under a header of its own (and its own
        // signature): the header is the ciphertext's associated data.
        let (alice, mallory) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let bytes = offer(&alice, PeerId::random())
            .sign(&alice, &room_key())
            .unwrap();
        let signed: WireSigned = decode(&bytes).unwrap();
        let mut wire: WireEnvelope = decode(&signed.payload).unwrap();
        wire.header.from = mallory.public().to_peer_id().to_bytes();
        let payload = encode(&wire).unwrap();
        let forged = encode(&WireSigned {
            signature: mallory.sign(&signed_message(&payload)).unwrap(),
            public_key: mallory.public().encode_protobuf(),
            payload,
        })
        .unwrap();
        let sealed = Envelope::decode(&forged, NOW).unwrap();
        assert!(matches!(
            sealed.open(&room_key()),
            Err(EnvelopeError::Unseal { .. })
        ));
    }

    #[test]
    fn forged_signature_is_rejected() {
        let key = Keypair::generate_ed25519();
        let mut bytes = offer(&key, PeerId::random())
            .sign(&key, &room_key())
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01; // the signature is the last field
        assert!(matches!(
            Envelope::decode(&bytes, NOW),
            Err(EnvelopeError::BadSignature { .. })
        ));
    }

    #[test]
    fn envelope_signed_by_another_key_is_rejected() {
        let (alice, mallory) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let envelope = offer(&alice, PeerId::random());
        assert!(matches!(
            envelope.sign(&mallory, &room_key()),
            Err(EnvelopeError::SignerMismatch { .. })
        ));
        // Mallory re-wraps Alice's payload with her own key and signature.
        let bytes = envelope.sign(&alice, &room_key()).unwrap();
        let mut signed: WireSigned = decode(&bytes).unwrap();
        signed.public_key = mallory.public().encode_protobuf();
        signed.signature = mallory.sign(&signed_message(&signed.payload)).unwrap();
        let forged = encode(&signed).unwrap();
        assert!(matches!(
            Envelope::decode(&forged, NOW),
            Err(EnvelopeError::SignerMismatch { .. })
        ));
    }

    #[test]
    fn expired_envelope_is_rejected() {
        let key = Keypair::generate_ed25519();
        let bytes = offer(&key, PeerId::random())
            .sign(&key, &room_key())
            .unwrap();
        assert!(matches!(
            Envelope::decode(&bytes, NOW + 60_000),
            Err(EnvelopeError::Expired { .. })
        ));
    }

    #[test]
    fn envelope_from_the_far_future_is_rejected() {
        let key = Keypair::generate_ed25519();
        let bytes = offer(&key, PeerId::random())
            .sign(&key, &room_key())
            .unwrap();
        assert!(matches!(
            Envelope::decode(&bytes, NOW - 2 * MAX_CLOCK_SKEW_MS),
            Err(EnvelopeError::InvalidTimes { .. })
        ));
    }

    #[test]
    fn oversized_input_is_rejected_before_decoding() {
        let bytes = vec![0u8; MAX_ENVELOPE_SIZE + 1];
        assert!(matches!(
            Envelope::decode(&bytes, NOW),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [&b""[..], b"\xff\xff\xff\xff", b"hello world", &[0xfc; 64]] {
            assert!(Envelope::decode(bytes, NOW).is_err());
        }
    }

    #[test]
    fn too_many_candidates_are_refused_when_signing() {
        let key = Keypair::generate_ed25519();
        let mut envelope = offer(&key, PeerId::random());
        envelope.body = Body::Offer(Signal {
            sdp: String::new(),
            candidates: vec!["c".into(); MAX_CANDIDATES + 1],
            end_of_candidates: false,
            offer_hash: None,
        });
        assert!(matches!(
            envelope.sign(&key, &room_key()),
            Err(EnvelopeError::TooManyCandidates)
        ));
    }

    #[test]
    fn envelope_for_another_room_or_peer_is_not_addressed_to_us() {
        let key = Keypair::generate_ed25519();
        let me = PeerId::random();
        let envelope = offer(&key, me);
        let room = envelope.room_id;
        assert!(envelope.check_addressed(&room, &me).is_ok());
        assert!(matches!(
            envelope.check_addressed(&RoomName::new("other").unwrap().id(), &me),
            Err(EnvelopeError::WrongRoom)
        ));
        assert!(matches!(
            envelope.check_addressed(&room, &PeerId::random()),
            Err(EnvelopeError::WrongRecipient)
        ));
    }

    #[test]
    fn mailbox_key_must_match_room_sender_and_recipient() {
        let key = Keypair::generate_ed25519();
        let to = PeerId::random();
        let envelope = offer(&key, to);
        let right = envelope.room_id.mailbox_key(&envelope.from, &to);
        let wrong = envelope.room_id.mailbox_key(&to, &envelope.from);
        assert!(envelope.check_mailbox_key(&right).is_ok());
        assert!(matches!(
            envelope.check_mailbox_key(&wrong),
            Err(EnvelopeError::WrongMailbox)
        ));
    }
}
