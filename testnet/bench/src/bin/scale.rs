//! `kadrtc-scale`: issue 7's in-process figures, on libp2p's memory transport (no socket per
//! DHT connection, so hundreds of nodes fit in one process) with WebRTC on 127.0.0.1.
//!
//! - `network`: N nodes, R rooms of two of them, joined at once or at a given rate: every
//!   pair must connect; join-to-open p50 / p99; as each pair opens, a `get_record` of one of
//!   its mailbox records from a random other node (latency, requests per get against
//!   log₂ N); memory per node; DHT and gossipsub messages per node per minute.
//! - `idle`: two members connected in a room of a small network, then left alone: the
//!   messages per minute of each member and of the network's nodes after the connection.
//! - `soak`: pairs join a fresh room, exchange a message and leave, over and over: RSS and
//!   open files sampled throughout must stay within a bound, and come back once all left.
//!
//! `testnet/scale.sh` runs them (and the multi-process and NAT scenarios) and prints the
//! table; the exit status is non-zero when a scenario's condition does not hold.

#[path = "../logging.rs"]
mod logging;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::{Parser, Subcommand};
use kadrtc::{Multiaddr, Node, PeerId, Room, RoomEvent, Traffic};
use kadrtc_proto::RoomName;
use rand::seq::IndexedRandom as _;
use rand::Rng as _;
use serde::Serialize;

/// Nodes started at once while building a network.
const START_CONCURRENCY: usize = 16;
/// How long the nodes of a fresh network get to fill their routing tables.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "kadrtc-scale",
    version,
    about = "kadrtc at scale, in one process: a network of N nodes with R rooms, an idle pair's traffic, a join-and-leave soak",
    after_help = "Every node listens on libp2p's memory transport; WebRTC binds 127.0.0.1 only. testnet/scale.sh runs all of it."
)]
struct Cli {
    /// Print one JSON object on stdout instead of the text report.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N nodes, R rooms of two members joined at once: every pair connects.
    Network {
        /// Nodes in the network, members included: each serves the DHT (in one process every
        /// node can be dialled, as a `kadrtc node` can).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(4..=1000))]
        nodes: u16,
        /// Rooms, two members each: the last 2 × R nodes.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=500))]
        rooms: u16,
        /// Seconds every pair has to connect, from its own start.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Rooms joined per second (default: all at once).
        #[arg(long, value_name = "ROOMS_PER_S")]
        join_rate: Option<f64>,
        /// Seconds the connected network is watched for its messages per node per minute.
        #[arg(long, default_value_t = 60)]
        observe_s: u64,
        /// Seconds between the last pair's outcome and the watch: the rooms' presence
        /// lookups back off from 10 s to one a minute in about two minutes once connected.
        #[arg(long, default_value_t = 120)]
        settle_s: u64,
    },
    /// Two members connected in a room, then idle: messages per minute afterwards.
    Idle {
        /// Minutes of idleness measured after the connection.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Nodes in the network besides the two members.
        #[arg(long, default_value_t = 10)]
        nodes: u16,
    },
    /// Pairs join fresh rooms and leave, over and over; resources stay bounded.
    Soak {
        /// Minutes of joining and leaving.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Pairs cycling at once.
        #[arg(long, default_value_t = 4)]
        pairs: u16,
        /// Nodes in the network besides the members.
        #[arg(long, default_value_t = 10)]
        nodes: u16,
        /// Seconds from the start of one round of a pair to the start of its next (a member
        /// announces at most 6 rooms a minute: DHT nodes refuse more provider records from
        /// one publisher).
        #[arg(long, default_value_t = 10)]
        round_interval_s: u64,
        /// Most RSS growth allowed, MiB: from the first sample at or after one minute to the
        /// largest after it (not checked in a run too short to have both).
        #[arg(long, default_value_t = 64)]
        max_rss_growth_mib: u64,
        /// Most open files allowed above the start once every pair left.
        #[arg(long, default_value_t = 16)]
        max_leftover_files: usize,
    },
}

fn main() -> std::process::ExitCode {
    logging::init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kadrtc-scale: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("kadrtc-scale: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one scenario and prints its report; `false` when its condition does not hold.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let (passed, report) = match cli.scenario {
        Scenario::Network {
            nodes,
            rooms,
            timeout_s,
            join_rate,
            observe_s,
            settle_s,
        } => {
            ensure!(
                join_rate.is_none_or(|rate| rate.is_finite() && rate > 0.0),
                "--join-rate must be a positive number of rooms per second"
            );
            let report = network(
                usize::from(nodes),
                usize::from(rooms),
                Duration::from_secs(timeout_s),
                join_rate,
                Duration::from_secs(settle_s),
                Duration::from_secs(observe_s),
            )
            .await?;
            (
                report.pairs_connected == report.rooms,
                Report::Network(report),
            )
        }
        Scenario::Idle { minutes, nodes } => {
            let report = idle(usize::from(nodes), minutes_to_duration(minutes)?).await?;
            (true, Report::Idle(report))
        }
        Scenario::Soak {
            minutes,
            pairs,
            nodes,
            round_interval_s,
            max_rss_growth_mib,
            max_leftover_files,
        } => {
            let report = soak(
                usize::from(nodes),
                usize::from(pairs),
                minutes_to_duration(minutes)?,
                Duration::from_secs(round_interval_s),
            )
            .await?;
            let passed = report.failed_rounds == 0
                && report
                    .rss_growth_mib
                    .is_none_or(|growth| growth <= max_rss_growth_mib as f64)
                && report.leftover_files <= max_leftover_files as i64;
            (passed, Report::Soak(report))
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(passed)
}

fn minutes_to_duration(minutes: f64) -> anyhow::Result<Duration> {
    ensure!(
        minutes.is_finite() && minutes > 0.0 && minutes <= 24.0 * 60.0,
        "minutes must be between 0 and 1440, not {minutes}"
    );
    Ok(Duration::from_secs_f64(minutes * 60.0))
}

#[derive(Debug, Serialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
enum Report {
    Network(NetworkReport),
    Idle(IdleReport),
    Soak(SoakReport),
}

#[derive(Debug, Serialize)]
struct NetworkReport {
    /// Nodes in no room.
    dht_nodes: usize,
    /// Every node, members included.
    nodes: usize,
    rooms: usize,
    pairs_connected: usize,
    join_to_open_p50_ms: f64,
    join_to_open_p99_ms: f64,
    join_to_open_max_ms: f64,
    /// Mailbox record gets that finished (found or not), and those that failed.
    gets: usize,
    gets_found: usize,
    gets_failed: usize,
    get_p50_ms: f64,
    get_p99_ms: f64,
    requests_per_get_mean: f64,
    requests_per_get_p99: f64,
    log2_nodes: f64,
    rss_mib: f64,
    rss_per_node_kib: f64,
    /// Rooms joined per second; `None`: all at once.
    join_rate: Option<f64>,
    /// DHT and gossipsub messages per node from the joins to the last channel open.
    setup_messages_per_node: f64,
    /// Then per node per minute, with every pair connected.
    connected_messages_per_node_per_minute: f64,
    /// The same by kind: Kademlia requests sent, answered; topic messages published,
    /// received.
    connected_by_kind_per_node_per_minute: [f64; 4],
    observed_minutes: f64,
    /// Seconds the connected network was left alone before it was watched.
    settled_s: f64,
    start_s: f64,
}

#[derive(Debug, Serialize)]
struct IdleReport {
    nodes: usize,
    minutes: f64,
    /// Per member, per minute, after the connection.
    member_per_minute: Vec<PerMinute>,
    /// Mean over the other nodes, per minute.
    node_per_minute: PerMinute,
}

#[derive(Debug, Serialize)]
struct PerMinute {
    kad_requests_sent: f64,
    kad_requests_received: f64,
    topic_messages_published: f64,
    topic_messages_received: f64,
    pings: f64,
    dht_and_gossipsub: f64,
}

#[derive(Debug, Serialize)]
struct SoakReport {
    minutes: f64,
    pairs: usize,
    rounds: usize,
    failed_rounds: usize,
    round_p50_ms: f64,
    round_max_ms: f64,
    round_interval_s: f64,
    /// Tokio tasks alive before the first round and once every pair left.
    tasks_start: usize,
    tasks_end: usize,
    /// (seconds since start, RSS MiB, open files, tokio tasks alive)
    samples: Vec<(f64, f64, usize, usize)>,
    rss_start_mib: f64,
    rss_max_mib: f64,
    rss_end_mib: f64,
    /// From the first sample at or after one minute (allocator arenas and caches fill during
    /// the first) to the largest sample after it; `None` when the run had no sample after
    /// that one, so nothing to compare.
    rss_growth_mib: Option<f64>,
    files_start: usize,
    files_max: usize,
    files_end: usize,
    leftover_files: i64,
}

impl Report {
    fn text(&self) -> String {
        match self {
            Report::Network(r) => format!(
                "network: {} nodes in one process (all serving the DHT), {} rooms of two of them joined {} ({} nodes in no room)\n\
                 pairs connected        {}/{}\n\
                 join-to-open           p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n\
                 record get             {}/{} found ({} failed); p50 {:.1} ms, p99 {:.1} ms\n\
                 requests per get       mean {:.1}, p99 {:.0} (log2 N = {:.1})\n\
                 memory                 RSS {:.0} MiB, {:.0} KiB per node (peer connections included)\n\
                 messages per node      {:.1} to connect the rooms; then, from {:.0} s later, {:.1} per minute (DHT and gossipsub, over {:.1} min)\n\
                 of which, per minute   kad sent {:.1}, kad answered {:.1}, topic published {:.1}, topic received {:.1}\n\
                 network start          {:.1} s\n",
                r.nodes,
                r.rooms,
                r.join_rate
                    .map_or_else(|| "at once".to_string(), |rate| format!("{rate} per second")),
                r.dht_nodes,
                r.pairs_connected,
                r.rooms,
                r.join_to_open_p50_ms,
                r.join_to_open_p99_ms,
                r.join_to_open_max_ms,
                r.gets_found,
                r.gets,
                r.gets_failed,
                r.get_p50_ms,
                r.get_p99_ms,
                r.requests_per_get_mean,
                r.requests_per_get_p99,
                r.log2_nodes,
                r.rss_mib,
                r.rss_per_node_kib,
                r.setup_messages_per_node,
                r.settled_s,
                r.connected_messages_per_node_per_minute,
                r.observed_minutes,
                r.connected_by_kind_per_node_per_minute[0],
                r.connected_by_kind_per_node_per_minute[1],
                r.connected_by_kind_per_node_per_minute[2],
                r.connected_by_kind_per_node_per_minute[3],
                r.start_s,
            ),
            Report::Idle(r) => {
                let mut text = format!(
                    "idle: two members connected in a room of {} nodes, then {:.1} min alone\n\
                     per minute after the connection: kad sent / kad answered / topic published / topic received / pings = DHT+gossipsub\n",
                    r.nodes, r.minutes
                );
                for (i, m) in r.member_per_minute.iter().enumerate() {
                    text += &format!("member {}               {}\n", i + 1, m.text());
                }
                text += &format!("other nodes (mean)     {}\n", r.node_per_minute.text());
                text
            }
            Report::Soak(r) => {
                let mut text = format!(
                    "soak: {} pairs joining and leaving a fresh room every {:.0} s for {:.1} min\n\
                     rounds                 {} ({} failed); round p50 {:.0} ms, max {:.0} ms\n\
                     RSS                    start {:.1} MiB, max {:.1}, end {:.1} (growth after the first minute: {})\n\
                     open files             start {}, max {}, end {} (left over {})\n\
                     tokio tasks            start {}, end {}\n\
                     samples (s, RSS MiB, files, tasks):",
                    r.pairs,
                    r.round_interval_s,
                    r.minutes,
                    r.rounds,
                    r.failed_rounds,
                    r.round_p50_ms,
                    r.round_max_ms,
                    r.rss_start_mib,
                    r.rss_max_mib,
                    r.rss_end_mib,
                    r.rss_growth_mib.map_or_else(
                        || "n/a, the run is too short".to_string(),
                        |growth| format!("{growth:.1} MiB")
                    ),
                    r.files_start,
                    r.files_max,
                    r.files_end,
                    r.leftover_files,
                    r.tasks_start,
                    r.tasks_end,
                );
                for (t, rss, files, tasks) in &r.samples {
                    text += &format!(" ({t:.0}, {rss:.1}, {files}, {tasks})");
                }
                text + "\n"
            }
        }
    }
}

impl PerMinute {
    fn of(traffic: &Traffic, minutes: f64) -> Self {
        let per = |n: u64| n as f64 / minutes;
        Self {
            kad_requests_sent: per(traffic.kad_requests_sent),
            kad_requests_received: per(traffic.kad_requests_received),
            topic_messages_published: per(traffic.topic_messages_published),
            topic_messages_received: per(traffic.topic_messages_received),
            pings: per(traffic.pings),
            dht_and_gossipsub: per(traffic.total() - traffic.pings),
        }
    }

    fn text(&self) -> String {
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1} / {:.1} = {:.1}",
            self.kad_requests_sent,
            self.kad_requests_received,
            self.topic_messages_published,
            self.topic_messages_received,
            self.pings,
            self.dht_and_gossipsub
        )
    }
}

/// A network of `count` DHT nodes (serving the DHT, like `kadrtc node`) on the memory
/// transport, each bootstrapped from a random earlier one; started a few at a time.
async fn start_network(count: usize) -> anyhow::Result<Vec<Node>> {
    let first = build_node(None, true).await.context("starting node 1")?;
    let mut nodes = vec![first];
    let more = start_nodes(count - 1, &nodes, true).await?;
    nodes.extend(more);
    tokio::time::sleep(SETTLE).await;
    Ok(nodes)
}

/// `count` more nodes, each bootstrapped from a random node of `network`; members (`serve`
/// false) only use the DHT, like `kadrtc join`.
async fn start_nodes(count: usize, network: &[Node], serve: bool) -> anyhow::Result<Vec<Node>> {
    let mut addrs = network
        .iter()
        .map(memory_addr)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut nodes: Vec<Node> = Vec::with_capacity(count);
    while nodes.len() < count {
        let batch = (count - nodes.len()).min(START_CONCURRENCY);
        let mut starting = Vec::with_capacity(batch);
        for _ in 0..batch {
            let bootstrap = addrs.choose(&mut rand::rng()).cloned();
            starting.push(build_node(bootstrap, serve));
        }
        for node in futures::future::try_join_all(starting).await? {
            if serve {
                addrs.push(memory_addr(&node)?);
            }
            nodes.push(node);
        }
        let what = if serve { "DHT nodes" } else { "members" };
        eprint!("\r   {} / {count} {what} started", nodes.len());
    }
    eprintln!();
    Ok(nodes)
}

async fn build_node(bootstrap: Option<Multiaddr>, serve: bool) -> anyhow::Result<Node> {
    let mut builder = Node::builder()
        .listen("/memory/0".parse()?)
        .ice_bind(std::net::Ipv4Addr::LOCALHOST.into())
        .dht_server(serve);
    if let Some(addr) = bootstrap {
        builder = builder.bootstrap(addr);
    }
    Ok(builder.build().await?)
}

fn memory_addr(node: &Node) -> anyhow::Result<Multiaddr> {
    node.listen_addrs()
        .into_iter()
        .find(|addr| addr.to_string().starts_with("/memory/"))
        .context("a node reported no memory address")
}

/// Joins `room` on both nodes at once and returns each member's join-to-open time, or the
/// rooms when the deadline passed first.
async fn connect_pair(
    a: &Node,
    b: &Node,
    room: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<(Room, Room, [Duration; 2])> {
    let started = Instant::now();
    let (room_a, room_b) = tokio::try_join!(a.join(room), b.join(room))?;
    let (mut room_a, mut room_b) = (room_a, room_b);
    let (opened_a, opened_b) = tokio::join!(
        until_open(&mut room_a, b.peer_id(), started, deadline),
        until_open(&mut room_b, a.peer_id(), started, deadline)
    );
    Ok((room_a, room_b, [opened_a?, opened_b?]))
}

/// Waits for the channel to `peer` to open; the time since `started`.
async fn until_open(
    room: &mut Room,
    peer: PeerId,
    started: Instant,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Duration> {
    tokio::time::timeout_at(deadline, async {
        while let Some(event) = room.next_event().await {
            if let RoomEvent::ChannelOpen { peer: opened, .. } = event {
                if opened == peer {
                    return Ok(started.elapsed());
                }
            }
        }
        bail!("room {} ended before its channel opened", room.name())
    })
    .await
    .with_context(|| format!("room {}: no channel open in time", room.name()))?
}

async fn network(
    count: usize,
    rooms: usize,
    timeout: Duration,
    join_rate: Option<f64>,
    settle: Duration,
    observe: Duration,
) -> anyhow::Result<NetworkReport> {
    ensure!(
        2 * rooms <= count,
        "{rooms} rooms need {} member nodes; the network has {count}",
        2 * rooms
    );
    let rss_before = rss_mib()?;
    eprintln!("== network: {count} nodes, {rooms} rooms of two of them");
    let started = Instant::now();
    let nodes = start_network(count).await?;
    let start_s = started.elapsed().as_secs_f64();
    // The members are the last 2 × rooms nodes.
    let dht_nodes = count - 2 * rooms;
    let traffic_before: Vec<Traffic> = nodes.iter().map(Node::traffic).collect();
    let traffic_from = Instant::now();

    let tag: u64 = rand::rng().random();
    let names: Vec<String> = (0..rooms).map(|i| format!("scale-{tag:x}-{i}")).collect();
    let joins = names.iter().enumerate().map(|(i, name)| {
        let (a, b) = (&nodes[dht_nodes + 2 * i], &nodes[dht_nodes + 2 * i + 1]);
        // Each pair's deadline counts from its own start.
        let start_in = join_rate.map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(i as f64 / rate)
        });
        let nodes = &nodes;
        async move {
            tokio::time::sleep(start_in).await;
            let (room_a, room_b, times) =
                connect_pair(a, b, name, tokio::time::Instant::now() + timeout).await?;
            // The mailbox record a wrote for b, while it lives, from a node outside the room.
            let key = RoomName::new(name.clone())?
                .id()
                .mailbox_key(&a.peer_id(), &b.peer_id());
            let asker = loop {
                let node = &nodes[rand::rng().random_range(0..nodes.len())];
                if node.peer_id() != a.peer_id() && node.peer_id() != b.peer_id() {
                    break node;
                }
            };
            let began = Instant::now();
            // A failed get is the lookup's figure, not the pair's: the pair connected.
            let get = match asker.dht().get_record_with_stats(key).await {
                Ok((values, query)) => Some((
                    stats::ms(&began.elapsed()),
                    f64::from(query.requests),
                    !values.is_empty(),
                )),
                Err(error) => {
                    eprintln!("   get of {name}'s mailbox record failed: {error}");
                    None
                }
            };
            anyhow::Ok((room_a, room_b, times, get))
        }
    });
    let outcomes = futures::future::join_all(joins).await;
    let mut open_ms = Vec::new();
    let mut held = Vec::new();
    let mut failures = Vec::new();
    let (mut get_ms, mut requests, mut found, mut gets_failed) = (Vec::new(), Vec::new(), 0, 0);
    for outcome in outcomes {
        match outcome {
            Ok((a, b, times, get)) => {
                open_ms.extend(times.iter().map(stats::ms));
                held.push((a, b));
                if let Some((ms, asked, hit)) = get {
                    get_ms.push(ms);
                    requests.push(asked);
                    found += usize::from(hit);
                } else {
                    gets_failed += 1;
                }
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    let setup_messages = messages_since(&nodes, &traffic_before);
    for failure in failures.iter().take(5) {
        eprintln!("   {failure}");
    }
    eprintln!(
        "   {} / {rooms} pairs connected in {:.1} s",
        held.len(),
        traffic_from.elapsed().as_secs_f64()
    );

    let rss = rss_mib()?;

    if !settle.is_zero() {
        eprintln!(
            "   leaving the connected network alone for {} s",
            settle.as_secs()
        );
        tokio::time::sleep(settle).await;
    }
    eprintln!(
        "   watching the connected network for {} s",
        observe.as_secs()
    );
    let watched_before: Vec<Traffic> = nodes.iter().map(Node::traffic).collect();
    let watched_from = Instant::now();
    tokio::time::sleep(observe).await;
    let minutes = watched_from.elapsed().as_secs_f64() / 60.0;
    let watched = messages_since(&nodes, &watched_before);
    let by_kind = traffic_since(&nodes, &watched_before);
    let per_node_minute = |n: u64| n as f64 / count as f64 / minutes;
    let report = NetworkReport {
        dht_nodes,
        nodes: count,
        rooms,
        pairs_connected: held.len(),
        join_to_open_p50_ms: percentile(&open_ms, 0.50),
        join_to_open_p99_ms: percentile(&open_ms, 0.99),
        join_to_open_max_ms: percentile(&open_ms, 1.0),
        gets: get_ms.len(),
        gets_found: found,
        gets_failed,
        get_p50_ms: percentile(&get_ms, 0.50),
        get_p99_ms: percentile(&get_ms, 0.99),
        requests_per_get_mean: requests.iter().sum::<f64>() / requests.len().max(1) as f64,
        requests_per_get_p99: percentile(&requests, 0.99),
        log2_nodes: (count as f64).log2(),
        rss_mib: rss,
        rss_per_node_kib: (rss - rss_before) * 1024.0 / count as f64,
        join_rate,
        setup_messages_per_node: setup_messages as f64 / count as f64,
        connected_messages_per_node_per_minute: per_node_minute(watched),
        connected_by_kind_per_node_per_minute: [
            per_node_minute(by_kind.kad_requests_sent),
            per_node_minute(by_kind.kad_requests_received),
            per_node_minute(by_kind.topic_messages_published),
            per_node_minute(by_kind.topic_messages_received),
        ],
        observed_minutes: minutes,
        settled_s: settle.as_secs_f64(),
        start_s,
    };
    for (a, b) in held {
        tokio::join!(a.leave(), b.leave());
    }
    Ok(report)
}

/// DHT and gossipsub messages (pings left out) of all `nodes` since `before`.
fn messages_since(nodes: &[Node], before: &[Traffic]) -> u64 {
    let traffic = traffic_since(nodes, before);
    traffic.total() - traffic.pings
}

/// What all `nodes` exchanged since `before` (their snapshots, in the same order).
fn traffic_since(nodes: &[Node], before: &[Traffic]) -> Traffic {
    nodes
        .iter()
        .zip(before)
        .fold(Traffic::default(), |sum, (node, before)| {
            sum.plus(&node.traffic().since(before))
        })
}

async fn idle(others: usize, period: Duration) -> anyhow::Result<IdleReport> {
    eprintln!("== idle: {others} nodes and two members");
    let nodes = start_network(others).await?;
    let mut members = start_nodes(2, &nodes, false).await?;
    let b = members.pop().context("member b")?;
    let a = members.pop().context("member a")?;
    let tag: u64 = rand::rng().random();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (room_a, room_b, _) = connect_pair(&a, &b, &format!("idle-{tag:x}"), deadline).await?;
    // What the set-up itself sent is over once both sides have their channel; a second
    // lets the last answers arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let members_before = [a.traffic(), b.traffic()];
    let nodes_before: Vec<Traffic> = nodes.iter().map(Node::traffic).collect();
    let began = Instant::now();
    let (mut room_a, mut room_b) = (room_a, room_b);
    let watching = watch_idle(&mut room_a, &mut room_b);
    let progress = async {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            let minutes = began.elapsed().as_secs_f64() / 60.0;
            let now = a.traffic().since(&members_before[0]);
            eprintln!(
                "   {minutes:.0} min: member 1 {:.1} DHT+gossipsub messages per minute",
                (now.total() - now.pings) as f64 / minutes
            );
        }
    };
    tokio::select! {
        result = watching => result?,
        () = progress => {}
        () = tokio::time::sleep(period) => {}
    }
    let minutes = began.elapsed().as_secs_f64() / 60.0;
    let member_per_minute = [&a, &b]
        .iter()
        .zip(&members_before)
        .map(|(node, before)| PerMinute::of(&node.traffic().since(before), minutes))
        .collect();
    let mut sum = Traffic::default();
    for (node, before) in nodes.iter().zip(&nodes_before) {
        let t = node.traffic().since(before);
        sum = add(&sum, &t);
    }
    let mean = PerMinute::of(&sum, minutes * nodes.len() as f64);
    tokio::join!(room_a.leave(), room_b.leave());
    Ok(IdleReport {
        nodes: others,
        minutes,
        member_per_minute,
        node_per_minute: mean,
    })
}

/// Drains both rooms' events (pings and pongs are not events) until one says something went
/// wrong: a member reported left, or a room ended.
async fn watch_idle(room_a: &mut Room, room_b: &mut Room) -> anyhow::Result<()> {
    loop {
        let event = tokio::select! {
            event = room_a.next_event() => event,
            event = room_b.next_event() => event,
        };
        check_idle_event(event)?;
    }
}

fn check_idle_event(event: Option<RoomEvent>) -> anyhow::Result<()> {
    match event {
        Some(RoomEvent::PeerLeft { peer, .. }) => bail!("{peer} was reported left while idle"),
        Some(_) => Ok(()),
        None => bail!("a room ended while idle"),
    }
}

fn add(a: &Traffic, b: &Traffic) -> Traffic {
    let mut sum = *a;
    sum.kad_requests_sent += b.kad_requests_sent;
    sum.kad_requests_received += b.kad_requests_received;
    sum.topic_messages_published += b.topic_messages_published;
    sum.topic_messages_received += b.topic_messages_received;
    sum.pings += b.pings;
    sum
}

async fn soak(
    others: usize,
    pairs: usize,
    period: Duration,
    round_interval: Duration,
) -> anyhow::Result<SoakReport> {
    eprintln!("== soak: {pairs} pairs over {others} nodes");
    let nodes = start_network(others).await?;
    let mut started = start_nodes(2 * pairs, &nodes, false).await?.into_iter();
    let mut members: Vec<(Node, Node)> = Vec::with_capacity(pairs);
    while let (Some(a), Some(b)) = (started.next(), started.next()) {
        members.push((a, b));
    }
    let began = Instant::now();
    let end = began + period;
    let files_start = open_files()?;
    let rss_start = rss_mib()?;
    let tasks_start = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let samples = vec![(0.0, rss_start, files_start, tasks_start)];
    let rounds = members.iter().enumerate().map(|(p, (a, b))| async move {
        tokio::time::sleep(round_interval.mul_f64(p as f64 / pairs as f64)).await;
        let mut times = Vec::new();
        let mut failed = 0;
        let mut round = 0u64;
        while Instant::now() < end {
            round += 1;
            let room = format!("soak-{p}-{round}-{:x}", rand::rng().random::<u32>());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let began = Instant::now();
            match soak_round(a, b, &room, deadline).await {
                Ok(()) => times.push(stats::ms(&began.elapsed())),
                Err(error) => {
                    eprintln!("   round {round} of pair {p} failed: {error:#}");
                    failed += 1;
                }
            }
            // Pairs start their rounds spread over the interval, not all at once.
            let next = began + round_interval;
            tokio::time::sleep_until(next.min(end).into()).await;
        }
        (times, failed)
    });
    let sampled = std::cell::RefCell::new(samples);
    let sampling = async {
        let mut tick = tokio::time::interval(Duration::from_secs(15));
        tick.tick().await;
        loop {
            tick.tick().await;
            let (rss, files) = (rss_mib().unwrap_or(0.0), open_files().unwrap_or(0));
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            let t = began.elapsed().as_secs_f64();
            eprintln!("   {t:.0} s: RSS {rss:.1} MiB, {files} open files, {tasks} tasks");
            sampled.borrow_mut().push((t, rss, files, tasks));
        }
    };
    let outcome = tokio::select! {
        outcome = futures::future::join_all(rounds) => outcome,
        _ = sampling => unreachable!("sampling never ends"),
    };
    // Room teardown is bounded by LEAVE_LIMIT; the last sockets close shortly after, and the
    // last DHT queries of the rooms end within the query timeout (10 s).
    let settle_until = Instant::now() + kadrtc::LEAVE_LIMIT + Duration::from_secs(15);
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let mut files_end = open_files()?;
    while (files_end > files_start || alive() > tasks_start) && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        files_end = open_files()?;
    }
    let rss_end = rss_mib()?;
    let tasks_end = alive();
    let mut samples = sampled.into_inner();
    samples.push((began.elapsed().as_secs_f64(), rss_end, files_end, tasks_end));
    let mut times = Vec::new();
    let mut failed_rounds = 0;
    for (t, failed) in outcome {
        times.extend(t);
        failed_rounds += failed;
    }
    // Growth: from the first sample at or after a minute of rounds (allocator arenas and
    // caches fill during the first) to the largest one after it.
    let rss_growth_mib = samples.iter().position(|s| s.0 >= 60.0).and_then(|first| {
        let baseline = samples[first].1;
        let later = &samples[first + 1..];
        let largest = later.iter().map(|s| s.1).reduce(f64::max)?;
        Some((largest - baseline).max(0.0))
    });
    let rss_max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    Ok(SoakReport {
        minutes: period.as_secs_f64() / 60.0,
        pairs,
        round_interval_s: round_interval.as_secs_f64(),
        rounds: times.len() + failed_rounds,
        failed_rounds,
        round_p50_ms: percentile(&times, 0.5),
        round_max_ms: percentile(&times, 1.0),
        rss_start_mib: rss_start,
        rss_max_mib: rss_max,
        rss_end_mib: rss_end,
        rss_growth_mib,
        files_start,
        files_max: samples.iter().map(|s| s.2).max().unwrap_or(0),
        files_end,
        leftover_files: files_end as i64 - files_start as i64,
        tasks_start,
        tasks_end,
        samples,
    })
}

/// One soak round: both join, the channel opens, a message crosses, both leave.
async fn soak_round(
    a: &Node,
    b: &Node,
    room: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let (room_a, mut room_b, _) = connect_pair(a, b, room, deadline).await?;
    room_a.send(b.peer_id(), b"soak").await?;
    tokio::time::timeout_at(deadline, async {
        while let Some(event) = room_b.next_event().await {
            if let RoomEvent::Message { data, .. } = event {
                ensure!(data == b"soak", "unexpected message");
                return Ok(());
            }
        }
        bail!("room ended before the message")
    })
    .await
    .context("message not delivered in time")??;
    tokio::join!(room_a.leave(), room_b.leave());
    Ok(())
}

/// The `p` quantile (nearest rank) of `samples`; 0 when there are none.
fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    stats::percentile(&sorted, p)
}

/// This process's resident set, MiB (`VmRSS` of /proc/self/status).
fn rss_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no VmRSS in /proc/self/status")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// Files this process holds open.
fn open_files() -> anyhow::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}
