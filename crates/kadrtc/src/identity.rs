//! [`Identity`]: a node's long-lived ed25519 key, which its `PeerId` is derived from.

use std::fmt;

use kadrtc_proto::Keypair;
use libp2p::PeerId;
use thiserror::Error;

/// A node's identity: an ed25519 keypair. Its public half names the node (`PeerId`) and signs
/// every envelope it publishes. Keep it secret; persist it with [`Identity::to_bytes`] to keep
/// the same `PeerId` across restarts.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
}

/// Why bytes are not an [`Identity`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a libp2p private key in protobuf encoding.
    #[error("not a libp2p private key (protobuf encoding)")]
    Malformed,
    /// The key is not ed25519.
    #[error("only ed25519 identities are supported")]
    NotEd25519,
}

impl Identity {
    /// A fresh random ed25519 identity.
    pub fn generate() -> Self {
        Self {
            keypair: Keypair::generate_ed25519(),
        }
    }

    /// Reads an identity written by [`Identity::to_bytes`]: a libp2p private key in its
    /// protobuf encoding (the form go-libp2p and js-libp2p also use).
    ///
    /// # Errors
    ///
    /// [`IdentityError::Malformed`] for other bytes, [`IdentityError::NotEd25519`] for another
    /// key type.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let keypair =
            Keypair::from_protobuf_encoding(bytes).map_err(|_| IdentityError::Malformed)?;
        if keypair.clone().try_into_ed25519().is_err() {
            return Err(IdentityError::NotEd25519);
        }
        Ok(Self { keypair })
    }

    /// The private key in libp2p's protobuf encoding (68 bytes for ed25519).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding an ed25519 key cannot fail; only RSA keys lack an encoding.
        self.keypair.to_protobuf_encoding().unwrap_or_default()
    }

    /// The `PeerId` this identity names.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    pub(crate) fn keypair(&self) -> &Keypair {
        &self.keypair
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_bytes() {
        let identity = Identity::generate();
        let again = Identity::from_bytes(&identity.to_bytes()).unwrap();
        assert_eq!(again.peer_id(), identity.peer_id());
    }

    #[test]
    fn garbage_is_not_an_identity() {
        assert!(matches!(
            Identity::from_bytes(b"not a key"),
            Err(IdentityError::Malformed)
        ));
    }
}
