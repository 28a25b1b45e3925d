//! Join-to-open through kadrtc: 5 in-process DHT nodes on 127.0.0.1 and two joiners
//! bootstrapped from different nodes, a fresh room per run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kadrtc::{Multiaddr, Node, Room, RoomEvent};
use serde::Serialize;
use tokio::time::timeout;

use crate::stats::{self, Summary};

/// DHT nodes of the testnet.
const TESTNET_NODES: usize = 5;
/// How long one joiner may take from `join()` to its open channel.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);
/// How long building a node may take.
const BUILD_DEADLINE: Duration = Duration::from_secs(20);
/// How long leaving a room may take (`Room::leave` gives up after 4 s itself).
const LEAVE_DEADLINE: Duration = Duration::from_secs(5);

/// Join-to-open figures of one way of signaling.
#[derive(Debug, Clone, Serialize)]
pub struct JoinResult {
    /// From the start of both joins to both channels open (the later of the two sides).
    pub both_open: Summary,
    /// Each side's own figure: first joiner (for kadrtc, its `ChannelOpen::elapsed`, since
    /// its `join()` began).
    pub side_a: Summary,
    /// The second joiner's own figure.
    pub side_b: Summary,
    /// Runs that did not open within the deadline (not in the figures).
    pub failed_runs: usize,
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
pub struct RunTimes {
    /// From the start of both joins to both channels open.
    pub both: Duration,
    /// Side A's own figure.
    pub a: Duration,
    /// Side B's own figure.
    pub b: Duration,
}

/// A loopback testnet of [`TESTNET_NODES`] DHT-serving nodes.
pub struct Testnet {
    nodes: Vec<Node>,
}

impl Testnet {
    /// Starts the nodes: the first alone, the others bootstrapped from it.
    pub async fn start() -> anyhow::Result<Self> {
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..TESTNET_NODES {
            let mut builder = Node::builder().listen(loopback_tcp()).dht_server(true);
            if let Some(first) = nodes.first() {
                builder = builder.bootstrap(first_addr(first)?);
            }
            let node = timeout(BUILD_DEADLINE, builder.build())
                .await
                .with_context(|| format!("node {i} did not start in time"))?
                .with_context(|| format!("node {i}"))?;
            nodes.push(node);
        }
        Ok(Self { nodes })
    }

    /// The bootstrap address of node `i`.
    pub fn addr(&self, i: usize) -> anyhow::Result<Multiaddr> {
        first_addr(self.nodes.get(i).context("no such node")?)
    }
}

/// `runs` runs (after one warm-up run that is not counted) of two joiners, bootstrapped
/// from nodes 2 and 4 of a fresh 5-node testnet, joining a fresh room at the same moment.
pub async fn measure(runs: usize) -> anyhow::Result<JoinResult> {
    let testnet = Testnet::start().await.context("starting the testnet")?;
    let room = format!("bench-join-{:016x}", rand::random::<u64>());
    one_run(&testnet, &format!("{room}-warmup"))
        .await
        .context("warm-up run")?;
    let mut times = Vec::new();
    let mut failed = 0;
    for run in 1..=runs {
        match one_run(&testnet, &format!("{room}-{run}")).await {
            Ok(t) => {
                eprintln!(
                    "  kadrtc join run {run}/{runs}: both {} ms (A {} ms, B {} ms)",
                    stats::fmt_ms(stats::ms(&t.both)),
                    stats::fmt_ms(stats::ms(&t.a)),
                    stats::fmt_ms(stats::ms(&t.b)),
                );
                times.push(t);
            }
            Err(error) => {
                eprintln!("  kadrtc join run {run}/{runs} failed: {error:#}");
                failed += 1;
            }
        }
    }
    summarize(&times, failed)
}

/// The figures of successful runs; an error when every run failed.
pub fn summarize(times: &[RunTimes], failed_runs: usize) -> anyhow::Result<JoinResult> {
    let pick = |f: fn(&RunTimes) -> Duration| times.iter().map(f).collect::<Vec<_>>();
    Ok(JoinResult {
        both_open: Summary::of(&pick(|t| t.both)).context("every run failed")?,
        side_a: Summary::of(&pick(|t| t.a)).context("every run failed")?,
        side_b: Summary::of(&pick(|t| t.b)).context("every run failed")?,
        failed_runs,
    })
}

/// Two joiners (built before the clock starts), bootstrapped from nodes 2 and 4, join
/// `room` at once; returns both open since the joins began, and each side's `elapsed`.
async fn one_run(testnet: &Testnet, room: &str) -> anyhow::Result<RunTimes> {
    let a = joiner(testnet.addr(1)?).await?;
    let b = joiner(testnet.addr(3)?).await?;
    let started = Instant::now();
    let (ra, rb) = tokio::join!(join_until_open(&a, room), join_until_open(&b, room));
    let (room_a, elapsed_a, at_a) = ra.context("joiner A")?;
    let (room_b, elapsed_b, at_b) = rb.context("joiner B")?;
    let both = at_a.max(at_b).duration_since(started);
    tokio::join!(leave(room_a), leave(room_b));
    Ok(RunTimes {
        both,
        a: elapsed_a,
        b: elapsed_b,
    })
}

/// A joiner as the README's library example builds one: a DHT client on 127.0.0.1.
pub(crate) async fn joiner(bootstrap: Multiaddr) -> anyhow::Result<Node> {
    timeout(
        BUILD_DEADLINE,
        Node::builder()
            .listen(loopback_tcp())
            .bootstrap(bootstrap)
            .build(),
    )
    .await
    .context("joiner did not start in time")?
    .context("joiner")
}

/// Joins `room` and waits for the first open channel: the room, the event's `elapsed`, and
/// when it arrived.
async fn join_until_open(node: &Node, room: &str) -> anyhow::Result<(Room, Duration, Instant)> {
    let opened = timeout(OPEN_DEADLINE, async {
        let mut room = node.join(room).await.context("join")?;
        while let Some(event) = room.next_event().await {
            match event {
                RoomEvent::ChannelOpen { elapsed, .. } => {
                    return Ok((room, elapsed, Instant::now()))
                }
                RoomEvent::Error { peer, error } => {
                    tracing::warn!(?peer, %error, "room error during the join benchmark");
                }
                _ => {}
            }
        }
        bail!("the room closed before a channel opened")
    })
    .await
    .context("no channel within the deadline")??;
    Ok(opened)
}

async fn leave(room: Room) {
    let _ = timeout(LEAVE_DEADLINE, room.leave()).await;
}

/// `/ip4/127.0.0.1/tcp/0`.
pub fn loopback_tcp() -> Multiaddr {
    Multiaddr::empty()
        .with(libp2p::multiaddr::Protocol::Ip4(
            std::net::Ipv4Addr::LOCALHOST,
        ))
        .with(libp2p::multiaddr::Protocol::Tcp(0))
}

/// A node's first listen address (ending in `/p2p/<PeerId>`).
pub fn first_addr(node: &Node) -> anyhow::Result<Multiaddr> {
    node.listen_addrs()
        .into_iter()
        .next()
        .context("node has no listen address")
}
