//! Channel binding: the first message each side sends over a freshly opened data channel,
//! proving that the holder of the libp2p key named in the envelopes is the endpoint of this
//! DTLS association (DESIGN.md, "Signaling flow", step 6).
//!
//! Both sides sign the same transcript, [`BINDING_DOMAIN`] ‖ session id ‖ offerer's DTLS
//! fingerprint ‖ answerer's DTLS fingerprint, each fingerprint the SHA-256 of a DER certificate
//! (RFC 8122 §5). Each side takes its own fingerprint from its local description and the
//! remote's from the certificate the DTLS handshake actually presented, so a proof made for
//! another association, another session or by another key does not verify.
//!
//! Wire form (bincode 2, through serde): `{ public_key, signature }`, the public key in libp2p
//! protobuf form.

use std::fmt;

use libp2p_identity::{Keypair, PeerId, PublicKey, SigningError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::ids::SessionId;

/// Domain tag signed in front of the binding transcript.
pub const BINDING_DOMAIN: &[u8] = b"kadrtc/channel-binding/v1";

/// Largest binding message accepted, in bytes (an ed25519 proof is about 110).
pub const MAX_BINDING_SIZE: usize = 1024;

/// SHA-256 fingerprint of a DTLS certificate (RFC 8122 §5: the hash of the DER encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// What both sides of one data channel sign: the session and both DTLS fingerprints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelBinding {
    session: SessionId,
    offerer: Fingerprint,
    answerer: Fingerprint,
}

/// Why a channel-binding proof was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BindingError {
    /// The proof is larger than [`MAX_BINDING_SIZE`].
    #[error("channel-binding proof is {size} bytes; at most {MAX_BINDING_SIZE} are accepted")]
    TooLarge {
        /// Size of the rejected message.
        size: usize,
    },
    /// The proof does not decode.
    #[error("malformed channel-binding proof")]
    Malformed,
    /// The proof carries an invalid public key.
    #[error("channel-binding proof carries an invalid public key")]
    InvalidPublicKey,
    /// The proof is made with the key of another peer than the one named in the envelopes.
    #[error("channel-binding proof is from {proved}, but the envelopes are from {expected}")]
    WrongPeer {
        /// The peer the envelopes name.
        expected: PeerId,
        /// The peer whose key made the proof (boxed: two peer ids would make every
        /// `Result` carrying this error large).
        proved: Box<PeerId>,
    },
    /// The signature does not cover this session and these DTLS fingerprints.
    #[error(
        "channel-binding signature of {peer} does not cover this session and DTLS certificates"
    )]
    BadSignature {
        /// The peer whose key made the proof.
        peer: PeerId,
    },
    /// Signing the local proof failed.
    #[error("signing the channel-binding proof failed")]
    Signing(#[source] SigningError),
}

#[derive(Serialize, Deserialize)]
struct WireBinding {
    public_key: Vec<u8>,
    signature: Vec<u8>,
}

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_certificate(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The first `a=fingerprint:sha-256` attribute of an SDP (RFC 8122 §5), if any.
    pub fn from_sdp(sdp: &str) -> Option<Self> {
        sdp.lines().find_map(|line| {
            let value = line
                .trim_end()
                .strip_prefix("a=fingerprint:")?
                .split_once(' ')
                .filter(|(hash, _)| hash.eq_ignore_ascii_case("sha-256"))?
                .1;
            let mut bytes = [0u8; 32];
            let mut parts = value.split(':');
            for byte in &mut bytes {
                *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
            }
            parts.next().is_none().then_some(Self(bytes))
        })
    }

    /// A fingerprint from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl fmt::Display for Fingerprint {
    /// RFC 8122 §5 form: upper-case hex pairs joined by colons.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl ChannelBinding {
    /// The transcript of one data channel: its session and the offerer's and answerer's DTLS
    /// fingerprints.
    pub fn new(session: SessionId, offerer: Fingerprint, answerer: Fingerprint) -> Self {
        Self {
            session,
            offerer,
            answerer,
        }
    }

    /// The proof to send: the transcript signed with `keypair`.
    ///
    /// # Errors
    ///
    /// [`BindingError::Signing`] when the key cannot sign.
    pub fn prove(&self, keypair: &Keypair) -> Result<Vec<u8>, BindingError> {
        let signature = keypair
            .sign(&self.transcript())
            .map_err(BindingError::Signing)?;
        bincode::serde::encode_to_vec(
            WireBinding {
                public_key: keypair.public().encode_protobuf(),
                signature,
            },
            bincode::config::standard(),
        )
        .map_err(|_| BindingError::Malformed)
    }

    /// Checks the remote's proof: it must be made by `expected`'s key over this transcript.
    ///
    /// # Errors
    ///
    /// The [`BindingError`] naming the first check that failed.
    pub fn verify(&self, proof: &[u8], expected: &PeerId) -> Result<(), BindingError> {
        if proof.len() > MAX_BINDING_SIZE {
            return Err(BindingError::TooLarge { size: proof.len() });
        }
        let config = bincode::config::standard().with_limit::<MAX_BINDING_SIZE>();
        let (wire, read): (WireBinding, usize) = bincode::serde::decode_from_slice(proof, config)
            .map_err(|_| BindingError::Malformed)?;
        if read != proof.len() {
            return Err(BindingError::Malformed);
        }
        let public_key = PublicKey::try_decode_protobuf(&wire.public_key)
            .map_err(|_| BindingError::InvalidPublicKey)?;
        let proved = public_key.to_peer_id();
        if &proved != expected {
            return Err(BindingError::WrongPeer {
                expected: *expected,
                proved: Box::new(proved),
            });
        }
        if !public_key.verify(&self.transcript(), &wire.signature) {
            return Err(BindingError::BadSignature { peer: proved });
        }
        Ok(())
    }

    fn transcript(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(BINDING_DOMAIN.len() + 16 + 64);
        message.extend_from_slice(BINDING_DOMAIN);
        message.extend_from_slice(self.session.as_bytes());
        message.extend_from_slice(&self.offerer.0);
        message.extend_from_slice(&self.answerer.0);
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(session: u8, offerer: u8, answerer: u8) -> ChannelBinding {
        ChannelBinding::new(
            SessionId::from_bytes([session; 16]),
            Fingerprint::from_bytes([offerer; 32]),
            Fingerprint::from_bytes([answerer; 32]),
        )
    }

    #[test]
    fn proof_verifies_for_its_key_and_transcript() {
        let key = Keypair::generate_ed25519();
        let proof = binding(1, 2, 3).prove(&key).unwrap();
        binding(1, 2, 3)
            .verify(&proof, &key.public().to_peer_id())
            .unwrap();
    }

    #[test]
    fn proof_of_another_peer_is_refused() {
        let (alice, mallory) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let proof = binding(1, 2, 3).prove(&mallory).unwrap();
        assert!(matches!(
            binding(1, 2, 3).verify(&proof, &alice.public().to_peer_id()),
            Err(BindingError::WrongPeer { proved, .. }) if *proved == mallory.public().to_peer_id()
        ));
    }

    #[test]
    fn proof_for_another_session_or_certificate_is_refused() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let proof = binding(1, 2, 3).prove(&key).unwrap();
        for other in [binding(9, 2, 3), binding(1, 9, 3), binding(1, 2, 9)] {
            assert!(matches!(
                other.verify(&proof, &peer),
                Err(BindingError::BadSignature { .. })
            ));
        }
    }

    #[test]
    fn garbage_proofs_are_errors_not_panics() {
        let peer = PeerId::random();
        for proof in [&b""[..], b"\xff\xff\xff", &[0u8; 64]] {
            assert!(binding(1, 2, 3).verify(proof, &peer).is_err());
        }
        assert!(matches!(
            binding(1, 2, 3).verify(&[0u8; MAX_BINDING_SIZE + 1], &peer),
            Err(BindingError::TooLarge { .. })
        ));
    }

    #[test]
    fn fingerprint_is_read_from_sdp() {
        let der = b"not really a certificate";
        let fingerprint = Fingerprint::of_certificate(der);
        let sdp = format!("v=0\r\na=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\n");
        assert_eq!(Fingerprint::from_sdp(&sdp), Some(fingerprint));
        assert_eq!(
            Fingerprint::from_sdp("v=0\r\na=fingerprint:sha-1 00:11\r\n"),
            None
        );
        assert_eq!(
            Fingerprint::from_sdp("a=fingerprint:sha-256 00:11\r\n"),
            None
        );
    }
}
