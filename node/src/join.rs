//! `kadrtc join`: be in a room and chat; rooms made from nothing and `kadrtc://` links.

use anyhow::Context as _;
use kadrtc::{Multiaddr, Node, Passphrase, Room, RoomConfig, RoomEvent};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::output::Output;
use crate::{shutdown_signal, start_node, CommonArgs, JoinArgs, RoomArgs};

/// Default of `--max-peers`.
pub const DEFAULT_MAX_PEERS: u16 = 16;

/// Scheme of room links.
const URI_SCHEME: &str = "kadrtc://";

/// Bytes of randomness in a room made from nothing (128 bits: a room name is its secret).
const RANDOM_ROOM_BYTES: usize = 16;

/// Characters kept as they are in a link's room name and bootstrap values.
const LINK_SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// A room as given on the command line: a name, or a `kadrtc://` link with bootstrap
/// addresses.
#[derive(Debug, PartialEq)]
pub struct RoomTarget {
    pub name: String,
    pub bootstrap: Vec<Multiaddr>,
}

/// Parses a room argument: `kadrtc://ROOM?bootstrap=MULTIADDR&…` (percent-encoded), or a
/// plain room name.
pub fn parse_room(text: &str) -> anyhow::Result<RoomTarget> {
    let Some(rest) = text.strip_prefix(URI_SCHEME) else {
        return Ok(RoomTarget {
            name: text.to_string(),
            bootstrap: Vec::new(),
        });
    };
    let (room, query) = rest.split_once('?').unwrap_or((rest, ""));
    let name = percent_decode_str(room.trim_end_matches('/'))
        .decode_utf8()
        .with_context(|| format!("the room in link {text:?} is not UTF-8"))?
        .into_owned();
    anyhow::ensure!(!name.is_empty(), "link {text:?} names no room");
    let mut bootstrap = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value)
            .decode_utf8()
            .with_context(|| format!("a value in link {text:?} is not UTF-8"))?;
        match key {
            "bootstrap" => bootstrap.push(value.parse().with_context(|| {
                format!("link {text:?} has an invalid bootstrap address {value:?}")
            })?),
            other => tracing::debug!(key = other, "unknown link parameter ignored"),
        }
    }
    Ok(RoomTarget { name, bootstrap })
}

/// The `kadrtc://` link for `room` with these bootstrap addresses.
pub fn room_link(room: &str, bootstrap: &[Multiaddr]) -> String {
    let mut link = format!("{URI_SCHEME}{}", utf8_percent_encode(room, LINK_SAFE));
    for (i, addr) in bootstrap.iter().enumerate() {
        link.push(if i == 0 { '?' } else { '&' });
        link.push_str("bootstrap=");
        link.extend(utf8_percent_encode(&addr.to_string(), LINK_SAFE));
    }
    link
}

/// A fresh random room name: 32 hex digits.
fn random_room() -> String {
    let bytes: [u8; RANDOM_ROOM_BYTES] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The room settings from the command line.
pub fn room_config(args: &RoomArgs) -> anyhow::Result<RoomConfig> {
    let mut config = RoomConfig {
        passphrase: passphrase(args)?,
        max_peers: usize::from(args.max_peers),
        ..RoomConfig::default()
    };
    if !args.allow.is_empty() {
        config = config.with_allow(args.allow.iter().copied());
    }
    Ok(config)
}

/// Starts a node for `room` (adding the link's bootstrap addresses) and joins the room.
pub async fn start_and_join(
    room: &RoomTarget,
    room_args: &RoomArgs,
    common: &mut CommonArgs,
    out: &Output,
) -> anyhow::Result<(Node, Room)> {
    common.bootstrap.extend(room.bootstrap.iter().cloned());
    let node = start_node(common, None, None, Some(room_args)).await?;
    out.ready(&node);
    let config = room_config(room_args)?;
    let joined = node
        .join_with(&room.name, config)
        .await
        .with_context(|| format!("cannot join room {:?}", room.name))?;
    Ok((node, joined))
}

pub async fn run_join(mut args: JoinArgs, out: &Output) -> anyhow::Result<()> {
    let (target, created) = match &args.room {
        Some(text) => (parse_room(text)?, false),
        None => (
            RoomTarget {
                name: random_room(),
                bootstrap: Vec::new(),
            },
            true,
        ),
    };
    let (node, mut room) = start_and_join(&target, &args.room_args, &mut args.common, out).await?;
    if created {
        // The other side needs a way into the network: our bootstrap nodes, or this node.
        let bootstrap = if args.common.bootstrap.is_empty() {
            node.listen_addrs()
        } else {
            args.common.bootstrap.clone()
        };
        out.room_created(&target.name, &room_link(&target.name, &bootstrap));
    }
    out.joined(&target.name);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    // Created once, so that a signal arriving while the loop body runs is not lost.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => on_line(&room, &line, out).await,
                Ok(None) => stdin_open = false,
                Err(error) => {
                    tracing::warn!(%error, "cannot read stdin");
                    stdin_open = false;
                }
            },
            event = room.next_event() => match event {
                Some(RoomEvent::IncomingFile(offer)) => {
                    out.note(&format!("{} offered {}; refused (receive files with kadrtc recv)", offer.peer(), offer.name()));
                    offer.reject(crate::files::NOT_RECEIVING).await;
                }
                Some(event) => out.room_event(&event),
                None => break,
            },
            result = &mut shutdown => {
                result?;
                break;
            }
        }
        if !stdin_open {
            break;
        }
    }
    room.leave().await;
    Ok(())
}

/// A line typed on stdin: a command (`/peers`, `/ping`, `/help`), or a message for every
/// member (a line starting with `//` sends it with one `/` less).
async fn on_line(room: &Room, line: &str, out: &Output) {
    let message = match line.strip_prefix('/') {
        Some(rest) if rest.starts_with('/') => rest,
        Some(command) => {
            match command.trim() {
                "peers" => out.peers(&room.peers()),
                "ping" => {
                    let peers = room.connected_peers();
                    if peers.is_empty() {
                        out.error("no open channel to ping");
                    }
                    let pings = peers.iter().map(|peer| room.ping(*peer));
                    for (peer, result) in peers.iter().zip(futures::future::join_all(pings).await) {
                        match result {
                            Ok(rtt) => out.ping(*peer, rtt),
                            Err(error) => out.error(&error.to_string()),
                        }
                    }
                }
                "help" => out.note(JOIN_COMMANDS),
                other => out.error(&format!("unknown command /{other}; {JOIN_COMMANDS}")),
            }
            return;
        }
        None => line,
    };
    if room.broadcast(message.as_bytes()).await == 0 {
        out.error("no open channel yet; message not sent");
    }
}

/// What `/help` says.
const JOIN_COMMANDS: &str =
    "commands: /peers lists the members with an open channel, /ping measures round-trip times, /help; start a message with // to send a line beginning with /";

/// The passphrase from --passphrase / KADRTC_PASSPHRASE, or the first line of
/// --passphrase-file (whose text is wiped from memory once read).
fn passphrase(args: &RoomArgs) -> anyhow::Result<Option<Passphrase>> {
    if let Some(path) = &args.passphrase_file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or_default();
        anyhow::ensure!(
            !line.is_empty(),
            "the passphrase file {} is empty",
            path.display()
        );
        return Ok(Some(Passphrase::new(line)));
    }
    Ok(args.passphrase.clone())
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
        for name in ["lobby", "a room/with ?&= and ünïcode", &random_room()] {
            let link = room_link(name, &bootstrap);
            assert!(link.starts_with("kadrtc://"), "{link}");
            assert_eq!(link.matches('?').count(), 1, "{link}");
            let parsed = parse_room(&link).unwrap();
            assert_eq!(parsed.name, name);
            assert_eq!(parsed.bootstrap, bootstrap);
        }
    }

    #[test]
    fn plain_names_are_rooms_and_bad_links_are_errors() {
        assert_eq!(parse_room("lobby").unwrap().name, "lobby");
        assert!(parse_room("kadrtc://").is_err());
        let bad = parse_room("kadrtc://room?bootstrap=not-a-multiaddr").unwrap_err();
        assert!(
            format!("{bad:#}").contains("invalid bootstrap address"),
            "{bad:#}"
        );
    }

    #[test]
    fn random_rooms_are_128_bits_of_hex_and_differ() {
        let (a, b) = (random_room(), random_room());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
