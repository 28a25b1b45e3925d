//! The bare WebRTC stack: two `kadrtc_rtc::PeerConnection`s in one process wired directly
//! (offer-to-open), and the throughput of one channel against plain TCP on loopback.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kadrtc_rtc::{Channel, PeerConnection, RtcConfig, RtcEvent};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::stats::{self, Summary};

/// How long one connection may take to open.
const OPEN_DEADLINE: Duration = Duration::from_secs(20);
/// How long closing a connection may take.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(5);
/// Capacity of the channel carrying both connections' events.
const EVENT_CAPACITY: usize = 1024;
/// Repetitions of each TCP figure in a full run.
const TCP_REPS: usize = 9;
/// Bytes per mebibyte.
pub const MIB: usize = 1024 * 1024;

/// Which of the two connections an event is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Offerer,
    Answerer,
}

/// Two connected peer connections and their open channels.
pub struct Pair {
    offerer: PeerConnection,
    answerer: PeerConnection,
    events: mpsc::Receiver<(Side, RtcEvent)>,
    /// The offerer's end of the channel.
    offerer_channel: Channel,
}

/// One throughput measurement over a channel or a TCP connection.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// `"webrtc"` or `"tcp"`.
    pub transport: &'static str,
    /// Whether the channel delivers in order (always true for TCP).
    pub ordered: bool,
    /// Bytes per message (per `write_all` for TCP).
    pub message_bytes: usize,
    /// Bytes sent in each repetition.
    pub total_bytes: usize,
    /// MB/s (10^6 bytes per second) of each repetition, from the first send to the last
    /// byte received.
    pub mb_per_s: Vec<f64>,
    /// Median of `mb_per_s`.
    pub median_mb_per_s: f64,
}

impl Pair {
    /// Builds two peer connections with `config` and opens the channel between them:
    /// `create_offer`, `accept_offer` with the offerer's candidates gathered so far,
    /// `apply_answer` with the answerer's, then every later candidate handed over as it
    /// comes. Returns the pair and the time from `create_offer` to both sides' open channel.
    pub async fn open(config: &RtcConfig) -> anyhow::Result<(Self, Duration)> {
        timeout(OPEN_DEADLINE, Self::connect(config))
            .await
            .context("the channel did not open within the deadline")?
    }

    async fn connect(config: &RtcConfig) -> anyhow::Result<(Self, Duration)> {
        let (tx, mut events) = mpsc::channel(EVENT_CAPACITY);
        let offerer = PeerConnection::new(config, Side::Offerer, tx.clone())
            .await
            .context("offerer peer connection")?;
        let answerer = PeerConnection::new(config, Side::Answerer, tx)
            .await
            .context("answerer peer connection")?;

        let started = Instant::now();
        let offer = offerer.create_offer().await.context("create_offer")?;
        let mut offerer_candidates = Vec::new();
        let mut answerer_candidates = Vec::new();
        let mut pending = Vec::new();
        drain(
            &mut events,
            &mut offerer_candidates,
            &mut answerer_candidates,
            &mut pending,
        );
        let answer = answerer
            .accept_offer(offer, &offerer_candidates)
            .await
            .context("accept_offer")?;
        let mut late_offerer = Vec::new();
        drain(
            &mut events,
            &mut late_offerer,
            &mut answerer_candidates,
            &mut pending,
        );
        for candidate in late_offerer {
            answerer.add_candidate(candidate).await?;
        }
        offerer
            .apply_answer(answer, &answerer_candidates)
            .await
            .context("apply_answer")?;

        let mut offerer_channel = None;
        let mut answerer_open = false;
        let opened = async {
            let mut pending = pending.into_iter();
            loop {
                let (side, event) = match pending.next() {
                    Some(event) => event,
                    None => events.recv().await.context("event channel closed")?,
                };
                match (side, event) {
                    (Side::Offerer, RtcEvent::LocalCandidate(c)) => {
                        answerer.add_candidate(c).await?
                    }
                    (Side::Answerer, RtcEvent::LocalCandidate(c)) => {
                        offerer.add_candidate(c).await?
                    }
                    (Side::Offerer, RtcEvent::ChannelOpen(channel)) => {
                        offerer_channel = Some(channel)
                    }
                    (Side::Answerer, RtcEvent::ChannelOpen(_)) => answerer_open = true,
                    (side, RtcEvent::Failed(reason)) => bail!("{side:?} failed: {reason}"),
                    _ => {}
                }
                if answerer_open && offerer_channel.is_some() {
                    return anyhow::Ok(started.elapsed());
                }
            }
        }
        .await?;
        let offerer_channel = offerer_channel.context("offerer channel")?;
        Ok((
            Self {
                offerer,
                answerer,
                events,
                offerer_channel,
            },
            opened,
        ))
    }

    /// Sends `total` bytes in `message`-byte messages from the offerer to the answerer
    /// (`Channel::send` waits while its send buffer is full) and returns MB/s from the first
    /// send to the last byte received.
    pub async fn throughput(
        &mut self,
        message: usize,
        total: usize,
        deadline: Duration,
    ) -> anyhow::Result<f64> {
        let count = total / message;
        let total = count * message;
        let channel = self.offerer_channel.clone();
        let started = Instant::now();
        let sender = tokio::spawn(async move {
            let payload = vec![0x5a_u8; message];
            for _ in 0..count {
                channel.send(&payload).await?;
            }
            anyhow::Ok(())
        });
        let mut received = 0;
        let result = timeout(deadline, async {
            while received < total {
                match self.events.recv().await.context("event channel closed")? {
                    (Side::Answerer, RtcEvent::Message(data)) => received += data.len(),
                    (side, RtcEvent::Failed(reason)) => bail!("{side:?} failed: {reason}"),
                    (side, RtcEvent::ChannelClosed) => bail!("{side:?}: channel closed"),
                    _ => {}
                }
            }
            anyhow::Ok(started.elapsed())
        })
        .await;
        let elapsed = match result {
            Ok(elapsed) => elapsed?,
            Err(_) => {
                sender.abort();
                bail!("{received} of {total} bytes arrived within {deadline:?}");
            }
        };
        sender.await.context("sender task")??;
        Ok(mb_per_s(total, elapsed))
    }

    /// Closes both connections (waiting at most [`CLOSE_DEADLINE`]).
    pub async fn close(self) {
        let _ = timeout(CLOSE_DEADLINE, async {
            self.offerer.close().await;
            self.answerer.close().await;
        })
        .await;
    }
}

/// Offer-to-open of the bare stack, `runs` times (after one warm-up run that is not
/// counted), each with two fresh connections.
pub async fn offer_to_open(runs: usize) -> anyhow::Result<Summary> {
    let config = RtcConfig::loopback();
    let (pair, _) = Pair::open(&config).await.context("warm-up run")?;
    pair.close().await;
    let mut samples = Vec::new();
    for run in 1..=runs {
        let (pair, opened) = Pair::open(&config)
            .await
            .with_context(|| format!("run {run}"))?;
        eprintln!(
            "  bare run {run}/{runs}: {} ms",
            stats::fmt_ms(stats::ms(&opened))
        );
        samples.push(opened);
        pair.close().await;
    }
    Summary::of(&samples).context("no sample")
}

/// Throughput of one channel, reliable ordered and unordered, for each message size, and of
/// a TCP connection on loopback with the same sizes: `reps` repetitions of `total` bytes
/// each (TCP: at least 9 when `reps` > 1).
pub async fn throughput(
    sizes: &[usize],
    total: usize,
    reps: usize,
) -> anyhow::Result<Vec<Throughput>> {
    // Generous: 1 MB/s would be a broken stack, not a slow one.
    let deadline = Duration::from_secs((total / 1_000_000).max(10) as u64);
    let mut results = Vec::new();
    for ordered in [true, false] {
        let config = RtcConfig {
            ordered,
            ..RtcConfig::loopback()
        };
        for &message in sizes {
            let (mut pair, _) = Pair::open(&config).await.context("opening the channel")?;
            let mut samples = Vec::new();
            for rep in 1..=reps {
                let rate = pair
                    .throughput(message, total, deadline)
                    .await
                    .with_context(|| {
                        format!(
                            "{} KiB {}, repetition {rep}",
                            message / 1024,
                            order_word(ordered)
                        )
                    })?;
                eprintln!(
                    "  webrtc {} KiB {} {rep}/{reps}: {rate:.1} MB/s",
                    message / 1024,
                    order_word(ordered)
                );
                samples.push(rate);
            }
            pair.close().await;
            results.push(Throughput {
                transport: "webrtc",
                ordered,
                message_bytes: message,
                total_bytes: total,
                median_mb_per_s: stats::median(&samples),
                mb_per_s: samples,
            });
        }
    }
    // TCP moves the same bytes in a few tens of milliseconds, so its figure is noisy: more
    // repetitions, which cost little.
    let tcp_reps = if reps > 1 { reps.max(TCP_REPS) } else { reps };
    for &message in sizes {
        let mut samples = Vec::new();
        for rep in 1..=tcp_reps {
            let rate = tcp_throughput(message, total, deadline)
                .await
                .with_context(|| format!("TCP {} KiB, repetition {rep}", message / 1024))?;
            eprintln!(
                "  tcp {} KiB {rep}/{tcp_reps}: {rate:.1} MB/s",
                message / 1024
            );
            samples.push(rate);
        }
        results.push(Throughput {
            transport: "tcp",
            ordered: true,
            message_bytes: message,
            total_bytes: total,
            median_mb_per_s: stats::median(&samples),
            mb_per_s: samples,
        });
    }
    Ok(results)
}

/// "ordered" or "unordered".
pub fn order_word(ordered: bool) -> &'static str {
    if ordered {
        "ordered"
    } else {
        "unordered"
    }
}

/// Sends `total` bytes over a fresh loopback TCP connection in `message`-byte writes and
/// returns MB/s from the first write to the last byte read.
async fn tcp_throughput(message: usize, total: usize, deadline: Duration) -> anyhow::Result<f64> {
    let count = total / message;
    let total = count * message;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut received = 0;
        while received < total {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                bail!("connection closed after {received} bytes");
            }
            received += n;
        }
        anyhow::Ok(Instant::now())
    });
    let payload = vec![0x5a_u8; message];
    let mut started = Instant::now();
    let done = timeout(deadline, async {
        let mut stream = TcpStream::connect(addr).await?;
        started = Instant::now();
        for _ in 0..count {
            stream.write_all(&payload).await?;
        }
        receiver.await.context("receiver task")?
    })
    .await
    .context("TCP transfer did not finish within the deadline")??;
    Ok(mb_per_s(total, done.duration_since(started)))
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// Moves the events already queued: candidates into the side's list, anything else into
/// `pending` for the main loop.
fn drain(
    events: &mut mpsc::Receiver<(Side, RtcEvent)>,
    offerer: &mut Vec<String>,
    answerer: &mut Vec<String>,
    pending: &mut Vec<(Side, RtcEvent)>,
) {
    while let Ok((side, event)) = events.try_recv() {
        match (side, event) {
            (Side::Offerer, RtcEvent::LocalCandidate(c)) => offerer.push(c),
            (Side::Answerer, RtcEvent::LocalCandidate(c)) => answerer.push(c),
            other => pending.push(other),
        }
    }
}
