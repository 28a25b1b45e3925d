//! Files between room members, on data channels of their own ([`FILE_LABEL`]), one file at
//! a time per channel.
//!
//! # Protocol
//!
//! Every message on a file channel starts with a kind byte: `0` for a control message
//! (bincode 2 through serde, at most [`MAX_CONTROL_SIZE`] bytes), `1` for file bytes (at most
//! [`CHUNK_SIZE`]).
//!
//! 1. The sender opens the channel, or takes one it used before, and sends
//!    `Offer { name, size }`.
//! 2. The receiver answers `Accept`, or `Reject { reason }`.
//! 3. The sender sends the file's bytes in order. It never has more than [`WINDOW`] bytes
//!    beyond what the receiver reported written (`Received { bytes }`, every [`ACK_EVERY`]
//!    bytes): the receiver's memory stays bounded however slow its disk, and the data channel's
//!    own send buffer bounds the sender's.
//! 4. The sender sends `Done { sha256 }`. The receiver checks the byte count and SHA-256
//!    (FIPS 180-4) of what it wrote, gives `NAME.part` the name `NAME` and answers
//!    `Confirmed`, or `Failed { reason }` and keeps `NAME.part`.
//! 5. After `Reject`, `Confirmed` or `Failed`, nothing is in flight: the channel stays open
//!    for the sender's next `Offer` (see [`OFFER_TIMEOUT`]). A transfer that ends any other
//!    way closes it.
//!
//! The receiver's partial file is created new: `NAME.part`, or `NAME.1.part`, `NAME.2.part`, …
//! when that exists (another transfer of the same name, or the bytes of a failed one), so no
//! two transfers ever write one file. Without overwriting, the final name is given with a
//! hard link, which fails when `NAME` exists: a file that appeared meanwhile is never
//! replaced, and that transfer fails instead.
//!
//! Either side gives up after [`STALL_TIMEOUT`] without a message from the other, and a
//! closed channel before `Confirmed` is [`FileError::PeerGone`]: a transfer is never reported
//! complete unless the receiver confirmed it, and a partial file keeps its `.part` name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use kadrtc_rtc::{RtcError, SideChannel};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::channel::Channel;
use crate::room::RoomEvent;

/// Label of file channels.
pub const FILE_LABEL: &str = "kadrtc-file";
/// File bytes per message: the data channel's 64 KiB less the kind byte.
pub const CHUNK_SIZE: usize = kadrtc_rtc::MAX_MESSAGE_SIZE - 1;
/// Most bytes the sender has sent beyond what the receiver reported written.
pub const WINDOW: u64 = 4 * 1024 * 1024;
/// The receiver reports what it has written every this many bytes.
pub const ACK_EVERY: u64 = 1024 * 1024;
/// Longest control message, in bytes.
pub const MAX_CONTROL_SIZE: usize = 4096;
/// Longest file name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;
/// How long either side waits for the other's next message.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the receiver waits for the sender's first `Offer` once the channel is open.
///
/// A channel carries one file after another: once a transfer ended with the receiver's last
/// message (`Reject`, `Confirmed` or `Failed`), the sender keeps it
/// ([`kadrtc_rtc::SideChannel::release`]) for its next file and the receiver waits for the
/// next `Offer` on it, for as long as the channel is open.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the sender waits for the receiver to accept or refuse.
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(120);

const KIND_CONTROL: u8 = 0;
const KIND_DATA: u8 = 1;

#[derive(Debug, Serialize, Deserialize)]
enum Control {
    Offer { name: String, size: u64 },
    Accept,
    Reject { reason: String },
    Done { sha256: [u8; 32] },
    Received { bytes: u64 },
    Confirmed,
    Failed { reason: String },
}

/// How far a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes sent (sender) or written (receiver) so far.
    pub bytes: u64,
    /// The file's size in bytes.
    pub total: u64,
}

/// A finished transfer: the receiver confirmed the size and SHA-256.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FileReceipt {
    /// The other member.
    pub peer: PeerId,
    /// The file's name as sent.
    pub name: String,
    /// Where the file is: the sender's file, or where the receiver wrote it.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// From the start of the transfer (the offer) to the confirmation.
    pub elapsed: Duration,
}

/// Why a file transfer failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FileError {
    /// Reading or writing a local file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file channel could not be opened or written to.
    #[error("the file's data channel failed")]
    Rtc(#[source] RtcError),
    /// The receiver refused the file.
    #[error("the receiver refused the file: {0}")]
    Refused(String),
    /// The destination exists and overwriting was not asked for.
    #[error("{} exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    /// The name the sender gave is not a plain file name.
    #[error("invalid file name {0:?}: it must be 1 to 255 bytes with no path separator or control character, and not . or ..")]
    InvalidName(String),
    /// The other side went away (its channel closed) before the transfer was confirmed.
    #[error("the peer went away after {bytes} of {size} bytes{}", partial_text(.partial))]
    PeerGone {
        /// Bytes sent or written when it happened.
        bytes: u64,
        /// The file's size.
        size: u64,
        /// The receiver's partial file, kept.
        partial: Option<PathBuf>,
    },
    /// The other side sent nothing for [`STALL_TIMEOUT`] (or did not decide within
    /// [`DECISION_TIMEOUT`]).
    #[error("the peer stopped responding")]
    Stalled,
    /// The received bytes do not match the sender's size or SHA-256; the partial file is kept.
    #[error("the received file does not match what was sent ({reason}); kept as {}", partial.display())]
    Mismatch {
        /// What did not match.
        reason: String,
        /// The partial file.
        partial: PathBuf,
    },
    /// The receiver reported a failure.
    #[error("the receiver failed: {0}")]
    Failed(String),
    /// The other side broke the protocol (a malformed or unexpected message).
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn partial_text(partial: &Option<PathBuf>) -> String {
    match partial {
        Some(path) => format!("; partial file kept as {}", path.display()),
        None => String::new(),
    }
}

/// A transfer under way, either direction: its progress, and its outcome from
/// [`FileTransfer::finish`]. Dropping it cancels the transfer.
#[derive(Debug)]
pub struct FileTransfer {
    name: String,
    size: u64,
    peer: PeerId,
    progress: watch::Receiver<Progress>,
    task: Option<JoinHandle<Result<FileReceipt, FileError>>>,
}

impl FileTransfer {
    /// The file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The other member.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Progress updates; `changed()` wakes at most once per chunk.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits for the end of the transfer.
    ///
    /// # Errors
    ///
    /// Any [`FileError`]; the transfer is complete only on `Ok`.
    pub async fn finish(mut self) -> Result<FileReceipt, FileError> {
        let Some(task) = self.task.take() else {
            return Err(FileError::Protocol("transfer already finished".into()));
        };
        task.await
            .unwrap_or_else(|join| Err(FileError::Protocol(format!("transfer task: {join}"))))
    }
}

impl Drop for FileTransfer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A file a member offers, from [`RoomEvent::IncomingFile`]. Accept it with
/// [`IncomingFile::accept`] or refuse it with [`IncomingFile::reject`]; dropping it refuses
/// it.
pub struct IncomingFile {
    peer: PeerId,
    name: String,
    size: u64,
    side: Option<SideChannel>,
    /// Where the channel's next offer goes.
    events: mpsc::Sender<RoomEvent>,
    offered_at: Instant,
}

impl IncomingFile {
    /// The sender.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The file name the sender gave: a plain name (no path separator, no control
    /// character, not `.` or `..`, at most [`MAX_NAME_LEN`] bytes), checked on arrival.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size the sender announced, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Accepts the file into `path`, written as `PATH.part` until the sender's SHA-256 is
    /// checked, then renamed.
    ///
    /// # Errors
    ///
    /// [`FileError::Exists`] when `path` exists and `overwrite` is false (the sender is told
    /// it was refused); [`FileError::Io`] when `PATH.part` cannot be created;
    /// [`FileError::Rtc`] when the channel closed.
    pub async fn accept(
        mut self,
        path: impl Into<PathBuf>,
        overwrite: bool,
    ) -> Result<FileTransfer, FileError> {
        let path = path.into();
        let Some(side) = self.side.take() else {
            return Err(FileError::Protocol("offer already answered".into()));
        };
        if !overwrite && tokio::fs::try_exists(&path).await.unwrap_or(true) {
            let reason = format!("{} exists on the receiver", self.name);
            tokio::spawn(refuse(self.peer, side, reason, self.events.clone()));
            return Err(FileError::Exists(path));
        }
        let (partial, file) = create_part(&path).await.map_err(|source| FileError::Io {
            path: part_path(&path, 0),
            source,
        })?;
        if let Err(error) = reply(&side, &Control::Accept).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error);
        }
        let (progress_tx, progress) = watch::channel(Progress {
            bytes: 0,
            total: self.size,
        });
        let receive = Receive {
            peer: self.peer,
            name: self.name.clone(),
            size: self.size,
            path,
            partial,
            overwrite,
            offered_at: self.offered_at,
            events: self.events.clone(),
        };
        let task = tokio::spawn(receive.run(side, file, progress_tx));
        Ok(FileTransfer {
            name: self.name.clone(),
            size: self.size,
            peer: self.peer,
            progress,
            task: Some(task),
        })
    }

    /// Refuses the file; the sender's transfer fails with [`FileError::Refused`] and
    /// `reason`.
    pub async fn reject(mut self, reason: &str) {
        if let Some(side) = self.side.take() {
            let reason = reason.chars().take(MAX_CONTROL_SIZE / 8).collect();
            refuse(self.peer, side, reason, self.events.clone()).await;
        }
    }
}

impl Drop for IncomingFile {
    fn drop(&mut self) {
        if let Some(side) = self.side.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let events = self.events.clone();
                runtime.spawn(refuse(self.peer, side, "not accepted".into(), events));
            }
        }
    }
}

impl std::fmt::Debug for IncomingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingFile")
            .field("peer", &self.peer)
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Starts sending `path` to the member at the other end of `channel`.
pub(crate) async fn send(channel: &Channel, path: &Path) -> Result<FileTransfer, FileError> {
    let io = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let size = file.metadata().await.map_err(io)?.len();
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .map(str::to_string)
        .ok_or_else(|| FileError::InvalidName(path.display().to_string()))?;
    check_name(&name)?;
    let side = channel
        .connection
        .open_side_channel(FILE_LABEL)
        .await
        .map_err(FileError::Rtc)?;
    reply(
        &side,
        &Control::Offer {
            name: name.clone(),
            size,
        },
    )
    .await?;
    let (progress_tx, progress) = watch::channel(Progress {
        bytes: 0,
        total: size,
    });
    let sending = Send {
        peer: channel.peer,
        name: name.clone(),
        path: path.to_path_buf(),
        size,
        started: Instant::now(),
    };
    let task = tokio::spawn(sending.run(side, file, progress_tx));
    Ok(FileTransfer {
        name,
        size,
        peer: channel.peer,
        progress,
        task: Some(task),
    })
}

/// Reads a remote's file offers on a side channel it opened and hands each to the
/// application as [`RoomEvent::IncomingFile`]; the channel comes back here when that
/// transfer ends (see [`OFFER_TIMEOUT`]). A malformed message, or no first offer in time,
/// closes the channel.
pub(crate) async fn offered(
    peer: PeerId,
    mut side: SideChannel,
    events: mpsc::Sender<RoomEvent>,
    mut first: bool,
) {
    loop {
        let message = if first {
            tokio::time::timeout(OFFER_TIMEOUT, side.recv())
                .await
                .ok()
                .flatten()
        } else {
            side.recv().await
        };
        let Some(message) = message else {
            return;
        };
        // Only the channel's first offer has a deadline; after it (a refused name included)
        // the channel is the sender's to use again or close.
        first = false;
        let (name, size) = match decode(&message) {
            Ok(Message::Control(Control::Offer { name, size })) => (name, size),
            other => {
                tracing::warn!(%peer, ?other, "file channel without an offer closed");
                return;
            }
        };
        if let Err(error) = check_name(&name) {
            tracing::warn!(%peer, %error, "file offer refused");
            if reply(
                &side,
                &Control::Reject {
                    reason: error.to_string(),
                },
            )
            .await
            .is_err()
            {
                return;
            }
            continue;
        }
        let incoming = IncomingFile {
            peer,
            name,
            size,
            side: Some(side),
            events: events.clone(),
            offered_at: Instant::now(),
        };
        // A room that was left drops the offer, which refuses it.
        let _ = events.send(RoomEvent::IncomingFile(incoming)).await;
        return;
    }
}

/// The receiver's last message of a transfer; then the channel waits for the next offer.
async fn last_reply(
    peer: PeerId,
    side: SideChannel,
    control: &Control,
    events: mpsc::Sender<RoomEvent>,
) -> Result<(), FileError> {
    reply(&side, control).await?;
    tokio::spawn(offered(peer, side, events, false));
    Ok(())
}

/// Refuses an offer; the channel waits for the next.
async fn refuse(peer: PeerId, side: SideChannel, reason: String, events: mpsc::Sender<RoomEvent>) {
    let _ = last_reply(peer, side, &Control::Reject { reason }, events).await;
}

struct Send {
    peer: PeerId,
    name: String,
    path: PathBuf,
    size: u64,
    started: Instant,
}

impl Send {
    async fn run(
        self,
        mut side: SideChannel,
        file: tokio::fs::File,
        progress: watch::Sender<Progress>,
    ) -> Result<FileReceipt, FileError> {
        let _in_use = side.in_use();
        let mut settled = false;
        let sent = self
            .transfer(&mut side, file, &progress, &mut settled)
            .await;
        if settled {
            // The receiver's last message came: the channel serves the next file.
            side.release();
        }
        Ok(FileReceipt {
            peer: self.peer,
            name: self.name,
            path: self.path,
            size: self.size,
            sha256: sent?,
            elapsed: self.started.elapsed(),
        })
    }

    /// Sends the file once the receiver accepts it; returns its SHA-256 once the receiver
    /// confirmed it. Sets `settled` when the receiver's last message (`Reject` before any
    /// byte, `Confirmed` or `Failed` after `Done`) leaves nothing in flight on the channel.
    async fn transfer(
        &self,
        side: &mut SideChannel,
        mut file: tokio::fs::File,
        progress: &watch::Sender<Progress>,
        settled: &mut bool,
    ) -> Result<[u8; 32], FileError> {
        let gone = |bytes| FileError::PeerGone {
            bytes,
            size: self.size,
            partial: None,
        };
        match next_control(side, DECISION_TIMEOUT, || gone(0)).await? {
            Control::Accept => {}
            Control::Reject { reason } => {
                *settled = true;
                return Err(FileError::Refused(reason));
            }
            other => return Err(unexpected(&other)),
        }
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; CHUNK_SIZE + 1];
        buffer[0] = KIND_DATA;
        let (mut sent, mut acked) = (0u64, 0u64);
        loop {
            // Flow control: take what the receiver reported, and wait for it when too far
            // ahead.
            while let Some(message) = side.recv().now_or_never() {
                acked = self.on_receiver_message(message, acked, sent)?;
            }
            while sent.saturating_sub(acked) >= WINDOW {
                let message = tokio::time::timeout(STALL_TIMEOUT, side.recv())
                    .await
                    .map_err(|_| FileError::Stalled)?;
                acked = self.on_receiver_message(message, acked, sent)?;
            }
            let read = file
                .read(&mut buffer[1..])
                .await
                .map_err(|source| FileError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[1..=read]);
            side.send(&buffer[..=read]).await.map_err(|_| gone(sent))?;
            sent += read as u64;
            progress.send_replace(Progress {
                bytes: sent,
                total: self.size,
            });
        }
        if sent != self.size {
            return Err(FileError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(format!(
                    "the file changed while it was sent ({sent} bytes read, {} announced)",
                    self.size
                )),
            });
        }
        let sha256: [u8; 32] = hasher.finalize().into();
        reply(side, &Control::Done { sha256 })
            .await
            .map_err(|_| gone(sent))?;
        loop {
            match next_control(side, STALL_TIMEOUT, || gone(sent)).await? {
                Control::Received { .. } => {}
                Control::Confirmed => break,
                Control::Failed { reason } => {
                    *settled = true;
                    return Err(FileError::Failed(reason));
                }
                other => return Err(unexpected(&other)),
            }
        }
        *settled = true;
        Ok(sha256)
    }

    /// Applies a receiver message that arrived while sending; returns the bytes it has now
    /// reported written.
    fn on_receiver_message(
        &self,
        message: Option<Vec<u8>>,
        acked: u64,
        sent: u64,
    ) -> Result<u64, FileError> {
        let Some(message) = message else {
            return Err(FileError::PeerGone {
                bytes: sent,
                size: self.size,
                partial: None,
            });
        };
        match decode(&message)? {
            Message::Control(Control::Received { bytes }) if bytes <= sent => Ok(bytes.max(acked)),
            Message::Control(Control::Failed { reason }) => Err(FileError::Failed(reason)),
            Message::Control(other) => Err(unexpected(&other)),
            Message::Data(_) => Err(FileError::Protocol("the receiver sent file bytes".into())),
        }
    }
}

struct Receive {
    peer: PeerId,
    name: String,
    size: u64,
    path: PathBuf,
    partial: PathBuf,
    overwrite: bool,
    offered_at: Instant,
    events: mpsc::Sender<RoomEvent>,
}

impl Receive {
    async fn run(
        self,
        mut side: SideChannel,
        file: tokio::fs::File,
        progress: watch::Sender<Progress>,
    ) -> Result<FileReceipt, FileError> {
        let in_use = side.in_use();
        let mut file = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
        let received = self.receive(&mut side, &mut file, &progress).await;
        drop(in_use);
        // What arrived is kept in the partial file, whatever happened.
        let flushed = file.flush().await;
        let (sha256, written, actual) = match received {
            Ok(received) => received,
            Err(error @ FileError::PeerGone { .. }) => return Err(error),
            Err(error) => {
                // Mid-transfer: file bytes may still be on their way, so the channel closes.
                let reason = error.to_string();
                let _ = reply(&side, &Control::Failed { reason }).await;
                return Err(error);
            }
        };
        flushed.map_err(|source| self.io(source))?;
        file.get_ref()
            .sync_all()
            .await
            .map_err(|source| self.io(source))?;
        drop(file);
        if written != self.size {
            let reason = format!("{written} bytes received, {} announced", self.size);
            return self.fail(side, reason).await;
        }
        if actual != sha256 {
            return self.fail(side, "SHA-256 differs".into()).await;
        }
        match place(&self.partial, &self.path, self.overwrite).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let reason = format!("{} appeared on the receiver meanwhile", self.name);
                let _ = self.last_reply(side, &Control::Failed { reason }).await;
                return Err(FileError::Exists(self.path.clone()));
            }
            Err(source) => {
                let reason = source.to_string();
                let _ = self.last_reply(side, &Control::Failed { reason }).await;
                return Err(FileError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        self.last_reply(side, &Control::Confirmed).await?;
        Ok(FileReceipt {
            peer: self.peer,
            name: self.name,
            path: self.path,
            size: self.size,
            sha256,
            elapsed: self.offered_at.elapsed(),
        })
    }

    /// Writes the file's bytes as they arrive until the sender's `Done`; returns the SHA-256
    /// the sender claims, the bytes written and their SHA-256.
    async fn receive(
        &self,
        side: &mut SideChannel,
        file: &mut tokio::io::BufWriter<tokio::fs::File>,
        progress: &watch::Sender<Progress>,
    ) -> Result<([u8; 32], u64, [u8; 32]), FileError> {
        let mut hasher = Sha256::new();
        let (mut written, mut reported) = (0u64, 0u64);
        loop {
            let message = match tokio::time::timeout(STALL_TIMEOUT, side.recv()).await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    return Err(FileError::PeerGone {
                        bytes: written,
                        size: self.size,
                        partial: Some(self.partial.clone()),
                    })
                }
                Err(_) => return Err(FileError::Stalled),
            };
            match decode(&message)? {
                Message::Data(bytes) => {
                    if written + bytes.len() as u64 > self.size {
                        return Err(FileError::Protocol("more bytes than announced".into()));
                    }
                    file.write_all(bytes)
                        .await
                        .map_err(|source| self.io(source))?;
                    hasher.update(bytes);
                    written += bytes.len() as u64;
                    progress.send_replace(Progress {
                        bytes: written,
                        total: self.size,
                    });
                    if written - reported >= ACK_EVERY {
                        // What is reported is what the receiver holds no more in memory.
                        file.flush().await.map_err(|source| self.io(source))?;
                        reported = written;
                        let _ = reply(side, &Control::Received { bytes: written }).await;
                    }
                }
                Message::Control(Control::Done { sha256 }) => {
                    return Ok((sha256, written, hasher.finalize().into()))
                }
                Message::Control(other) => return Err(unexpected(&other)),
            }
        }
    }

    async fn fail(&self, side: SideChannel, reason: String) -> Result<FileReceipt, FileError> {
        let failed = Control::Failed {
            reason: reason.clone(),
        };
        let _ = self.last_reply(side, &failed).await;
        Err(FileError::Mismatch {
            reason,
            partial: self.partial.clone(),
        })
    }

    async fn last_reply(&self, side: SideChannel, control: &Control) -> Result<(), FileError> {
        last_reply(self.peer, side, control, self.events.clone()).await
    }

    fn io(&self, source: std::io::Error) -> FileError {
        FileError::Io {
            path: self.partial.clone(),
            source,
        }
    }
}

enum Message<'a> {
    Control(Control),
    Data(&'a [u8]),
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Control(control) => control.fmt(f),
            Message::Data(data) => write!(f, "Data({} bytes)", data.len()),
        }
    }
}

fn decode(message: &[u8]) -> Result<Message<'_>, FileError> {
    match message.split_first() {
        Some((&KIND_DATA, bytes)) => Ok(Message::Data(bytes)),
        Some((&KIND_CONTROL, body)) if body.len() <= MAX_CONTROL_SIZE => {
            let config = bincode::config::standard().with_limit::<MAX_CONTROL_SIZE>();
            let (control, read) =
                bincode::serde::decode_from_slice(body, config).map_err(|error| {
                    FileError::Protocol(format!("malformed control message: {error}"))
                })?;
            if read != body.len() {
                return Err(FileError::Protocol(
                    "trailing bytes after a control message".into(),
                ));
            }
            Ok(Message::Control(control))
        }
        Some((&KIND_CONTROL, body)) => Err(FileError::Protocol(format!(
            "control message of {} bytes; at most {MAX_CONTROL_SIZE} are allowed",
            body.len()
        ))),
        Some((kind, _)) => Err(FileError::Protocol(format!("unknown message kind {kind}"))),
        None => Err(FileError::Protocol("empty message".into())),
    }
}

async fn reply(side: &SideChannel, control: &Control) -> Result<(), FileError> {
    let mut message = vec![KIND_CONTROL];
    bincode::serde::encode_into_std_write(control, &mut message, bincode::config::standard())
        .map_err(|error| FileError::Protocol(format!("cannot encode {control:?}: {error}")))?;
    side.send(&message).await.map_err(FileError::Rtc)
}

/// The next control message, waiting at most `timeout`; `gone()` when the channel closed.
async fn next_control(
    side: &mut SideChannel,
    timeout: Duration,
    gone: impl FnOnce() -> FileError,
) -> Result<Control, FileError> {
    match tokio::time::timeout(timeout, side.recv()).await {
        Ok(Some(message)) => match decode(&message)? {
            Message::Control(control) => Ok(control),
            Message::Data(_) => Err(FileError::Protocol("unexpected file bytes".into())),
        },
        Ok(None) => Err(gone()),
        Err(_) => Err(FileError::Stalled),
    }
}

fn unexpected(control: &Control) -> FileError {
    FileError::Protocol(format!("unexpected {control:?}"))
}

/// Checks a file name that came from the network or the user: a plain name that cannot
/// escape the receiver's directory.
fn check_name(name: &str) -> Result<(), FileError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(FileError::InvalidName(name.chars().take(64).collect()));
    }
    Ok(())
}

/// Most partial files of one name tried: `PATH.part`, `PATH.1.part`, …
const MAX_PART_NAMES: u32 = 100;

/// `PATH.part` for `n` = 0, else `PATH.n.part`.
fn part_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    if n > 0 {
        name.push(format!(".{n}"));
    }
    name.push(".part");
    PathBuf::from(name)
}

/// Creates a partial file for `path` that no one else writes: the first of `PATH.part`,
/// `PATH.1.part`, … that does not exist (a transfer of the same name under way, or one that
/// failed and left its bytes, keeps its own).
async fn create_part(path: &Path) -> std::io::Result<(PathBuf, tokio::fs::File)> {
    for n in 0..MAX_PART_NAMES {
        let candidate = part_path(path, n);
        let created = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
            .await;
        match created {
            Ok(file) => return Ok((candidate, file)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("{MAX_PART_NAMES} partial files of this name exist; remove them"),
    ))
}

/// Gives the checked partial file its final name. Without `overwrite` it never replaces a
/// file: a hard link fails if the name exists (atomically, unlike a check then a rename),
/// and the partial name is removed after. Where hard links are unsupported it falls back to
/// a check and a rename.
async fn place(partial: &Path, path: &Path, overwrite: bool) -> std::io::Result<()> {
    if overwrite {
        return tokio::fs::rename(partial, path).await;
    }
    match tokio::fs::hard_link(partial, path).await {
        Ok(()) => tokio::fs::remove_file(partial).await,
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Err(error),
        Err(_) => {
            if tokio::fs::try_exists(path).await.unwrap_or(true) {
                return Err(std::io::ErrorKind::AlreadyExists.into());
            }
            tokio::fs::rename(partial, path).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a\nb",
            "nul\0",
            &"x".repeat(256),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["photo.jpg", "..hidden", "été 2026.txt", &"x".repeat(255)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn control_messages_round_trip_and_garbage_is_a_protocol_error() {
        let encoded = {
            let mut message = vec![KIND_CONTROL];
            bincode::serde::encode_into_std_write(
                &Control::Received { bytes: 42 },
                &mut message,
                bincode::config::standard(),
            )
            .unwrap();
            message
        };
        assert!(matches!(
            decode(&encoded),
            Ok(Message::Control(Control::Received { bytes: 42 }))
        ));
        for garbage in [&[][..], &[7, 1, 2][..], &[KIND_CONTROL, 0xff, 0xff][..]] {
            assert!(
                matches!(decode(garbage), Err(FileError::Protocol(_))),
                "{garbage:?}"
            );
        }
        let oversized = vec![KIND_CONTROL; MAX_CONTROL_SIZE + 2];
        assert!(matches!(decode(&oversized), Err(FileError::Protocol(_))));
        assert!(matches!(
            decode(&[KIND_DATA, 9, 9]),
            Ok(Message::Data(&[9, 9]))
        ));
    }

    #[test]
    fn partial_files_get_a_part_suffix() {
        assert_eq!(
            part_path(Path::new("out/a.bin"), 0),
            PathBuf::from("out/a.bin.part")
        );
        assert_eq!(
            part_path(Path::new("out/a.bin"), 2),
            PathBuf::from("out/a.bin.2.part")
        );
    }
}
