//! [`Channel`]: the open data channel to one room member, and what travels on it.
//!
//! Every message on a room's main data channel (after the channel-binding proof, which is
//! the first message each way) starts with one frame byte: [`frame::DATA`] for application
//! messages, [`frame::PING`] and [`frame::PONG`] (with an 8-byte nonce) for round-trip
//! times and liveness, [`frame::BYE`] when the sender leaves the room. Files travel on side channels of their own, see [`crate::file`].

use std::path::Path;
use std::time::{Duration, Instant};

use kadrtc_rtc::{CandidatePair, PeerConnection, RtcError};
use libp2p::PeerId;

use crate::file::{self, FileError, FileTransfer};
use crate::room::SendError;

/// Largest application message [`Channel::send`] and [`crate::Room::send`] accept, in
/// bytes: the data channel's 64 KiB less the frame byte.
pub const MAX_MESSAGE_SIZE: usize = kadrtc_rtc::MAX_MESSAGE_SIZE - 1;

/// Frame bytes of the main data channel.
pub(crate) mod frame {
    /// An application message follows.
    pub const DATA: u8 = 0;
    /// A ping: an 8-byte nonce follows, to be echoed in a [`PONG`].
    pub const PING: u8 = 1;
    /// The answer to a [`PING`], with its nonce.
    pub const PONG: u8 = 2;
    /// The sender leaves the room ([`crate::Room::leave`]): report it gone now.
    pub const BYE: u8 = 3;
}

/// A main-channel message, framed.
pub(crate) fn data_frame(data: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(data.len() + 1);
    framed.push(frame::DATA);
    framed.extend_from_slice(data);
    framed
}

/// A ping or pong frame with `nonce`.
pub(crate) fn ping_frame(kind: u8, nonce: u64) -> [u8; 9] {
    let mut framed = [0; 9];
    framed[0] = kind;
    framed[1..].copy_from_slice(&nonce.to_be_bytes());
    framed
}

/// The nonce of a ping or pong frame's body, if it is 8 bytes.
pub(crate) fn ping_nonce(body: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(body.try_into().ok()?))
}

/// The open data channel to one room member, from [`crate::Room::channel`]. Cheap to clone.
/// It stays usable until the member leaves; after that every send fails.
#[derive(Clone)]
pub struct Channel {
    pub(crate) peer: PeerId,
    pub(crate) main: kadrtc_rtc::Channel,
    pub(crate) connection: PeerConnection,
}

/// What a room knows about one member with an open channel, from [`crate::Room::peers`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The member.
    pub peer: PeerId,
    /// When its channel opened.
    pub connected_at: Instant,
    /// The candidate pair in use, when webrtc-rs reports it.
    pub candidate_pair: Option<CandidatePair>,
    /// The latest round-trip time of a ping on the channel (the room pings every open
    /// channel once a second); `None` before the first answer.
    pub rtt: Option<Duration>,
}

impl Channel {
    /// The member at the other end.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Sends one message of at most [`MAX_MESSAGE_SIZE`] bytes; it arrives as
    /// [`crate::RoomEvent::Message`]. Waits while the channel's send buffer is full.
    ///
    /// # Errors
    ///
    /// [`SendError::Rtc`] when the message is too large or the channel is closed.
    pub async fn send(&self, data: &[u8]) -> Result<(), SendError> {
        if data.len() > MAX_MESSAGE_SIZE {
            return Err(SendError::Rtc {
                peer: self.peer,
                source: RtcError::MessageTooLarge { size: data.len() },
            });
        }
        self.main
            .send(&data_frame(data))
            .await
            .map_err(|source| SendError::Rtc {
                peer: self.peer,
                source,
            })
    }

    /// Starts sending the file at `path` on a data channel of its own; the member sees a
    /// [`crate::RoomEvent::IncomingFile`] and accepts or refuses it. See [`crate::file`] for
    /// the protocol, its flow control and its checks.
    ///
    /// # Errors
    ///
    /// [`FileError::Io`] when the file cannot be opened; [`FileError::Rtc`] when its data
    /// channel cannot be opened. Later failures come from [`FileTransfer::finish`].
    pub async fn send_file(&self, path: impl AsRef<Path>) -> Result<FileTransfer, FileError> {
        file::send(self, path.as_ref()).await
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_frames_carry_their_nonce() {
        let framed = ping_frame(frame::PING, 0x0102_0304_0506_0708);
        assert_eq!(framed[0], frame::PING);
        assert_eq!(ping_nonce(&framed[1..]), Some(0x0102_0304_0506_0708));
        assert_eq!(ping_nonce(&framed[2..]), None);
    }

    #[test]
    fn data_frames_start_with_the_data_byte() {
        assert_eq!(data_frame(b"hi"), vec![frame::DATA, b'h', b'i']);
    }
}
