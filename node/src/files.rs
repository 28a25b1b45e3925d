//! `kadrtc send` and `kadrtc recv`: files over data channels of their own (see
//! `kadrtc::file`), with a progress bar on a terminal and progress events with `--json`.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt as _};
use futures::Future;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kadrtc::{FileError, FileReceipt, FileTransfer, PeerId, Room, RoomEvent};
use serde_json::json;

use crate::join::{parse_room, start_and_join};
use crate::output::Output;
use crate::{shutdown_signal, RecvArgs, SendArgs};

/// Why `kadrtc join` refuses files; `kadrtc send` then tries another peer.
pub const NOT_RECEIVING: &str = "not receiving files (the receiver runs kadrtc recv)";

/// How often `--json` prints a progress event per transfer.
const JSON_PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// A receiving transfer, refreshing its view until it ends.
type Finishing = Pin<Box<dyn Future<Output = (View, Result<FileReceipt, FileError>)>>>;

pub async fn run_send(mut args: SendArgs, out: &Output) -> anyhow::Result<()> {
    // Fail before joining when a file cannot be read.
    for path in &args.files {
        let metadata =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        anyhow::ensure!(metadata.is_file(), "{} is not a file", path.display());
    }
    let target = parse_room(&args.room)?;
    let (_node, mut room) = start_and_join(&target, &args.room_args, &mut args.common, out).await?;
    out.joined(
        &target.room,
        "waiting for a peer that runs `kadrtc recv` in this room…",
    );
    let progress = Progress::new(out);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut refused: Vec<PeerId> = Vec::new();
    let wanted = |peer: &PeerId, refused: &[PeerId]| {
        args.to.is_none_or(|to| to == *peer) && !refused.contains(peer)
    };
    let result = loop {
        // A member whose channel opened while another was refusing is tried first.
        let connected = room
            .connected_peers()
            .into_iter()
            .find(|peer| wanted(peer, &refused));
        let peer = if let Some(peer) = connected {
            peer
        } else {
            tokio::select! {
                event = room.next_event() => match event {
                    Some(RoomEvent::ChannelOpen { peer, elapsed, candidate_pair })
                        if wanted(&peer, &refused) =>
                    {
                        out.room_event(&RoomEvent::ChannelOpen { peer, elapsed, candidate_pair });
                        peer
                    }
                    Some(event) => {
                        show_or_refuse(out, event).await;
                        continue;
                    }
                    None => break Err(anyhow::anyhow!("the room closed")),
                },
                result = &mut shutdown => {
                    result?;
                    break Err(anyhow::anyhow!("interrupted before any file was sent"));
                }
            }
        };
        match send_all(&mut room, peer, &args.files, &progress, &mut shutdown).await {
            Ok(()) => break Ok(()),
            Err(SendFailure::NotReceiving) if args.to.is_none() => {
                out.note(&format!(
                    "{peer} does not receive files; waiting for another peer"
                ));
                refused.push(peer);
            }
            Err(SendFailure::NotReceiving) => {
                break Err(anyhow::anyhow!(
                    "{peer} does not receive files (it is not running kadrtc recv)"
                ))
            }
            Err(SendFailure::Other(error)) => break Err(error),
        }
    };
    room.leave().await;
    result
}

/// Shows a room event; a file offered to a sender is refused as `kadrtc join` does, so that
/// the other side tries another member.
async fn show_or_refuse(out: &Output, event: RoomEvent) {
    match event {
        RoomEvent::IncomingFile(offer) => offer.reject(NOT_RECEIVING).await,
        event => out.room_event(&event),
    }
}

enum SendFailure {
    NotReceiving,
    Other(anyhow::Error),
}

/// Sends every file to `peer`, one after the other, while still reading the room's events.
async fn send_all(
    room: &mut Room,
    peer: PeerId,
    files: &[PathBuf],
    progress: &Progress<'_>,
    shutdown: &mut Pin<&mut impl Future<Output = anyhow::Result<()>>>,
) -> Result<(), SendFailure> {
    for path in files {
        let channel = room
            .channel(peer)
            .ok_or_else(|| SendFailure::Other(anyhow::anyhow!("the channel to {peer} closed")))?;
        let transfer = channel
            .send_file(path)
            .await
            .with_context(|| format!("cannot send {}", path.display()))
            .map_err(SendFailure::Other)?;
        let name = transfer.name().to_string();
        let view = progress.start("send", &transfer);
        let finishing = transfer.finish();
        tokio::pin!(finishing);
        let outcome = loop {
            tokio::select! {
                outcome = &mut finishing => break outcome,
                () = view.tick() => {}
                event = room.next_event() => match event {
                    Some(event) => show_or_refuse(progress.out, event).await,
                    None => return Err(SendFailure::Other(anyhow::anyhow!("the room closed"))),
                },
                result = shutdown.as_mut() => {
                    view.abandon();
                    result.map_err(SendFailure::Other)?;
                    return Err(SendFailure::Other(anyhow::anyhow!(
                        "interrupted while sending {name}; the receiver keeps only a .part file"
                    )));
                }
            }
        };
        match outcome {
            Ok(receipt) => view.done("file_sent", &receipt),
            Err(FileError::Refused(reason)) if reason == NOT_RECEIVING => {
                view.abandon();
                return Err(SendFailure::NotReceiving);
            }
            Err(error) => {
                view.abandon();
                return Err(SendFailure::Other(
                    anyhow::Error::new(error).context(format!("sending {name} to {peer} failed")),
                ));
            }
        }
    }
    Ok(())
}

pub async fn run_recv(mut args: RecvArgs, out: &Output) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the output directory {}", args.out.display()))?;
    let target = parse_room(&args.room)?;
    let (_node, mut room) = start_and_join(&target, &args.room_args, &mut args.common, out).await?;
    let next = format!(
        "receiving files into {}; Ctrl-C to stop",
        args.out.display()
    );
    out.joined(&target.room, &next);
    let progress = Progress::new(out);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut running: FuturesUnordered<Finishing> = FuturesUnordered::new();
    let mut senders: Vec<PeerId> = Vec::new();
    let mut failures = 0usize;
    loop {
        tokio::select! {
            event = room.next_event() => match event {
                Some(RoomEvent::IncomingFile(offer)) => {
                    let peer = offer.peer();
                    let name = offer.name().to_string();
                    let path = args.out.join(&name);
                    progress.offered(peer, &name, offer.size(), &path);
                    match offer.accept(path, args.overwrite).await {
                        Ok(transfer) => {
                            senders.retain(|p| *p != peer);
                            senders.push(peer);
                            let view = progress.start("recv", &transfer);
                            running.push(Box::pin(async move {
                                let outcome = view.until_finished(transfer).await;
                                (view, outcome)
                            }));
                        }
                        Err(error) => {
                            failures += 1;
                            // With --once, this sender's departure still ends the run.
                            senders.retain(|p| *p != peer);
                            senders.push(peer);
                            progress.out.error(&format!("refused {name} from {peer}: {error}"));
                        }
                    }
                }
                Some(RoomEvent::PeerLeft { peer }) => {
                    progress.out.room_event(&RoomEvent::PeerLeft { peer });
                    if args.once && running.is_empty() && senders.contains(&peer) {
                        break;
                    }
                }
                Some(event) => progress.out.room_event(&event),
                None => break,
            },
            Some((view, outcome)) = running.next() => {
                match outcome {
                    Ok(receipt) => view.done("file_received", &receipt),
                    Err(error) => {
                        failures += 1;
                        view.abandon();
                        progress.out.error(&format!(
                            "receiving {} from {} failed: {error}",
                            view.name, view.peer
                        ));
                    }
                }
                // --once: the transfer ends when its sender has left and nothing runs.
                let sender_gone = senders.iter().all(|p| !room.connected_peers().contains(p));
                if args.once && running.is_empty() && sender_gone {
                    break;
                }
            }
            result = &mut shutdown => {
                result?;
                break;
            }
        }
    }
    room.leave().await;
    anyhow::ensure!(failures == 0, "{failures} file(s) not received");
    Ok(())
}

/// How transfers are shown: bars on a terminal, events with `--json`, lines otherwise.
struct Progress<'a> {
    out: &'a Output,
    bars: Option<MultiProgress>,
}

/// One transfer on screen.
struct View {
    out: Output,
    direction: &'static str,
    name: String,
    peer: PeerId,
    bar: Option<ProgressBar>,
    progress: tokio::sync::watch::Receiver<kadrtc::Progress>,
    started: Instant,
    last_json: std::cell::Cell<Instant>,
}

impl<'a> Progress<'a> {
    fn new(out: &'a Output) -> Self {
        let bars = (!out.is_json() && std::io::stdout().is_terminal()).then(MultiProgress::new);
        Self { out, bars }
    }

    fn offered(&self, peer: PeerId, name: &str, size: u64, path: &Path) {
        if self.out.is_json() {
            self.out.json(json!({
                "event": "file_offered",
                "peer_id": peer.to_string(),
                "file": name,
                "size": size,
                "path": path.display().to_string(),
            }));
        } else {
            self.out.note(&format!(
                "{peer} offers {name} ({}) → {}",
                human_bytes(size),
                path.display()
            ));
        }
    }

    fn start(&self, direction: &'static str, transfer: &FileTransfer) -> View {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(transfer.size()));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(format!("{direction} {}", transfer.name()));
            bar
        });
        if !self.out.is_json() && bar.is_none() {
            let verb = if direction == "send" {
                "sending"
            } else {
                "receiving"
            };
            self.out.note(&format!(
                "{verb} {} ({})…",
                transfer.name(),
                human_bytes(transfer.size())
            ));
        }
        View {
            out: self.out.clone(),
            direction,
            name: transfer.name().to_string(),
            peer: transfer.peer(),
            bar,
            progress: transfer.progress(),
            started: Instant::now(),
            last_json: std::cell::Cell::new(Instant::now()),
        }
    }
}

impl View {
    /// The transfer's outcome, refreshing this view until then.
    async fn until_finished(&self, transfer: FileTransfer) -> Result<FileReceipt, FileError> {
        let finishing = transfer.finish();
        tokio::pin!(finishing);
        loop {
            tokio::select! {
                outcome = &mut finishing => return outcome,
                () = self.tick() => {}
            }
        }
    }

    /// Resolves after the next refresh interval, having refreshed the view.
    async fn tick(&self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.refresh();
    }

    fn refresh(&self) {
        let now = *self.progress.borrow();
        if let Some(bar) = &self.bar {
            bar.set_position(now.bytes);
        }
        if self.out.is_json() && self.last_json.get().elapsed() >= JSON_PROGRESS_INTERVAL {
            self.last_json.set(Instant::now());
            let elapsed = self.started.elapsed().as_secs_f64();
            self.out.json(json!({
                "event": "progress",
                "direction": self.direction,
                "peer_id": self.peer.to_string(),
                "file": self.name,
                "bytes": now.bytes,
                "total": now.total,
                "bytes_per_second": rate(now.bytes, elapsed),
            }));
        }
    }

    fn done(self, event: &str, receipt: &FileReceipt) {
        let seconds = receipt.elapsed.as_secs_f64();
        let sha256 = hex(&receipt.sha256);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.out.is_json() {
            self.out.json(json!({
                "event": event,
                "peer_id": receipt.peer.to_string(),
                "file": receipt.name,
                "path": receipt.path.display().to_string(),
                "bytes": receipt.size,
                "sha256": sha256,
                "elapsed_ms": receipt.elapsed.as_millis(),
                "bytes_per_second": rate(receipt.size, seconds),
            }));
        } else {
            let (verb, checked) = if event == "file_sent" {
                ("sent", "confirmed by the receiver")
            } else {
                ("received", "checked")
            };
            self.out.note(&format!(
                "{verb} {} ({}) in {seconds:.2} s, {}/s, sha256 {sha256} ({checked})",
                receipt.name,
                human_bytes(receipt.size),
                human_bytes(rate(receipt.size, seconds) as u64),
            ));
        }
    }

    fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds
    } else {
        0.0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn human_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
