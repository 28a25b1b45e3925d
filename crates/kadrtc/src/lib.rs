//! kadrtc: two or more programs that know the same room name find each other through a
//! libp2p Kademlia DHT and open direct WebRTC data channels, with no signaling server.
//!
//! # Quick start
//!
//! Build a [`Node`] (one libp2p identity on the kadrtc network), join a [`Room`] by name, and
//! read its events. Every member that joins the same name gets a data channel to every other
//! (a full mesh).
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
//!
//! The repository's `examples/` has three complete programs (`echo`, `chat`,
//! `file_transfer`) and how to run them against a local testnet.
//!
//! # How it works
//!
//! - A [`Node`] speaks Kademlia (`/kadrtc/kad/1.0.0`), gossipsub, identify and ping over TCP
//!   with noise and yamux. Build it with [`Node::builder`], giving bootstrap peers
//!   ([`NodeBuilder::bootstrap`]) or, on a LAN with none, multicast DNS
//!   ([`NodeBuilder::mdns`]). Nodes you reach also tell you their STUN and TURN servers.
//! - [`Node::join`] announces presence (a provider record under the room's presence key and a
//!   gossipsub announcement), discovers the other members, and negotiates a data channel with
//!   each through signed, sealed envelopes in Kademlia mailbox records and on the room topic.
//!   The member with the smaller `PeerId` offers. Once the channel opens, each side proves
//!   over it that it holds the key its envelopes named, and only then is the channel
//!   reported open.
//! - Without a DHT, [`manual::ManualConnection`] sets up one data channel from two lines a
//!   person carries (copy-paste signaling, in the browser's `RTCSessionDescriptionInit` shape).
//!
//! # The event model
//!
//! A room is driven by a task of its own; you read what happens with [`Room::next_event`] (or
//! the room as a `futures::Stream`). Read events promptly: the queue holds
//! [`EVENT_CHANNEL_CAPACITY`] and the room waits while it is full.
//!
//! | event | meaning |
//! |---|---|
//! | [`RoomEvent::PeerDiscovered`] | a member became known (through the DHT or the topic) |
//! | [`RoomEvent::ChannelOpen`] | its channel is open and its identity proven; the candidate pair says direct or relayed |
//! | [`RoomEvent::Message`] | a message arrived on a channel |
//! | [`RoomEvent::IncomingFile`] | a member offers a file: accept or refuse it |
//! | [`RoomEvent::PeerLeft`] | a member left, its channel closed, or it was silent for [`PEER_TIMEOUT`] |
//! | [`RoomEvent::Error`] | something failed that the room goes on after ([`RoomError`]) |
//!
//! A pair whose channel closes negotiates again by itself; you see `PeerLeft`, then a new
//! `ChannelOpen` if the member comes back.
//!
//! # Rooms
//!
//! - **Sending**: [`Room::send`] to one member, [`Room::broadcast`] to all, or keep a
//!   [`Channel`] from [`Room::channel`]. Messages are at most [`MAX_MESSAGE_SIZE`] bytes,
//!   reliable and ordered; sends wait while the channel's buffer is full (backpressure).
//! - **Who is there**: [`Room::peers`] lists members with an open channel, their candidate
//!   pair and round-trip time (every channel is pinged each [`PING_INTERVAL`]);
//!   [`Room::ping`] measures one now.
//! - **Size**: a room tracks at most [`RoomConfig::max_peers`] members
//!   ([`DEFAULT_MAX_PEERS`], 16). Past it, each further member is reported once as
//!   [`RoomError::RoomFull`] and ignored until a slot frees.
//! - **Privacy**: a [`RoomConfig::passphrase`] seals signaling under a key derived with
//!   argon2id; [`RoomConfig::allow`] admits only listed peers.
//! - **Rooms from nothing**: [`RoomLink::random`] makes a room with a random name; its
//!   `kadrtc://` form ([`RoomLink`]'s `Display`, read back with [`RoomLink::parse`]) carries
//!   the room and bootstrap addresses to the other side in one line.
//! - **Leaving**: [`Room::leave`] says goodbye on every channel (members report `PeerLeft`
//!   at once), announces the departure, withdraws presence and closes the channels once what
//!   was sent on them has arrived (a message sent just before, a file's last reply), in at
//!   most [`LEAVE_LIMIT`]; dropping the room does the same in the background.
//!
//! # Files
//!
//! [`Channel::send_file`] sends a file on a data channel of its own (one file at a time per
//! channel, used again for the next), so messages keep flowing beside it. The receiver gets [`RoomEvent::IncomingFile`] with the name (checked to be a
//! plain file name) and size, and calls [`IncomingFile::accept`] with a path (refusing to
//! overwrite unless asked) or [`IncomingFile::reject`]. Both sides hold a [`FileTransfer`]
//! whose [`FileTransfer::progress`] reports bytes and whose [`FileTransfer::finish`] returns
//! a [`FileReceipt`] only once the receiver has checked the size and SHA-256. Memory stays
//! bounded on both sides (see [`mod@file`] for the protocol and its flow-control window); a
//! transfer that fails leaves the receiver's bytes in `NAME.part`, never under the final name.
//!
//! ```no_run
//! # async fn run(room: &mut kadrtc::Room, peer: kadrtc::PeerId) -> anyhow::Result<()> {
//! // Sender
//! let channel = room.channel(peer).expect("open channel");
//! let receipt = channel.send_file("photo.jpg").await?.finish().await?;
//! println!("{} bytes confirmed in {:?}", receipt.size, receipt.elapsed);
//!
//! // Receiver
//! if let Some(kadrtc::RoomEvent::IncomingFile(offer)) = room.next_event().await {
//!     let path = std::path::Path::new("downloads").join(offer.name());
//!     let receipt = offer.accept(path, false).await?.finish().await?;
//!     println!("saved {}", receipt.path.display());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Every fallible call returns a typed error that says what to do: [`NodeError`] (cannot
//! start: a port in use, a bootstrap address without `/p2p/`, …), [`JoinError`] (invalid room
//! name, already joined, unusable passphrase), [`SendError`], [`PingError`] and
//! [`FileError`] (refused, exists, the peer went away with the partial file's path, a size or
//! SHA-256 mismatch, …). Problems inside a room that do not end it arrive as
//! [`RoomEvent::Error`]: a wrong passphrase, no path through the NATs
//! ([`RoomError::NoPath`], which says whether a relay was known), a full room. Nothing that
//! arrives from the network panics: malformed, forged, replayed or oversized input is
//! refused and logged.
//!
//! # Configuration
//!
//! - [`NodeBuilder`]: identity ([`Identity`], persist it to keep the `PeerId`), listen and
//!   bootstrap addresses, mDNS, whether to serve the DHT, a STUN responder and a TURN relay to
//!   volunteer, extra ICE servers, relay-only connections.
//! - [`RoomConfig`]: passphrase, admission list, maximum peers, negotiation timers, discovery
//!   pace, envelope lifetime, and whether signaling also goes on the gossipsub topic.
//! - Logs go through `tracing`; nothing is printed.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod channel;
pub mod file;
mod ice;
mod identity;
mod link;
pub mod manual;
mod node;
mod room;

pub use channel::{Channel, PeerInfo, MAX_MESSAGE_SIZE};
pub use file::{FileError, FileReceipt, FileTransfer, IncomingFile, Progress};
pub use identity::{Identity, IdentityError};
pub use kadrtc_dht::{
    Traffic, DEFAULT_BYTES_PER_SECOND, DEFAULT_MAX_ALLOCATIONS, DEFAULT_STUN_PORT,
    DEFAULT_TURN_PORT,
};
pub use kadrtc_proto::{BindingError, KeyError, NegotiationConfig};
pub use kadrtc_rtc::{CandidatePair, CandidateType, IceServer};
pub use libp2p::{Multiaddr, PeerId};
pub use link::{LinkError, RoomLink, LINK_SCHEME, RANDOM_ROOM_BYTES};
pub use node::{JoinError, Node, NodeBuilder, NodeError};
pub use room::{
    Discovery, Passphrase, PingError, Room, RoomConfig, RoomError, RoomEvent, SendError,
    DEFAULT_DISCOVERY_IDLE_MAX, DEFAULT_DISCOVERY_INITIAL, DEFAULT_DISCOVERY_MAX,
    DEFAULT_ENVELOPE_TTL, DEFAULT_MAX_PEERS, EVENT_CHANNEL_CAPACITY, LEAVE_LIMIT, PEER_TIMEOUT,
    PING_INTERVAL,
};
