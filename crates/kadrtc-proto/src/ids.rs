//! Room names, room ids, session ids, and the DHT keys and topic derived from them.

use std::fmt;

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest room name accepted, in bytes of UTF-8.
pub const MAX_ROOM_NAME_LEN: usize = 256;

/// Domain tag hashed in front of a room name to form its [`RoomId`] (DESIGN.md, "Words").
pub const ROOM_ID_DOMAIN: &[u8] = b"kadrtc/room/v1";
/// Domain tag hashed in front of a room id to form its presence key.
pub const PRESENCE_DOMAIN: &[u8] = b"kadrtc/presence/v1";
/// Domain tag hashed in front of `room id ‖ from ‖ to` to form a mailbox key.
pub const MAILBOX_DOMAIN: &[u8] = b"kadrtc/mailbox/v1";
/// Namespace prefix of every mailbox record key: `/kadrtc/mailbox/<32 bytes>`.
///
/// Other libp2p implementations (js-libp2p) reject record keys without a `/namespace/` prefix
/// before any validator runs.
pub const MAILBOX_KEY_PREFIX: &[u8] = b"/kadrtc/mailbox/";

/// Multihash code of sha2-256 (multicodec table), used for presence keys so that other libp2p
/// implementations can look them up as CIDs.
const SHA2_256_CODE: u8 = 0x12;

/// A room name as users type it: non-empty UTF-8, at most [`MAX_ROOM_NAME_LEN`] bytes, no
/// control characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoomName(String);

/// Why a string is not a [`RoomName`].
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomNameError {
    /// The name is empty.
    #[error("room name is empty")]
    Empty,
    /// The name is longer than [`MAX_ROOM_NAME_LEN`] bytes.
    #[error("room name is {len} bytes long; at most {MAX_ROOM_NAME_LEN} are allowed")]
    TooLong {
        /// Length of the rejected name, in bytes.
        len: usize,
    },
    /// The name contains a control character (newline, tab, NUL, ...).
    #[error("room name contains a control character")]
    ControlCharacter,
}

/// `SHA-256("kadrtc/room/v1" ‖ room name)`: the only form of a room the network ever sees.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoomId([u8; 32]);

/// A negotiation attempt between two peers: 128 random bits chosen by the offerer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId([u8; 16]);

impl RoomName {
    /// Parses a room name.
    ///
    /// # Errors
    ///
    /// [`RoomNameError`] when the name is empty, too long or holds control characters.
    pub fn new(name: impl Into<String>) -> Result<Self, RoomNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if name.len() > MAX_ROOM_NAME_LEN {
            return Err(RoomNameError::TooLong { len: name.len() });
        }
        if name.chars().any(char::is_control) {
            return Err(RoomNameError::ControlCharacter);
        }
        Ok(Self(name))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The room id derived from this name.
    pub fn id(&self) -> RoomId {
        RoomId(sha256(&[ROOM_ID_DOMAIN, self.0.as_bytes()]))
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RoomName").field(&self.0).finish()
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl RoomId {
    /// Wraps 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The presence key: a sha2-256 multihash (`0x12 0x20` then
    /// `SHA-256("kadrtc/presence/v1" ‖ room id)`), 34 bytes. Members of the room announce
    /// themselves as Kademlia providers of this key.
    pub fn presence_key(&self) -> Vec<u8> {
        let digest = sha256(&[PRESENCE_DOMAIN, &self.0]);
        let mut key = Vec::with_capacity(34);
        key.push(SHA2_256_CODE);
        key.push(32);
        key.extend_from_slice(&digest);
        key
    }

    /// The gossipsub topic of the room: `kadrtc/room/<room id in lowercase hex>`.
    pub fn topic(&self) -> String {
        format!("kadrtc/room/{}", hex(&self.0))
    }

    /// The mailbox record key holding `from`'s signaling state for `to` in this room:
    /// [`MAILBOX_KEY_PREFIX`] then `SHA-256("kadrtc/mailbox/v1" ‖ room id ‖ from ‖ to)`,
    /// with both peer ids in their multihash byte form.
    pub fn mailbox_key(&self, from: &PeerId, to: &PeerId) -> Vec<u8> {
        let digest = sha256(&[MAILBOX_DOMAIN, &self.0, &from.to_bytes(), &to.to_bytes()]);
        let mut key = MAILBOX_KEY_PREFIX.to_vec();
        key.extend_from_slice(&digest);
        key
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({})", hex(&self.0[..8]))
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl SessionId {
    /// A fresh random session id (128 bits from the OS-seeded thread RNG).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Wraps 16 raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", hex(&self.0[..4]))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Whether `key` has the shape of a presence key ([`RoomId::presence_key`]): a 34-byte
/// sha2-256 multihash. Storing nodes accept provider records only under such keys.
pub fn is_presence_key(key: &[u8]) -> bool {
    key.len() == 34 && key[0] == SHA2_256_CODE && key[1] == 32
}

/// Whether `local` offers to `remote`: the peer with the smaller `PeerId` (byte order of the
/// multihash form) offers (DESIGN.md, "offerer / answerer").
pub fn is_offerer(local: &PeerId, remote: &PeerId) -> bool {
    local.to_bytes() < remote.to_bytes()
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_id_is_sha256_of_domain_and_name() {
        let id = RoomName::new("lobby").unwrap().id();
        let expected: [u8; 32] = Sha256::digest(b"kadrtc/room/v1lobby").into();
        assert_eq!(id.as_bytes(), &expected);
    }

    #[test]
    fn room_names_are_parsed() {
        assert_eq!(RoomName::new(""), Err(RoomNameError::Empty));
        assert_eq!(RoomName::new("a\nb"), Err(RoomNameError::ControlCharacter));
        assert_eq!(
            RoomName::new("x".repeat(MAX_ROOM_NAME_LEN + 1)),
            Err(RoomNameError::TooLong {
                len: MAX_ROOM_NAME_LEN + 1
            })
        );
        assert!(RoomName::new("café ☕").is_ok());
    }

    #[test]
    fn presence_key_is_a_sha2_256_multihash() {
        let key = RoomName::new("lobby").unwrap().id().presence_key();
        assert_eq!(key.len(), 34);
        assert_eq!(&key[..2], &[0x12, 0x20]);
        assert!(is_presence_key(&key));
        assert!(!is_presence_key(&key[..33]));
        assert!(!is_presence_key(b"/kadrtc/mailbox/0123456789012345678"));
    }

    #[test]
    fn mailbox_keys_are_namespaced_and_directional() {
        let room = RoomName::new("lobby").unwrap().id();
        let (a, b) = (PeerId::random(), PeerId::random());
        let ab = room.mailbox_key(&a, &b);
        assert!(ab.starts_with(b"/kadrtc/mailbox/"));
        assert_eq!(ab.len(), MAILBOX_KEY_PREFIX.len() + 32);
        assert_ne!(ab, room.mailbox_key(&b, &a));
    }

    #[test]
    fn exactly_one_side_of_a_pair_offers() {
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_ne!(is_offerer(&a, &b), is_offerer(&b, &a));
    }
}
