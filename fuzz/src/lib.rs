//! Fixtures shared by the fuzz targets and the seed generator (`examples/seeds.rs`), so that the
//! committed seeds pass every check the targets make: the same clock, room, room key, peers and
//! channel binding.
//!
//! The SDP target's input format lives here too: [`split_sdp_input`].

#![forbid(unsafe_code)]

use std::sync::LazyLock;

use kadrtc_proto::{ChannelBinding, Fingerprint, Keypair, PeerId, RoomId, RoomKey, SessionId};

/// The clock of every check, milliseconds since the Unix epoch (2027-01-15): fixed, so that a
/// run's outcome depends on its input alone and the seeds never expire.
pub const NOW: u64 = 1_800_000_000_000;

/// The room key every envelope seed is sealed with and every decoded envelope is opened with.
pub const ROOM_KEY: [u8; 32] = [7; 32];

/// Separates the SDP from the candidate lines in an input of the `sdp` target.
pub const SDP_SEPARATOR: &str = "\n--\n";

/// The room of every envelope seed.
pub static ROOM: LazyLock<RoomId> = LazyLock::new(|| RoomId::from_bytes([3; 32]));

/// The session of the offer and answer seeds.
pub static SESSION: LazyLock<SessionId> = LazyLock::new(|| SessionId::from_bytes([5; 16]));

/// The offerer of the seeds (its ed25519 secret key is 32 bytes of 1).
pub static ALICE: LazyLock<Keypair> = LazyLock::new(|| keypair(1));

/// The answerer of the seeds (its ed25519 secret key is 32 bytes of 2).
pub static BOB: LazyLock<Keypair> = LazyLock::new(|| keypair(2));

/// The transcript the channel-binding seed proves and the `envelope` target verifies.
pub static BINDING: LazyLock<ChannelBinding> = LazyLock::new(|| {
    ChannelBinding::new(
        *SESSION,
        Fingerprint::from_bytes([0xA1; 32]),
        Fingerprint::from_bytes([0xB0; 32]),
    )
});

/// The peer id of a fixture keypair.
pub fn peer(keypair: &Keypair) -> PeerId {
    keypair.public().to_peer_id()
}

/// The room key, from [`ROOM_KEY`].
pub fn room_key() -> RoomKey {
    RoomKey::from_bytes(ROOM_KEY)
}

/// Splits an input of the `sdp` target: the SDP, then optionally [`SDP_SEPARATOR`] and one
/// candidate per `\n`-terminated line (a `\r` stays in the candidate, as a hostile peer could
/// send it).
pub fn split_sdp_input(text: &str) -> (&str, Vec<String>) {
    match text.split_once(SDP_SEPARATOR) {
        Some((sdp, candidates)) => (sdp, candidates.split('\n').map(str::to_owned).collect()),
        None => (text, Vec::new()),
    }
}

/// Joins an SDP and its candidates into an input of the `sdp` target.
pub fn join_sdp_input(sdp: &str, candidates: &[String]) -> String {
    let mut input = sdp.to_owned();
    if !candidates.is_empty() {
        input.push_str(SDP_SEPARATOR);
        input.push_str(&candidates.join("\n"));
    }
    input
}

fn keypair(byte: u8) -> Keypair {
    Keypair::ed25519_from_bytes([byte; 32]).expect("any 32 bytes are an ed25519 secret key")
}
