//! Files between two programs through the library: one sends, the other receives.
//!
//! ```text
//! cargo run --example file_transfer -- recv ROOM BOOTSTRAP_MULTIADDR OUT_DIR
//! cargo run --example file_transfer -- send ROOM BOOTSTRAP_MULTIADDR FILE
//! ```
//!
//! The sender offers FILE to the first member whose channel opens and exits once the
//! receiver has confirmed its SHA-256; the receiver accepts one file into OUT_DIR and exits.
//! Both print their progress in percent. See examples/README.md.

use std::path::PathBuf;

use anyhow::Context as _;
use kadrtc::{FileTransfer, Node, RoomEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: file_transfer send|recv ROOM BOOTSTRAP_MULTIADDR FILE|OUT_DIR";
    let [mode, room_name, bootstrap, path] = &args[..] else {
        anyhow::bail!(usage);
    };
    let node = Node::builder()
        .listen("/ip4/127.0.0.1/tcp/0".parse()?)
        .bootstrap(bootstrap.parse().context("BOOTSTRAP_MULTIADDR")?)
        .build()
        .await?;
    let mut room = node.join(room_name).await?;
    println!("{mode}: joined {room_name} as {}", node.peer_id());

    let transfer = loop {
        let event = room.next_event().await.context("the room closed")?;
        match (mode.as_str(), event) {
            ("send", RoomEvent::ChannelOpen { peer, .. }) => {
                let channel = room.channel(peer).context("the channel closed again")?;
                break channel.send_file(path).await?;
            }
            ("recv", RoomEvent::IncomingFile(offer)) => {
                let target = PathBuf::from(path).join(offer.name());
                println!(
                    "recv: {} offers {} ({} bytes)",
                    offer.peer(),
                    offer.name(),
                    offer.size()
                );
                break offer.accept(target, false).await?;
            }
            ("send" | "recv", _) => continue,
            _ => anyhow::bail!(usage),
        }
    };
    let receipt = show_progress(transfer).await?;
    let sha256: String = receipt.sha256.iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "{mode}: done, {} ({} bytes, sha256 {sha256}) in {:.2} s",
        receipt.path.display(),
        receipt.size,
        receipt.elapsed.as_secs_f64()
    );
    room.leave().await;
    Ok(())
}

/// Prints the transfer's progress every tenth until it ends.
async fn show_progress(transfer: FileTransfer) -> anyhow::Result<kadrtc::FileReceipt> {
    let mut progress = transfer.progress();
    let printer = tokio::spawn(async move {
        let mut shown = 0;
        while progress.changed().await.is_ok() {
            let now = *progress.borrow();
            let percent = (now.bytes * 100).checked_div(now.total).unwrap_or(100);
            if percent >= shown + 10 {
                shown = percent - percent % 10;
                println!("{shown}%");
            }
        }
    });
    let receipt = transfer.finish().await;
    printer.abort();
    Ok(receipt?)
}
