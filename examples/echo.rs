//! The smallest useful embedding: join a room and send every message back to its sender.
//!
//! ```text
//! cargo run --example echo -- ROOM BOOTSTRAP_MULTIADDR
//! ```
//!
//! It prints one line, `echo PEER_ID ready`, once it has joined; then talk to it with
//! `kadrtc join ROOM --bootstrap BOOTSTRAP_MULTIADDR`. See examples/README.md.

use anyhow::Context as _;
use kadrtc::{Node, RoomEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: echo ROOM BOOTSTRAP_MULTIADDR";
    let room_name = args.next().context(usage)?;
    let bootstrap = args.next().context(usage)?.parse().context(usage)?;

    let node = Node::builder()
        .listen("/ip4/127.0.0.1/tcp/0".parse()?)
        .bootstrap(bootstrap)
        .build()
        .await?;
    let mut room = node.join(&room_name).await?;
    println!("echo {} ready", node.peer_id());

    while let Some(event) = room.next_event().await {
        if let RoomEvent::Message { peer, data } = event {
            // A member that left meanwhile is no error worth stopping for.
            if let Err(error) = room.send(peer, &data).await {
                eprintln!("echo: {error}");
            }
        }
    }
    Ok(())
}
