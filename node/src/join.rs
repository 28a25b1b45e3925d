//! `kadrtc join`: be in a room and chat; rooms made from nothing and `kadrtc://` links
//! ([`RoomLink`]).

use anyhow::Context as _;
use kadrtc::{Node, Passphrase, Room, RoomConfig, RoomEvent, RoomLink};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::output::Output;
use crate::{shutdown_signal, start_node, CommonArgs, JoinArgs, RoomArgs};

/// Default of `--max-peers`: the library's.
pub const DEFAULT_MAX_PEERS: u16 = kadrtc::DEFAULT_MAX_PEERS as u16;

/// Reads a room argument: a `kadrtc://` link or a plain room name.
pub fn parse_room(text: &str) -> anyhow::Result<RoomLink> {
    RoomLink::parse(text).with_context(|| format!("cannot read the room link {text:?}"))
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
    room: &RoomLink,
    room_args: &RoomArgs,
    common: &mut CommonArgs,
    out: &Output,
) -> anyhow::Result<(Node, Room)> {
    common.bootstrap.extend(room.bootstrap.iter().cloned());
    let node = start_node(common, None, None, Some(room_args)).await?;
    out.ready(&node);
    let config = room_config(room_args)?;
    let joined = node
        .join_with(&room.room, config)
        .await
        .with_context(|| format!("cannot join room {:?}", room.room))?;
    Ok((node, joined))
}

pub async fn run_join(mut args: JoinArgs, out: &Output) -> anyhow::Result<()> {
    let (target, created) = match &args.room {
        Some(text) => (parse_room(text)?, false),
        None => (RoomLink::random(Vec::new()), true),
    };
    let (node, mut room) = start_and_join(&target, &args.room_args, &mut args.common, out).await?;
    if created {
        // The other side needs a way into the network: our bootstrap nodes, or this node.
        let bootstrap = if args.common.bootstrap.is_empty() {
            node.listen_addrs()
        } else {
            args.common.bootstrap.clone()
        };
        let link = RoomLink {
            room: target.room.clone(),
            bootstrap,
        };
        out.room_created(&target.room, &link.to_string());
    }
    out.joined(
        &target.room,
        "type a line and press Enter to send it to everyone (/help for commands)",
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    // Created once, so that a signal arriving while the loop body runs is not lost.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut connected = node.dht().connected();
    let mut network_lost = false;
    let has_bootstrap = !args.common.bootstrap.is_empty();
    let mut watching_network = true;
    loop {
        tokio::select! {
            changed = connected.changed(), if watching_network => match changed {
                Ok(()) => {
                    // Only a joiner with bootstrap nodes was surely connected at start (it
                    // waits for one); a new room or mDNS alone starts with no peer at all.
                    let peers = *connected.borrow_and_update();
                    if has_bootstrap && (peers == 0) != network_lost {
                        network_lost = peers == 0;
                        out.network(peers);
                    }
                }
                Err(_) => watching_network = false,
            },
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
                    out.file_refused(offer.peer(), offer.name(), crate::files::NOT_RECEIVING);
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
