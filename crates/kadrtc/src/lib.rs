//! kadrtc: two or more programs that know the same room name find each other through a
//! libp2p Kademlia DHT and open direct WebRTC data channels, with no signaling server.
//!
//! - A [`Node`] is one libp2p identity on the kadrtc network (Kademlia `/kadrtc/kad/1.0.0`,
//!   gossipsub, identify, ping). Build it with [`Node::builder`], giving bootstrap peers.
//! - [`Node::join`] returns a [`Room`]: it announces presence (a provider record under the
//!   room's presence key plus a gossipsub announcement), discovers the other members, and
//!   negotiates a data channel with each through signed envelopes in Kademlia mailbox records
//!   and on the room topic. The peer with the smaller `PeerId` offers.
//! - [`Room::next_event`] yields [`RoomEvent`]s; [`Room::send`] and [`Room::broadcast`]
//!   write to open channels; [`Room::leave`] announces the departure and closes them.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use kadrtc::{Node, RoomEvent};
//!
//! let node = Node::builder()
//!     .bootstrap("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".parse()?)
//!     .build()
//!     .await?;
//! let mut room = node.join("lobby").await?;
//! while let Some(event) = room.next_event().await {
//!     match event {
//!         RoomEvent::ChannelOpen { peer, elapsed, .. } => {
//!             println!("channel to {peer} open after {elapsed:?}");
//!             room.send(peer, b"hello").await?;
//!         }
//!         RoomEvent::Message { peer, data } => {
//!             println!("{peer}: {}", String::from_utf8_lossy(&data));
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod channel;
pub mod file;
mod ice;
mod identity;
mod node;
mod room;

pub use channel::{Channel, PeerInfo, MAX_MESSAGE_SIZE};
pub use file::{FileError, FileReceipt, FileTransfer, IncomingFile, Progress};
pub use identity::{Identity, IdentityError};
pub use kadrtc_dht::{
    DEFAULT_BYTES_PER_SECOND, DEFAULT_MAX_ALLOCATIONS, DEFAULT_STUN_PORT, DEFAULT_TURN_PORT,
};
pub use kadrtc_proto::{BindingError, KeyError, NegotiationConfig};
pub use kadrtc_rtc::{CandidatePair, CandidateType, IceServer};
pub use libp2p::{Multiaddr, PeerId};
pub use node::{JoinError, Node, NodeBuilder, NodeError};
pub use room::{
    Discovery, Passphrase, PingError, Room, RoomConfig, RoomError, RoomEvent, SendError,
    DEFAULT_DISCOVERY_INITIAL, DEFAULT_DISCOVERY_MAX, DEFAULT_ENVELOPE_TTL, DEFAULT_MAX_PEERS,
    EVENT_CHANNEL_CAPACITY, PEER_TIMEOUT, PING_INTERVAL,
};
