//! `kadrtc offer` and `kadrtc answer`: signaling by copy and paste, with no network.
//!
//! The two sides swap one line each, in the shape of the browser's `RTCSessionDescriptionInit`
//! (W3C WebRTC §4.8.1), `{"type":"offer","sdp":"…"}` and `{"type":"answer","sdp":"…"}`, with
//! every ICE candidate inside the SDP (no trickle ICE: there is no channel to trickle on). So
//! the other side can be another `kadrtc`, a browser tab, aiortc or any other standard WebRTC
//! peer. Once the data channel is open, stdin lines are sent as text messages and received
//! messages are printed, as with `kadrtc join`; there are no PeerIds here, so events name
//! the other side `peer_id: null`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kadrtc_rtc::{
    CandidatePair, Channel, IceServer, PeerConnection, RtcConfig, RtcEvent,
    ICE_DISCONNECTED_TIMEOUT,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

use crate::output::Output;
use crate::{shutdown_signal, OfferArgs};

/// How long gathering may take before the description is printed with the candidates
/// gathered so far. Host candidates take milliseconds; a STUN server that does not answer is
/// what this bounds.
pub const GATHERING_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the data channel may take to open once `kadrtc offer` has both descriptions,
/// before the command gives up.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `kadrtc answer` waits for the channel after printing its answer: the time a
/// person has to carry the answer to the offer side. ICE keeps checking as long
/// ([`kadrtc_rtc::RtcConfig::ice_failed_timeout`]).
pub const ANSWER_CARRY_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest stdin line read, in bytes: a description line (a browser's offer with many
/// candidates is a few KiB) or a message (at most [`kadrtc_rtc::MAX_MESSAGE_SIZE`]). A longer
/// line is skipped whole.
pub const MAX_LINE_BYTES: usize = 256 * 1024;

/// Connection events waiting to be handled.
const EVENT_QUEUE: usize = 64;

/// Which side of the exchange this command plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Prints the offer first, then reads the answer.
    Offer,
    /// Reads the offer first, then prints the answer.
    Answer,
}

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

/// One copy-paste session: the connection, its events, stdin and stdout.
struct Session<'a> {
    pc: PeerConnection,
    events: mpsc::Receiver<((), RtcEvent)>,
    /// Events that arrived while gathering or waiting for the remote's line, handled first
    /// by the chat loop. A few at most: before both descriptions are set, only ICE state
    /// changes can happen (no channel, so no message).
    early: Vec<RtcEvent>,
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
    run(args, out, Role::Offer).await
}

/// `kadrtc answer`: read the offer line, print the answer line, chat.
pub async fn run_answer(args: OfferArgs, out: &Output) -> anyhow::Result<()> {
    run(args, out, Role::Answer).await
}

impl Role {
    /// The `type` of the description this side prints.
    fn local_type(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::Answer => "answer",
        }
    }

    /// The `type` of the description this side reads.
    fn remote_type(self) -> &'static str {
        match self {
            Self::Offer => "answer",
            Self::Answer => "offer",
        }
    }
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
    /// Swaps descriptions in `role`'s order, then chats until stdin ends or the remote leaves.
    async fn run(&mut self, role: Role) -> anyhow::Result<()> {
        match role {
            Role::Offer => {
                self.pc
                    .create_offer()
                    .await
                    .context("cannot create the offer")?;
                let sdp = self.gathered_description().await?;
                print_line(&description_line(role.local_type(), &sdp));
                self.printer.hint(
                    "give the line above to the other side (`kadrtc answer`, or a browser tab: \
                     see README.md), then paste its answer line here and press Enter",
                );
                let answer = self.read_description(role.remote_type()).await?;
                self.pc
                    .apply_answer(answer, &[])
                    .await
                    .context("cannot apply the answer (was it made for this offer?)")?;
            }
            Role::Answer => {
                self.printer.hint(
                    "paste the offer line from the other side (`kadrtc offer`, or a browser \
                     tab) and press Enter",
                );
                let offer = self.read_description(role.remote_type()).await?;
                self.pc
                    .accept_offer(offer, &[])
                    .await
                    .context("cannot accept the offer")?;
                let sdp = self.gathered_description().await?;
                print_line(&description_line(role.local_type(), &sdp));
                self.printer.hint(&format!(
                    "give the line above to the offer side now: the channel opens once it \
                     applies it, and connecting gives up after about {} s",
                    (ICE_DISCONNECTED_TIMEOUT + ANSWER_CARRY_TIMEOUT).as_secs()
                ));
            }
        }
        self.chat(role, Instant::now()).await
    }

    /// Waits until gathering completes (at most [`GATHERING_TIMEOUT`]) and returns the local
    /// description's SDP. webrtc-rs adds every candidate gathered so far to the description
    /// it returns (a candidate line for ICE components 1 and 2 each, the second ignored by
    /// peers that multiplex RTCP), and `a=end-of-candidates` once gathering completed.
    async fn gathered_description(&mut self) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + GATHERING_TIMEOUT;
        let mut candidates = 0usize;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    tracing::warn!(
                        candidates,
                        "ICE gathering did not complete within {GATHERING_TIMEOUT:?}; \
                         using the candidates gathered so far"
                    );
                    break;
                }
                Ok(None) => anyhow::bail!("the WebRTC connection stopped while gathering"),
                Ok(Some(((), event))) => match event {
                    RtcEvent::LocalCandidate(_) => candidates += 1,
                    RtcEvent::GatheringComplete => break,
                    RtcEvent::Failed(reason) => {
                        anyhow::bail!("the WebRTC connection failed while gathering: {reason}")
                    }
                    other => self.early.push(other),
                },
            }
        }
        anyhow::ensure!(
            candidates > 0,
            "no ICE candidate was gathered: the other side would have no address to reach \
             (check --bind)"
        );
        self.pc
            .local_description()
            .await
            .context("cannot read the local description")
    }

    /// Reads the first non-empty stdin line and parses it as the remote's description of
    /// type `kind`; handles connection events meanwhile.
    async fn read_description(&mut self, kind: &str) -> anyhow::Result<String> {
        loop {
            tokio::select! {
                line = self.stdin.next_line() => match line.context("cannot read stdin")? {
                    None => anyhow::bail!("stdin ended before the {kind} line"),
                    Some(Line::TooLong) => anyhow::bail!(
                        "the {kind} line is longer than {MAX_LINE_BYTES} bytes"
                    ),
                    Some(Line::Text(text)) if text.trim().is_empty() => {}
                    Some(Line::Text(text)) => return parse_description(kind, &text),
                },
                event = self.events.recv() => match event {
                    None => anyhow::bail!("the WebRTC connection stopped"),
                    Some(((), RtcEvent::Failed(reason))) => {
                        anyhow::bail!("the WebRTC connection failed: {reason}")
                    }
                    Some(((), RtcEvent::LocalCandidate(candidate))) => {
                        tracing::debug!(%candidate, "candidate gathered after the description was printed; not signaled");
                    }
                    Some(((), other)) => self.early.push(other),
                },
            }
        }
    }

    /// The chat: stdin lines out, messages and events in, until stdin ends or the remote
    /// leaves. `since` is when both descriptions were set.
    async fn chat(&mut self, role: Role, since: Instant) -> anyhow::Result<()> {
        let mut channel: Option<Channel> = None;
        for event in std::mem::take(&mut self.early) {
            if self.handle(event, &mut channel, role, since).await? == Flow::Stop {
                return Ok(());
            }
        }
        let open_timeout = match role {
            Role::Offer => OPEN_TIMEOUT,
            Role::Answer => ANSWER_CARRY_TIMEOUT,
        };
        let open_deadline = tokio::time::sleep(open_timeout);
        tokio::pin!(open_deadline);
        loop {
            tokio::select! {
                line = self.stdin.next_line() => match line {
                    Ok(Some(Line::Text(text))) => self.send(channel.as_ref(), &text).await,
                    Ok(Some(Line::TooLong)) => self.out.error(&format!(
                        "a line longer than {MAX_LINE_BYTES} bytes was not sent"
                    )),
                    Ok(None) => return Ok(()),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read stdin");
                        return Ok(());
                    }
                },
                event = self.events.recv() => {
                    let Some(((), event)) = event else { return Ok(()) };
                    if self.handle(event, &mut channel, role, since).await? == Flow::Stop {
                        return Ok(());
                    }
                }
                () = &mut open_deadline, if channel.is_none() => anyhow::bail!(
                    "the data channel did not open within {} s of both descriptions being set",
                    open_timeout.as_secs()
                ),
            }
        }
    }

    async fn handle(
        &mut self,
        event: RtcEvent,
        channel: &mut Option<Channel>,
        role: Role,
        since: Instant,
    ) -> anyhow::Result<Flow> {
        match event {
            RtcEvent::ChannelOpen(open) => {
                if channel.is_none() {
                    *channel = Some(open);
                    let pair = self.pc.selected_candidate_pair().await;
                    self.printer.channel_open(since.elapsed(), pair);
                }
            }
            RtcEvent::Message(data) => self.printer.message(&data),
            RtcEvent::ChannelClosed | RtcEvent::Failed(_) if channel.is_some() => {
                self.printer.peer_left();
                return Ok(Flow::Stop);
            }
            RtcEvent::ChannelClosed => {
                anyhow::bail!("the remote closed the data channel before it opened")
            }
            RtcEvent::Failed(reason) => {
                let hint = match role {
                    Role::Offer => "ICE found no working path between the two sides' candidates \
                                    (check --bind on both sides)"
                        .to_string(),
                    Role::Answer => format!(
                        "ICE found no working path between the two sides' candidates (check \
                         --bind on both sides), or the offer side did not apply this answer \
                         within {} s",
                        (ICE_DISCONNECTED_TIMEOUT + ANSWER_CARRY_TIMEOUT).as_secs()
                    ),
                };
                anyhow::bail!(
                    "the connection failed before the data channel opened ({reason}): {hint}"
                )
            }
            RtcEvent::IceConnected => tracing::debug!("ICE connected"),
            RtcEvent::LocalCandidate(candidate) => {
                tracing::debug!(%candidate, "candidate gathered after the description was printed; not signaled");
            }
            RtcEvent::SideChannelOpen(side) => {
                tracing::debug!(label = side.label(), "side channel from the remote closed");
            }
            other => tracing::debug!(?other, "event ignored"),
        }
        Ok(Flow::Continue)
    }

    /// Sends one stdin line as a text message (a string in a browser's `onmessage`).
    async fn send(&self, channel: Option<&Channel>, text: &str) {
        let Some(channel) = channel else {
            self.out.error("no open channel yet; message not sent");
            return;
        };
        if let Err(error) = channel.send_text(text).await {
            self.out.error(&format!("message not sent: {error}"));
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

async fn run(args: OfferArgs, out: &Output, role: Role) -> anyhow::Result<()> {
    let defaults = RtcConfig::all_interfaces();
    let config = RtcConfig {
        bind_ips: if args.bind.is_empty() {
            defaults.bind_ips.clone()
        } else {
            args.bind.clone()
        },
        ice_servers: args.stun.iter().cloned().map(IceServer::url).collect(),
        // A browser or aiortc names its channel as it likes; kadrtc's offer says "kadrtc".
        any_remote_label: role == Role::Answer,
        // ICE on the answer side starts before the offer side has the answer.
        ice_failed_timeout: ANSWER_CARRY_TIMEOUT,
        ..defaults
    };
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let pc = PeerConnection::new(&config, (), events_tx)
        .await
        .context("cannot set up the WebRTC connection (check the --bind addresses)")?;
    let mut session = Session {
        pc: pc.clone(),
        events,
        early: Vec::new(),
        stdin: LineReader::new(BufReader::new(tokio::io::stdin()), MAX_LINE_BYTES),
        printer: Printer { json: args.json },
        out,
    };
    // Ctrl-C or SIGTERM ends any phase cleanly.
    let result = tokio::select! {
        result = session.run(role) => result,
        result = shutdown_signal() => result,
    };
    pc.close().await;
    result
}

/// The one-line JSON form of a description, `{"type":"offer","sdp":"v=0\r\n…"}`, with the keys
/// in the browser's order.
fn description_line(kind: &str, sdp: &str) -> String {
    format!(
        "{{\"type\":{},\"sdp\":{}}}",
        Value::from(kind),
        Value::from(sdp)
    )
}

/// Parses a pasted description line of type `kind` (`{"type":"answer","sdp":"…"}`, other keys
/// ignored) and checks its SDP with webrtc-rs's parser; returns the SDP.
fn parse_description(kind: &str, line: &str) -> anyhow::Result<String> {
    let shape = format!("{{\"type\":\"{kind}\",\"sdp\":\"…\"}}");
    let value: Value = serde_json::from_str(line.trim()).with_context(|| {
        format!("the {kind} line is not JSON; paste the whole line the other side printed, {shape}")
    })?;
    let Value::Object(fields) = value else {
        anyhow::bail!("the {kind} line is not a JSON object; expected {shape}");
    };
    match fields.get("type") {
        Some(Value::String(t)) if t == kind => {}
        Some(Value::String(t)) if t == "offer" || t == "answer" => anyhow::bail!(
            "expected an {kind} but this line is an {t} (each side pastes the other side's line: \
             an offer goes to `kadrtc answer`, an answer to `kadrtc offer`)"
        ),
        Some(other) => anyhow::bail!("the {kind} line has type {other}; expected {shape}"),
        None => anyhow::bail!("the {kind} line has no \"type\"; expected {shape}"),
    }
    let sdp = match fields.get("sdp") {
        Some(Value::String(sdp)) if !sdp.trim().is_empty() => sdp.clone(),
        Some(Value::String(_)) => anyhow::bail!("the {kind} line's \"sdp\" is empty"),
        Some(_) => anyhow::bail!("the {kind} line's \"sdp\" is not a string; expected {shape}"),
        None => anyhow::bail!("the {kind} line has no \"sdp\"; expected {shape}"),
    };
    kadrtc_rtc::check_remote_description(&sdp, &[])
        .with_context(|| format!("the {kind} line's SDP is not valid"))?;
    Ok(sdp)
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

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";

    fn error(kind: &str, line: &str) -> String {
        format!("{:#}", parse_description(kind, line).unwrap_err())
    }

    #[test]
    fn description_lines_round_trip_with_surrounding_whitespace() {
        let line = description_line("answer", SDP);
        assert!(
            line.starts_with(r#"{"type":"answer","sdp":"v=0\r\n"#),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line: {line}");
        assert_eq!(
            parse_description("answer", &format!("  {line}\r\n")).unwrap(),
            SDP
        );
        let extra = format!(r#"{{"sdp":{},"type":"offer","extra":1}}"#, Value::from(SDP));
        assert_eq!(parse_description("offer", &extra).unwrap(), SDP);
    }

    #[test]
    fn bad_description_lines_give_clear_errors() {
        assert!(error("answer", "hello").contains("not JSON"));
        assert!(error("answer", "[1]").contains("not a JSON object"));
        let offer = description_line("offer", SDP);
        assert!(error("answer", &offer).contains("this line is an offer"));
        assert!(error("answer", r#"{"type":"pranswer","sdp":"v=0"}"#).contains("type \"pranswer\""));
        assert!(error("answer", r#"{"sdp":"v=0"}"#).contains("no \"type\""));
        assert!(error("answer", r#"{"type":"answer"}"#).contains("no \"sdp\""));
        assert!(error("answer", r#"{"type":"answer","sdp":" "}"#).contains("is empty"));
        assert!(error("answer", r#"{"type":"answer","sdp":5}"#).contains("not a string"));
        let garbage = error("answer", r#"{"type":"answer","sdp":"not sdp"}"#);
        assert!(garbage.contains("SDP is not valid"), "{garbage}");
    }

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
