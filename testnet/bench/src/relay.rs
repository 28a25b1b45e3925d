//! The baseline: a central WebSocket signaling relay, the design of the WebRTC tutorials.
//! One server on 127.0.0.1 relays JSON messages between the two clients of a room; each
//! client has a `kadrtc_rtc::PeerConnection` with the configuration a kadrtc joiner on
//! loopback uses. The first client to join offers once the second has joined; candidates
//! trickle through the relay as they are gathered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::{SinkExt as _, StreamExt as _};
use kadrtc_rtc::{PeerConnection, RtcConfig, RtcEvent};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::join::{self, JoinResult, RunTimes};
use crate::rtc::CLOSE_DEADLINE;
use crate::stats;

/// Largest message the relay accepts; an SDP with its candidates is a few KiB.
const MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Messages queued for one client before the relay waits for it.
const CLIENT_QUEUE: usize = 64;
/// Clients in one room.
const ROOM_SIZE: usize = 2;
/// Capacity of one client's WebRTC event channel.
const EVENT_CAPACITY: usize = 64;
/// How long one client may take from connecting to its open channel.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// What clients and the relay say to each other, one JSON object per WebSocket text
/// message, tagged by `type`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Signal {
    /// Client → relay: put me in this room.
    Join { room: String },
    /// Relay → client: you are in; `initiator` when you were first (you will offer).
    Joined { initiator: bool },
    /// Relay → the first client: the second one has joined; offer now.
    PeerJoined,
    /// Relayed: the offer's SDP.
    Offer { sdp: String },
    /// Relayed: the answer's SDP.
    Answer { sdp: String },
    /// Relayed: one ICE candidate (`candidate:...`).
    Candidate { candidate: String },
    /// Relay → client: the request was refused.
    Error { message: String },
}

/// The running relay. Dropping it stops accepting clients.
pub struct RelayServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Senders of each room's clients, by client id.
type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::Sender<String>)>>>>;

/// One client with an open channel, kept until both sides are open.
struct Session {
    connection: PeerConnection,
    /// When the channel opened.
    opened_at: Instant,
    /// From connecting to the relay to the open channel.
    own: Duration,
}

impl RelayServer {
    /// Listens on 127.0.0.1 (port chosen by the OS) and serves clients.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let rooms = Rooms::default();
        let task = tokio::spawn(async move {
            let mut next_id = 0u64;
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        next_id += 1;
                        let rooms = rooms.clone();
                        let id = next_id;
                        tokio::spawn(async move {
                            if let Err(error) = serve(stream, rooms, id).await {
                                tracing::debug!(%error, "relay client");
                            }
                        });
                    }
                    Err(error) => tracing::warn!(%error, "relay accept"),
                }
            }
        });
        Ok(Self { addr, task })
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `runs` runs (after one warm-up run that is not counted) of two clients joining a fresh
/// room at once through a fresh relay.
pub async fn measure(runs: usize) -> anyhow::Result<JoinResult> {
    let server = RelayServer::start().await.context("starting the relay")?;
    let url = server.url();
    let room = format!("bench-relay-{:016x}", rand::random::<u64>());
    one_run(&url, &format!("{room}-warmup"))
        .await
        .context("warm-up run")?;
    let mut times = Vec::new();
    let mut failed = 0;
    for run in 1..=runs {
        match one_run(&url, &format!("{room}-{run}")).await {
            Ok(t) => {
                eprintln!(
                    "  relay join run {run}/{runs}: both {} ms (A {} ms, B {} ms)",
                    stats::fmt_ms(stats::ms(&t.both)),
                    stats::fmt_ms(stats::ms(&t.a)),
                    stats::fmt_ms(stats::ms(&t.b)),
                );
                times.push(t);
            }
            Err(error) => {
                eprintln!("  relay join run {run}/{runs} failed: {error:#}");
                failed += 1;
            }
        }
    }
    join::summarize(&times, failed)
}

async fn one_run(url: &str, room: &str) -> anyhow::Result<RunTimes> {
    let started = Instant::now();
    let (a, b) = tokio::join!(client(url, room), client(url, room));
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for session in [&a, &b].into_iter().flatten() {
                let _ = timeout(CLOSE_DEADLINE, session.connection.close()).await;
            }
            bail!(
                "{}",
                [a.err(), b.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| format!("{e:#}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    };
    let both = a.opened_at.max(b.opened_at).duration_since(started);
    let _ = timeout(CLOSE_DEADLINE, async {
        a.connection.close().await;
        b.connection.close().await;
    })
    .await;
    Ok(RunTimes {
        both,
        a: a.own,
        b: b.own,
    })
}

/// One client: connects, joins `room`, negotiates through the relay and returns once its
/// channel is open.
async fn client(url: &str, room: &str) -> anyhow::Result<Session> {
    let connecting = Instant::now();
    timeout(OPEN_DEADLINE, negotiate(url, room, connecting))
        .await
        .context("no channel within the deadline")?
}

async fn negotiate(url: &str, room: &str, connecting: Instant) -> anyhow::Result<Session> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("connecting to the relay")?;
    send(
        &mut ws,
        &Signal::Join {
            room: room.to_string(),
        },
    )
    .await?;
    let config = RtcConfig::loopback();
    let (tx, mut events) = mpsc::channel(EVENT_CAPACITY);
    let mut connection: Option<PeerConnection> = None;
    let mut remote_set = false;
    let mut early_candidates = Vec::new();
    loop {
        tokio::select! {
            message = ws.next() => {
                let message = message.context("the relay closed the connection")??;
                let Message::Text(text) = message else { continue };
                match serde_json::from_str::<Signal>(text.as_str()).context("relay message")? {
                    Signal::Joined { .. } | Signal::Join { .. } => {}
                    Signal::PeerJoined => {
                        let pc = PeerConnection::new(&config, (), tx.clone()).await?;
                        let sdp = pc.create_offer().await?;
                        send(&mut ws, &Signal::Offer { sdp }).await?;
                        connection = Some(pc);
                    }
                    Signal::Offer { sdp } => {
                        let pc = PeerConnection::new(&config, (), tx.clone()).await?;
                        let sdp = pc.accept_offer(sdp, &[]).await?;
                        send(&mut ws, &Signal::Answer { sdp }).await?;
                        remote_set = true;
                        for candidate in early_candidates.drain(..) {
                            pc.add_candidate(candidate).await?;
                        }
                        connection = Some(pc);
                    }
                    Signal::Answer { sdp } => {
                        let pc = connection.as_ref().context("answer before offer")?;
                        pc.apply_answer(sdp, &[]).await?;
                        remote_set = true;
                        for candidate in early_candidates.drain(..) {
                            pc.add_candidate(candidate).await?;
                        }
                    }
                    Signal::Candidate { candidate } => match &connection {
                        Some(pc) if remote_set => pc.add_candidate(candidate).await?,
                        _ => early_candidates.push(candidate),
                    },
                    Signal::Error { message } => bail!("the relay refused: {message}"),
                }
            }
            Some(((), event)) = events.recv() => match event {
                RtcEvent::LocalCandidate(candidate) => {
                    send(&mut ws, &Signal::Candidate { candidate }).await?;
                }
                RtcEvent::ChannelOpen(_) => {
                    let opened_at = Instant::now();
                    let _ = ws.close(None).await;
                    return Ok(Session {
                        connection: connection.context("open channel without a connection")?,
                        opened_at,
                        own: opened_at.duration_since(connecting),
                    });
                }
                RtcEvent::Failed(reason) => bail!("peer connection failed: {reason}"),
                _ => {}
            },
        }
    }
}

async fn send<S>(ws: &mut S, signal: &Signal) -> anyhow::Result<()>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let text = serde_json::to_string(signal)?;
    ws.send(Message::text(text))
        .await
        .context("sending to the relay")
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}

/// Serves one client: its first message must be `join`; every later message is relayed as
/// is to the other member of its room.
async fn serve(stream: TcpStream, rooms: Rooms, id: u64) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await?;
    let (mut sink, mut incoming) = ws.split();
    let (tx, mut outgoing) = mpsc::channel::<String>(CLIENT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(text) = outgoing.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut joined: Option<String> = None;
    let result = async {
        while let Some(message) = incoming.next().await {
            let text = match message? {
                Message::Text(text) => text,
                Message::Close(_) => break,
                _ => continue,
            };
            let signal = serde_json::from_str::<Signal>(text.as_str());
            match (&joined, signal) {
                (None, Ok(Signal::Join { room })) => {
                    let (initiator, first) = {
                        let mut rooms = rooms.lock().unwrap_or_else(PoisonError::into_inner);
                        let members = rooms.entry(room.clone()).or_default();
                        if members.len() >= ROOM_SIZE {
                            (None, None)
                        } else {
                            members.push((id, tx.clone()));
                            let first = members.first().map(|(_, s)| s.clone());
                            (Some(members.len() == 1), first)
                        }
                    };
                    let Some(initiator) = initiator else {
                        reply(
                            &tx,
                            &Signal::Error {
                                message: "room is full".into(),
                            },
                        )
                        .await?;
                        continue;
                    };
                    reply(&tx, &Signal::Joined { initiator }).await?;
                    if let (false, Some(first)) = (initiator, first) {
                        reply(&first, &Signal::PeerJoined).await?;
                    }
                    joined = Some(room);
                }
                (Some(room), Ok(_)) => {
                    let others: Vec<mpsc::Sender<String>> = rooms
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(room)
                        .map(|members| {
                            members
                                .iter()
                                .filter(|(member, _)| *member != id)
                                .map(|(_, s)| s.clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    for other in others {
                        // A member that left has dropped its queue; nothing to do.
                        let _ = other.send(text.as_str().to_string()).await;
                    }
                }
                (_, Ok(_)) => {
                    reply(
                        &tx,
                        &Signal::Error {
                            message: "join a room first".into(),
                        },
                    )
                    .await?;
                }
                (_, Err(error)) => {
                    reply(
                        &tx,
                        &Signal::Error {
                            message: format!("not a signal: {error}"),
                        },
                    )
                    .await?;
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(room) = joined {
        let mut rooms = rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(members) = rooms.get_mut(&room) {
            members.retain(|(member, _)| *member != id);
            if members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    result
}

async fn reply(to: &mpsc::Sender<String>, signal: &Signal) -> anyhow::Result<()> {
    to.send(serde_json::to_string(signal)?)
        .await
        .map_err(|_| anyhow::anyhow!("client gone"))
}
