//! `kadrtc offer` and `kadrtc answer`: signaling by copy and paste, with no network.
//!
//! The two sides swap one line each, in the shape of the browser's `RTCSessionDescriptionInit`
//! (W3C WebRTC §4.8.1), `{"type":"offer","sdp":"…"}` and `{"type":"answer","sdp":"…"}`, with
//! every ICE candidate inside the SDP (no trickle ICE: there is no channel to trickle on). So
//! the other side can be another `kadrtc`, a browser tab, aiortc or any other standard WebRTC
//! peer. Once the data channel is open, stdin lines are sent as text messages and received
//! messages are printed, as with `kadrtc join`; there are no PeerIds here, so events name
//! the other side `peer_id: null`.
//!
//! The connection is the library's [`kadrtc::manual::ManualConnection`]; this module reads
//! stdin and prints.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use kadrtc::manual::{
    Description, DescriptionKind, ManualConfig, ManualConnection, ManualEvent, ANSWER_CARRY_TIMEOUT,
};
use kadrtc::{CandidatePair, IceServer};
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, BufReader};

use crate::output::Output;
use crate::{shutdown_signal, OfferArgs};

/// Longest stdin line read, in bytes: a description line (a browser's offer with many
/// candidates is a few KiB) or a message (at most [`kadrtc::manual::MAX_MESSAGE_SIZE`]). A
/// longer line is skipped whole.
pub const MAX_LINE_BYTES: usize = 256 * 1024;

/// One stdin line, or a line over the limit (its text dropped).
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Text(String),
    TooLong,
}

/// Reads lines of at most `max` bytes; cancel safe (a partial line is kept between calls), so
/// it can be one branch of a `select!`.
struct LineReader<R> {
    reader: R,
    max: usize,
    buf: Vec<u8>,
    too_long: bool,
}

/// One copy-paste session: stdin and stdout around the connection.
struct Session<'a> {
    stdin: LineReader<BufReader<tokio::io::Stdin>>,
    printer: Printer,
    out: &'a Output,
}

/// Prints chat events as text or JSON lines (the same shapes as `kadrtc join`'s).
struct Printer {
    json: bool,
}

/// Whether the chat goes on after an event.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// `kadrtc offer`: print the offer line, read the answer line, chat.
pub async fn run_offer(args: OfferArgs, out: &Output) -> anyhow::Result<()> {
    run(args, out, DescriptionKind::Offer).await
}

/// `kadrtc answer`: read the offer line, print the answer line, chat.
pub async fn run_answer(args: OfferArgs, out: &Output) -> anyhow::Result<()> {
    run(args, out, DescriptionKind::Answer).await
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            max,
            buf: Vec::new(),
            too_long: false,
        }
    }

    /// The next line without its line ending (`\n` or `\r\n`), or `None` at the end of input.
    /// Bytes that are not UTF-8 are replaced (U+FFFD).
    async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                if self.buf.is_empty() && !self.too_long {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let (used, complete) = match chunk.iter().position(|&b| b == b'\n') {
                Some(end) => (end + 1, true),
                None => (chunk.len(), false),
            };
            let part = &chunk[..used];
            let part = part.strip_suffix(b"\n").unwrap_or(part);
            if !self.too_long {
                if self.buf.len() + part.len() > self.max {
                    self.too_long = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            self.reader.consume(used);
            if complete {
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> Line {
        if std::mem::take(&mut self.too_long) {
            return Line::TooLong;
        }
        let bytes = std::mem::take(&mut self.buf);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(&bytes);
        Line::Text(String::from_utf8_lossy(bytes).into_owned())
    }
}

impl Session<'_> {
    /// Swaps descriptions, this side printing one of kind `role`, then chats until stdin ends
    /// or the remote leaves. The connection goes into `slot` as soon as it exists, for the
    /// caller to close.
    async fn run(
        &mut self,
        role: DescriptionKind,
        config: &ManualConfig,
        slot: &mut Option<ManualConnection>,
    ) -> anyhow::Result<()> {
        let connection = match role {
            DescriptionKind::Offer => {
                let (connection, offer) = ManualConnection::offer(config).await?;
                let connection = slot.insert(connection);
                print_line(&offer.to_line());
                self.printer.hint(
                    "give the line above to the other side (`kadrtc answer`, or a browser tab: \
                     see README.md), then paste its answer line here and press Enter",
                );
                let answer = self
                    .read_description(DescriptionKind::Answer, Some(&mut *connection))
                    .await?;
                connection.accept_answer(&answer).await?;
                connection
            }
            DescriptionKind::Answer => {
                self.printer.hint(
                    "paste the offer line from the other side (`kadrtc offer`, or a browser \
                     tab) and press Enter",
                );
                let offer = self.read_description(DescriptionKind::Offer, None).await?;
                let (connection, answer) = ManualConnection::answer(config, &offer).await?;
                let connection = slot.insert(connection);
                print_line(&answer.to_line());
                self.printer.hint(&format!(
                    "give the line above to the offer side now: the channel opens once it \
                     applies it, and connecting gives up after about {} s",
                    ANSWER_CARRY_TIMEOUT.as_secs()
                ));
                connection
            }
        };
        self.chat(connection).await
    }

    /// Reads the first non-empty stdin line and parses it as the remote's description (of
    /// type `kind`, which the connection checks); watches `connection`, if any, meanwhile.
    async fn read_description(
        &mut self,
        kind: DescriptionKind,
        mut connection: Option<&mut ManualConnection>,
    ) -> anyhow::Result<Description> {
        loop {
            let event = async {
                match connection.as_deref_mut() {
                    Some(connection) => connection.next_event().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                line = self.stdin.next_line() => match line.context("cannot read stdin")? {
                    None => anyhow::bail!("stdin ended before the {kind} line"),
                    Some(Line::TooLong) => anyhow::bail!(
                        "the {kind} line is longer than {MAX_LINE_BYTES} bytes"
                    ),
                    Some(Line::Text(text)) if text.trim().is_empty() => {}
                    Some(Line::Text(text)) => return Ok(Description::parse_line(&text)?),
                },
                event = event => match event {
                    Some(ManualEvent::Failed(reason)) => anyhow::bail!("{reason}"),
                    None | Some(ManualEvent::Closed) => {
                        anyhow::bail!("the WebRTC connection stopped")
                    }
                    // Nothing opens before the remote's description is set.
                    Some(other) => tracing::debug!(?other, "event before the {kind} line"),
                },
            }
        }
    }

    /// The chat: stdin lines out, messages and events in, until stdin ends or the remote
    /// leaves.
    async fn chat(&mut self, connection: &mut ManualConnection) -> anyhow::Result<()> {
        let mut open = false;
        loop {
            tokio::select! {
                line = self.stdin.next_line() => match line {
                    Ok(Some(Line::Text(text))) => self.send(connection, &text).await,
                    Ok(Some(Line::TooLong)) => self.out.error(&format!(
                        "a line longer than {MAX_LINE_BYTES} bytes was not sent"
                    )),
                    Ok(None) => return Ok(()),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read stdin");
                        return Ok(());
                    }
                },
                event = connection.next_event() => {
                    let Some(event) = event else { return Ok(()) };
                    if self.handle(event, &mut open)? == Flow::Stop {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn handle(&self, event: ManualEvent, open: &mut bool) -> anyhow::Result<Flow> {
        match event {
            ManualEvent::ChannelOpen {
                elapsed,
                candidate_pair,
            } => {
                *open = true;
                self.printer.channel_open(elapsed, candidate_pair);
            }
            ManualEvent::Message(data) => self.printer.message(&data),
            ManualEvent::Closed | ManualEvent::Failed(_) if *open => {
                self.printer.peer_left();
                return Ok(Flow::Stop);
            }
            ManualEvent::Closed => {
                anyhow::bail!("the remote closed the data channel before it opened")
            }
            // Says what failed and what to check (the bind addresses: --bind).
            ManualEvent::Failed(reason) => anyhow::bail!("{reason}"),
            other => tracing::debug!(?other, "event ignored"),
        }
        Ok(Flow::Continue)
    }

    /// Sends one stdin line as a text message (a string in a browser's `onmessage`).
    async fn send(&self, connection: &ManualConnection, text: &str) {
        if let Err(error) = connection.send_text(text).await {
            self.out.error(&format!("{:#}", anyhow::Error::new(error)));
        }
    }
}

impl Printer {
    fn channel_open(&self, elapsed: Duration, pair: Option<CandidatePair>) {
        let elapsed_ms = elapsed.as_millis();
        if self.json {
            print_line(
                &json!({
                    "event": "channel_open",
                    "peer_id": null,
                    "elapsed_ms": elapsed_ms,
                    "local": pair.map(|p| p.local.as_str()),
                    "remote": pair.map(|p| p.remote.as_str()),
                })
                .to_string(),
            );
        } else {
            let path = match pair {
                Some(pair) if pair.is_relayed() => {
                    format!("relayed, {}↔{}", pair.local, pair.remote)
                }
                Some(pair) => format!("direct, {}↔{}", pair.local, pair.remote),
                None => "path unknown".into(),
            };
            print_line(&format!(
                "* channel open to the remote ({elapsed_ms} ms after both descriptions were set; \
                 {path}); type a line and press Enter to send it"
            ));
        }
    }

    fn message(&self, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        if self.json {
            print_line(&json!({"event": "message", "peer_id": null, "text": text}).to_string());
        } else {
            print_line(&format!("<remote> {text}"));
        }
    }

    fn peer_left(&self) {
        if self.json {
            print_line(&json!({"event": "peer_left", "peer_id": null}).to_string());
        } else {
            print_line("* the remote left");
        }
    }

    /// What to do next, for people: on stderr, in text mode only.
    fn hint(&self, text: &str) {
        if !self.json {
            eprintln!("kadrtc: {text}");
        }
    }
}

async fn run(args: OfferArgs, out: &Output, role: DescriptionKind) -> anyhow::Result<()> {
    let mut config = ManualConfig::default();
    if !args.bind.is_empty() {
        config.bind_ips = args.bind;
    }
    config.ice_servers = args.stun.into_iter().map(IceServer::url).collect();
    let mut session = Session {
        stdin: LineReader::new(BufReader::new(tokio::io::stdin()), MAX_LINE_BYTES),
        printer: Printer { json: args.json },
        out,
    };
    let mut connection = None;
    // Ctrl-C or SIGTERM ends any phase cleanly.
    let result = tokio::select! {
        result = session.run(role, &config, &mut connection) => result,
        result = shutdown_signal() => result,
    };
    if let Some(connection) = connection {
        connection.close().await;
    }
    result
}

/// Writes one line to stdout and flushes it, so that a pipe's reader sees it at once.
fn print_line(text: &str) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (the reader went away) is not worth crashing for.
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_keep_no_line_endings() {
        let input: &[u8] = b"short\r\n0123456789ABCDEF\n\nlast";
        let mut lines = LineReader::new(input, 10);
        let mut got = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            got.push(line);
        }
        assert_eq!(
            got,
            [
                Line::Text("short".into()),
                Line::TooLong,
                Line::Text(String::new()),
                Line::Text("last".into()),
            ]
        );
    }

    #[tokio::test]
    async fn a_long_line_read_in_small_chunks_is_skipped_whole() {
        let input: &[u8] = b"0123456789ABCDEF\nnext\n";
        let mut lines = LineReader::new(BufReader::with_capacity(3, input), 10);
        assert_eq!(lines.next_line().await.unwrap(), Some(Line::TooLong));
        assert_eq!(
            lines.next_line().await.unwrap(),
            Some(Line::Text("next".into()))
        );
        assert_eq!(lines.next_line().await.unwrap(), None);
    }
}
