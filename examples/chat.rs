//! A minimal chat on kadrtc's public API: join a room, print what members send, send each
//! stdin line to everyone.
//!
//! ```text
//! cargo run --example chat -- ROOM [BOOTSTRAP_MULTIADDR]
//! ```
//!
//! Start a node first (`kadrtc node --listen /ip4/127.0.0.1/tcp/4001`), then run two chats
//! with its printed address as BOOTSTRAP_MULTIADDR.

use anyhow::Context as _;
use kadrtc::{Node, RoomEvent};
use tokio::io::{AsyncBufReadExt as _, BufReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let room_name = args
        .next()
        .context("usage: chat ROOM [BOOTSTRAP_MULTIADDR]")?;
    let mut builder = Node::builder().listen("/ip4/127.0.0.1/tcp/0".parse()?);
    if let Some(bootstrap) = args.next() {
        builder = builder.bootstrap(bootstrap.parse().context("BOOTSTRAP_MULTIADDR")?);
    }
    let node = builder.build().await?;
    println!(
        "I am {}; listening on {:?}",
        node.peer_id(),
        node.listen_addrs()
    );

    let mut room = node.join(&room_name).await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => match line? {
                Some(line) => {
                    let reached = room.broadcast(line.as_bytes()).await;
                    println!("(sent to {reached} peer(s))");
                }
                None => break,
            },
            event = room.next_event() => match event {
                Some(RoomEvent::ChannelOpen {
                    peer,
                    elapsed,
                    candidate_pair,
                }) => {
                    let path = candidate_pair.map_or("path unknown".into(), |pair| {
                        format!("{}, {}/{}", if pair.is_relayed() { "relayed" } else { "direct" }, pair.local, pair.remote)
                    });
                    println!("* connected to {peer} after {} ms ({path})", elapsed.as_millis());
                }
                Some(RoomEvent::Message { peer, data }) => {
                    println!("<{peer}> {}", String::from_utf8_lossy(&data));
                }
                Some(RoomEvent::PeerLeft { peer }) => println!("* {peer} left"),
                Some(_) => {}
                None => break,
            },
        }
    }
    room.leave().await;
    Ok(())
}
