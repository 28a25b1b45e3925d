//! [`RoomLink`]: a room and the way into the network, as one `kadrtc://` link to hand to the
//! other side, and rooms made from nothing ([`RoomLink::random`]).

use std::fmt;

use libp2p::Multiaddr;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use thiserror::Error;

/// Scheme of room links.
pub const LINK_SCHEME: &str = "kadrtc://";

/// Bytes of randomness in a room made by [`RoomLink::random`]: 128 bits, since the room
/// name is what keeps strangers out (the sealing key derives from it).
pub const RANDOM_ROOM_BYTES: usize = 16;

/// Characters kept as they are in a link's room name and bootstrap values (RFC 3986
/// unreserved, less `~`).
const LINK_SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// A room name with the bootstrap addresses to reach the network, written as
/// `kadrtc://ROOM?bootstrap=MULTIADDR&bootstrap=…` (the room and each address
/// percent-encoded, RFC 3986 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomLink {
    /// The room name, for [`crate::Node::join`].
    pub room: String,
    /// Nodes to bootstrap from, for [`crate::NodeBuilder::bootstrap`]; may be empty (on a
    /// LAN with mDNS).
    pub bootstrap: Vec<Multiaddr>,
}

/// Why text is not a [`RoomLink`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The link names no room.
    #[error("the link names no room")]
    NoRoom,
    /// A percent-encoded part is not UTF-8.
    #[error("the link is not UTF-8 once decoded")]
    NotUtf8,
    /// A `bootstrap` value is not a multiaddr.
    #[error("invalid bootstrap address {0:?} in the link")]
    Bootstrap(String),
}

impl RoomLink {
    /// A new room with a random name (32 hex digits, [`RANDOM_ROOM_BYTES`] of randomness),
    /// reached through `bootstrap`.
    pub fn random(bootstrap: Vec<Multiaddr>) -> Self {
        let bytes: [u8; RANDOM_ROOM_BYTES] = rand::random();
        Self {
            room: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            bootstrap,
        }
    }

    /// Reads a `kadrtc://` link, or takes any other text as a plain room name with no
    /// bootstrap address. Unknown link parameters are ignored.
    ///
    /// # Errors
    ///
    /// [`LinkError`] for a link with no room, bytes that are not UTF-8, or a bootstrap value
    /// that is not a multiaddr.
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let Some(rest) = text.strip_prefix(LINK_SCHEME) else {
            return Ok(Self {
                room: text.to_string(),
                bootstrap: Vec::new(),
            });
        };
        let (room, query) = rest.split_once('?').unwrap_or((rest, ""));
        let room = decode(room.trim_end_matches('/'))?;
        if room.is_empty() {
            return Err(LinkError::NoRoom);
        }
        let mut bootstrap = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key == "bootstrap" {
                let value = decode(value)?;
                bootstrap.push(value.parse().map_err(|_| LinkError::Bootstrap(value))?);
            } else {
                tracing::debug!(key, "unknown link parameter ignored");
            }
        }
        Ok(Self { room, bootstrap })
    }
}

impl fmt::Display for RoomLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{LINK_SCHEME}{}",
            utf8_percent_encode(&self.room, LINK_SAFE)
        )?;
        for (i, addr) in self.bootstrap.iter().enumerate() {
            let separator = if i == 0 { '?' } else { '&' };
            let addr = addr.to_string();
            write!(
                f,
                "{separator}bootstrap={}",
                utf8_percent_encode(&addr, LINK_SAFE)
            )?;
        }
        Ok(())
    }
}

fn decode(text: &str) -> Result<String, LinkError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| LinkError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_round_trip_room_names_and_bootstrap_addresses() {
        let bootstrap: Vec<Multiaddr> = vec![
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                .parse()
                .unwrap(),
            "/ip4/10.0.0.2/tcp/4002".parse().unwrap(),
        ];
        for room in [
            "lobby",
            "a room/with ?&= and ünïcode",
            &RoomLink::random(vec![]).room,
        ] {
            let link = RoomLink {
                room: room.to_string(),
                bootstrap: bootstrap.clone(),
            };
            let text = link.to_string();
            assert!(text.starts_with("kadrtc://"), "{text}");
            assert_eq!(text.matches('?').count(), 1, "{text}");
            assert_eq!(RoomLink::parse(&text).unwrap(), link);
        }
    }

    #[test]
    fn plain_names_are_rooms_and_bad_links_are_errors() {
        assert_eq!(RoomLink::parse("lobby").unwrap().room, "lobby");
        assert!(matches!(
            RoomLink::parse("kadrtc://"),
            Err(LinkError::NoRoom)
        ));
        assert!(matches!(
            RoomLink::parse("kadrtc://room?bootstrap=not-a-multiaddr"),
            Err(LinkError::Bootstrap(value)) if value == "not-a-multiaddr"
        ));
        assert!(matches!(
            RoomLink::parse("kadrtc://%ff"),
            Err(LinkError::NotUtf8)
        ));
    }

    #[test]
    fn random_rooms_are_128_bits_of_hex_and_differ() {
        let (a, b) = (RoomLink::random(vec![]).room, RoomLink::random(vec![]).room);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
