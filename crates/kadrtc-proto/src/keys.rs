//! The room key: the symmetric key that seals envelope bodies (DESIGN.md, "Envelope").
//!
//! Without a passphrase the key is `HKDF-SHA256(salt = ROOM_KEY_SALT, ikm = room name)`
//! expanded with the info [`SEAL_KEY_INFO`] (RFC 5869). With a passphrase, the input keying
//! material is first stretched by argon2id (RFC 9106) with the parameters below, salted by the
//! room, so that every guess of a passphrase costs [`ARGON2_MEMORY_KIB`] KiB of memory and
//! [`ARGON2_ITERATIONS`] passes over it.
//!
//! The room id (`SHA-256("kadrtc/room/v1" ‖ name)`, public on the wire) is a different hash of
//! the name: knowing the id does not give the key, but a guessable room name does. Choose an
//! unguessable room name or a passphrase.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::ids::RoomName;

/// HKDF salt for room keys (RFC 5869 §3.1: a fixed, application-specific salt).
pub const ROOM_KEY_SALT: &[u8] = b"kadrtc/room-key/v1";

/// HKDF info of the key that seals envelope bodies (RFC 5869 §3.2).
pub const SEAL_KEY_INFO: &[u8] = b"kadrtc/seal/v1";

/// Domain tag hashed with the room name into the argon2id salt, so that each room has its own
/// salt (RFC 9106 §3.1 asks for a unique salt per password use).
pub const PASSPHRASE_SALT_DOMAIN: &[u8] = b"kadrtc/passphrase-salt/v1";

/// argon2id memory cost, in KiB: 64 MiB, RFC 9106 §4's second recommended option.
pub const ARGON2_MEMORY_KIB: u32 = 64 * 1024;

/// argon2id passes over memory (RFC 9106 §4, second recommended option: t = 3).
pub const ARGON2_ITERATIONS: u32 = 3;

/// argon2id lanes (RFC 9106 §4, second recommended option: p = 4; computed one after the
/// other here, the memory cost is the same).
pub const ARGON2_LANES: u32 = 4;

/// Longest passphrase accepted, in bytes.
pub const MAX_PASSPHRASE_LEN: usize = 1024;

/// The 256-bit key that seals a room's envelope bodies. Wiped from memory when dropped;
/// `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct RoomKey([u8; 32]);

/// Why a room key could not be derived.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The passphrase is empty.
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    /// The passphrase is longer than [`MAX_PASSPHRASE_LEN`] bytes.
    #[error("the passphrase is {len} bytes; at most {MAX_PASSPHRASE_LEN} are accepted")]
    PassphraseTooLong {
        /// Length of the rejected passphrase, in bytes.
        len: usize,
    },
    /// argon2 refused its inputs (it cannot with the constants above; kept typed, not a panic).
    #[error("argon2id failed: {0}")]
    Argon2(String),
}

impl RoomKey {
    /// The key of a room without a passphrase: anyone who knows the room name has it.
    pub fn derive(room: &RoomName) -> Self {
        Self::expand(room.as_str().as_bytes())
    }

    /// The key of a room with a passphrase: argon2id over the passphrase, salted by the room
    /// name, then HKDF as in [`RoomKey::derive`]. Slow on purpose (about 0.13 s and 64 MiB on
    /// one core, optimised): run it off the async runtime.
    ///
    /// # Errors
    ///
    /// [`KeyError::EmptyPassphrase`], [`KeyError::PassphraseTooLong`].
    pub fn derive_with_passphrase(room: &RoomName, passphrase: &str) -> Result<Self, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        if passphrase.len() > MAX_PASSPHRASE_LEN {
            return Err(KeyError::PassphraseTooLong {
                len: passphrase.len(),
            });
        }
        let salt = Sha256::new()
            .chain_update(PASSPHRASE_SALT_DOMAIN)
            .chain_update(room.as_str().as_bytes())
            .finalize();
        let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, Some(32))
            .map_err(|e| KeyError::Argon2(e.to_string()))?;
        let mut stretched = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), &salt[..16], &mut stretched)
            .map_err(|e| KeyError::Argon2(e.to_string()))?;
        let mut ikm = Vec::with_capacity(room.as_str().len() + 32);
        ikm.extend_from_slice(room.as_str().as_bytes());
        ikm.extend_from_slice(&stretched);
        let key = Self::expand(&ikm);
        ikm.zeroize();
        stretched.zeroize();
        Ok(key)
    }

    /// Builds a key from raw bytes (tests, and keys agreed out of band).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn expand(ikm: &[u8]) -> Self {
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(ROOM_KEY_SALT), ikm)
            .expand(SEAL_KEY_INFO, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length (at most 255 × 32)");
        Self(key)
    }
}

impl fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::new(name).unwrap()
    }

    #[test]
    fn room_key_depends_on_room_and_passphrase() {
        let lobby = RoomKey::derive(&room("lobby"));
        assert_eq!(lobby, RoomKey::derive(&room("lobby")));
        assert_ne!(lobby, RoomKey::derive(&room("lobby2")));
        // The key is not the public room id.
        assert_ne!(lobby.as_bytes(), room("lobby").id().as_bytes());

        let secret = RoomKey::derive_with_passphrase(&room("lobby"), "hunter2").unwrap();
        assert_eq!(
            secret,
            RoomKey::derive_with_passphrase(&room("lobby"), "hunter2").unwrap()
        );
        assert_ne!(secret, lobby);
        assert_ne!(
            secret,
            RoomKey::derive_with_passphrase(&room("lobby"), "hunter3").unwrap()
        );
        assert_ne!(
            secret,
            RoomKey::derive_with_passphrase(&room("other"), "hunter2").unwrap()
        );
    }

    #[test]
    fn bad_passphrases_are_refused() {
        assert!(matches!(
            RoomKey::derive_with_passphrase(&room("lobby"), ""),
            Err(KeyError::EmptyPassphrase)
        ));
        let long = "x".repeat(MAX_PASSPHRASE_LEN + 1);
        assert!(matches!(
            RoomKey::derive_with_passphrase(&room("lobby"), &long),
            Err(KeyError::PassphraseTooLong { len }) if len == MAX_PASSPHRASE_LEN + 1
        ));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = RoomKey::from_bytes([0xAB; 32]);
        let printed = format!("{key:?}");
        assert_eq!(printed, "RoomKey(..)");
    }
}
