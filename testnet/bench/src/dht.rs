//! Kademlia lookups: `get_record` latency and requests per query in a network of N DHT
//! nodes on 127.0.0.1, with a small replication factor so that a record lives on a few
//! nodes only and a get must travel.
//!
//! The nodes run [`NODES_PER_PROCESS`] to a process: the first ones in the benchmark's own
//! process, the rest in worker processes (this executable started with `--dht-worker`)
//! that take commands as JSON lines on stdin and answer on stdout. One process cannot hold
//! 200 nodes: each node keeps ≈ 60 connections open, both ends of each in the same process
//! when it is local, and 160 nodes reach this machine's limit of 20,000 open files.

use std::num::NonZeroUsize;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use kadrtc_dht::{DhtConfig, DhtHandle};
use kadrtc_proto::{
    unix_time_ms, Body, Envelope, RoomKey, RoomName, SessionId, Signal, ENVELOPE_VERSION,
};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

use crate::join::loopback_tcp;
use crate::stats::{self, Summary};

/// Kademlia replication factor of the benchmark network: each record is stored on the 3
/// nodes closest to its key (with the default 20, every node of a network under 20 nodes
/// holds every record, DESIGN.md facts).
pub const REPLICATION_FACTOR: usize = 3;
/// Most DHT nodes in one process.
pub const NODES_PER_PROCESS: usize = 50;
/// How long one node may take to start and reach its bootstrap node.
const SPAWN_DEADLINE: Duration = Duration::from_secs(30);
/// How long one put or get may take (the DHT's own query timeout is 10 s).
const QUERY_DEADLINE: Duration = Duration::from_secs(30);
/// How long the network settles after the last node started (its Kademlia bootstrap
/// query, and the periodic ones of the first nodes).
const SETTLE: Duration = Duration::from_secs(2);
/// How long records live.
const RECORD_TTL: Duration = Duration::from_secs(300);

/// Lookups in a network of `nodes` nodes.
#[derive(Debug, Clone, Serialize)]
pub struct DhtResult {
    /// Nodes in the network.
    pub nodes: usize,
    /// Processes they ran in ([`NODES_PER_PROCESS`] at most each).
    pub processes: usize,
    /// log₂(nodes): the order of a Kademlia lookup's rounds.
    pub log2_nodes: f64,
    /// Replication factor (k).
    pub replication_factor: usize,
    /// Wall time of each `get_record`, from the call to the returned values (the whole
    /// query: libp2p-kad ends a get when the k closest nodes it heard of have answered).
    pub get: Summary,
    /// Mean Kademlia requests one get sent (`QueryStats::requests`: one per node asked,
    /// those still unanswered when the query ended included).
    pub mean_requests: f64,
    /// Mean requests answered per get.
    pub mean_successes: f64,
    /// Mean requests failed per get.
    pub mean_failures: f64,
    /// Gets that returned the record.
    pub found: usize,
    /// Gets made.
    pub gets: usize,
    /// Wall time of each `put_record` (quorum one).
    pub put: Summary,
    /// Seconds to start every node.
    pub startup_s: f64,
}

/// What the benchmark tells a worker, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WorkerCommand {
    /// Start `nodes` nodes, each bootstrapped from a random address of `bootstrap` or of
    /// the worker's earlier nodes.
    Start {
        nodes: usize,
        bootstrap: Vec<String>,
    },
    /// `get_record` the hex-encoded `key` from node `node` of this worker.
    Get { node: usize, key: String },
}

/// What a worker answers, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WorkerReply {
    /// Every node is up; their first listen addresses.
    Ready { addrs: Vec<String> },
    /// One get's figures.
    Got(GetSample),
    /// A command failed.
    Failed { error: String },
}

/// One `get_record`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct GetSample {
    /// Wall time of the call, ms.
    ms: f64,
    /// Whether it returned a value.
    found: bool,
    requests: u32,
    successes: u32,
    failures: u32,
}

/// A worker process hosting some of the nodes.
struct Worker {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// How many nodes it hosts.
    nodes: usize,
}

/// Starts `nodes` DHT nodes (each bootstrapped from a random earlier one), puts `gets`
/// records from node 0, then gets each from a random other node.
pub async fn measure(nodes: usize, gets: usize, logs: &Path) -> anyhow::Result<DhtResult> {
    ensure!(nodes >= 2, "a lookup needs at least 2 nodes");
    let started = Instant::now();
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let writer_key = Keypair::generate_ed25519();
    let local = spawn_nodes(
        nodes.min(NODES_PER_PROCESS),
        &[],
        Some(writer_key.clone()),
        &mut rng,
    )
    .await?;
    let mut addrs = first_addrs(&local)?;
    let mut workers = Vec::new();
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    while addrs.len() < nodes {
        let count = (nodes - addrs.len()).min(NODES_PER_PROCESS);
        let log = logs.join(format!("dht-worker-{}.stderr", workers.len() + 1));
        let (worker, new) = Worker::start(count, &addrs, &log).await.with_context(|| {
            format!(
                "worker process {} (see {})",
                workers.len() + 1,
                log.display()
            )
        })?;
        addrs.extend(new);
        workers.push(worker);
        eprintln!("  dht: {} of {nodes} nodes up", addrs.len());
    }
    let startup = started.elapsed();
    tokio::time::sleep(SETTLE).await;

    let writer = &local[0];
    let room = RoomName::new("bench-dht").context("room name")?;
    let room_key = RoomKey::derive(&room);
    let mut keys = Vec::with_capacity(gets);
    let mut puts = Vec::with_capacity(gets);
    for i in 0..gets {
        let envelope = record(&writer_key, &room);
        let key = envelope
            .room_id
            .mailbox_key(&envelope.from, &envelope.to.context("recipient")?);
        let value = envelope.sign(&writer_key, &room_key)?;
        let put_started = Instant::now();
        timeout(
            QUERY_DEADLINE,
            writer.put_record(key.clone(), value, RECORD_TTL),
        )
        .await
        .with_context(|| format!("put {i} did not finish in time"))?
        .with_context(|| format!("put {i}"))?;
        puts.push(put_started.elapsed());
        keys.push(key);
    }

    let mut samples = Vec::with_capacity(gets);
    for (i, key) in keys.into_iter().enumerate() {
        let mut reader = rng.random_range(1..nodes);
        let sample = if reader < local.len() {
            get(&local[reader], key).await
        } else {
            reader -= local.len();
            let mut result = None;
            for worker in &mut workers {
                if reader < worker.nodes {
                    result = Some(worker.get(reader, &key).await);
                    break;
                }
                reader -= worker.nodes;
            }
            result.context("no such node")?
        }
        .with_context(|| format!("get {i}"))?;
        samples.push(sample);
    }
    drop(local);
    drop(workers);

    let latencies: Vec<f64> = samples.iter().map(|s| s.ms).collect();
    let mean = |f: fn(&GetSample) -> u32| {
        samples.iter().map(|s| f64::from(f(s))).sum::<f64>() / samples.len().max(1) as f64
    };
    let result = DhtResult {
        nodes,
        processes: 1 + nodes.saturating_sub(1) / NODES_PER_PROCESS,
        log2_nodes: (nodes as f64).log2(),
        replication_factor: REPLICATION_FACTOR,
        get: Summary::of_ms(&latencies).context("no get")?,
        mean_requests: mean(|s| s.requests),
        mean_successes: mean(|s| s.successes),
        mean_failures: mean(|s| s.failures),
        found: samples.iter().filter(|s| s.found).count(),
        gets,
        put: Summary::of(&puts).context("no put")?,
        startup_s: startup.as_secs_f64(),
    };
    eprintln!(
        "  dht N={nodes}: get p50 {} ms, p90 {} ms, {:.1} requests per get, {}/{gets} found",
        stats::fmt_ms(result.get.median_ms),
        stats::fmt_ms(result.get.p90_ms),
        result.mean_requests,
        result.found,
    );
    Ok(result)
}

/// The worker process: reads [`WorkerCommand`]s on stdin and answers [`WorkerReply`]s on
/// stdout until stdin ends.
pub async fn worker_main() -> anyhow::Result<()> {
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut nodes: Vec<DhtHandle> = Vec::new();
    while let Some(line) = commands.next_line().await? {
        let reply = match serde_json::from_str::<WorkerCommand>(&line) {
            Ok(WorkerCommand::Start {
                nodes: count,
                bootstrap,
            }) => {
                let bootstrap = bootstrap
                    .iter()
                    .map(|a| a.parse::<Multiaddr>())
                    .collect::<Result<Vec<_>, _>>();
                match bootstrap {
                    Ok(bootstrap) => match spawn_nodes(count, &bootstrap, None, &mut rng).await {
                        Ok(spawned) => {
                            nodes = spawned;
                            match first_addrs(&nodes) {
                                Ok(addrs) => WorkerReply::Ready {
                                    addrs: addrs.iter().map(ToString::to_string).collect(),
                                },
                                Err(error) => failed(&error),
                            }
                        }
                        Err(error) => failed(&error),
                    },
                    Err(error) => failed(&anyhow::Error::new(error)),
                }
            }
            Ok(WorkerCommand::Get { node, key }) => match (nodes.get(node), from_hex(&key)) {
                (Some(handle), Some(key)) => match get(handle, key).await {
                    Ok(sample) => WorkerReply::Got(sample),
                    Err(error) => failed(&error),
                },
                _ => WorkerReply::Failed {
                    error: format!("no node {node} or bad key"),
                },
            },
            Err(error) => failed(&anyhow::Error::new(error)),
        };
        let mut text = serde_json::to_string(&reply)?;
        text.push('\n');
        stdout.write_all(text.as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

impl Worker {
    /// Starts a worker hosting `nodes` nodes bootstrapped from `bootstrap`; returns it and
    /// its nodes' addresses.
    async fn start(
        nodes: usize,
        bootstrap: &[Multiaddr],
        log: &Path,
    ) -> anyhow::Result<(Self, Vec<Multiaddr>)> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let stderr =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(exe)
            .arg("--dht-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        let mut worker = Self {
            _child: child,
            stdin,
            stdout,
            nodes,
        };
        let deadline = SPAWN_DEADLINE + Duration::from_secs(nodes as u64);
        let reply = worker
            .ask(
                &WorkerCommand::Start {
                    nodes,
                    bootstrap: bootstrap.iter().map(ToString::to_string).collect(),
                },
                deadline,
            )
            .await?;
        let WorkerReply::Ready { addrs } = reply else {
            bail!("unexpected answer {reply:?}");
        };
        let addrs = addrs
            .iter()
            .map(|a| a.parse::<Multiaddr>())
            .collect::<Result<Vec<_>, _>>()
            .context("worker address")?;
        Ok((worker, addrs))
    }

    /// Gets `key` from the worker's node `node`.
    async fn get(&mut self, node: usize, key: &[u8]) -> anyhow::Result<GetSample> {
        let command = WorkerCommand::Get {
            node,
            key: to_hex(key),
        };
        match self.ask(&command, QUERY_DEADLINE).await? {
            WorkerReply::Got(sample) => Ok(sample),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    async fn ask(
        &mut self,
        command: &WorkerCommand,
        deadline: Duration,
    ) -> anyhow::Result<WorkerReply> {
        let mut text = serde_json::to_string(command)?;
        text.push('\n');
        self.stdin.write_all(text.as_bytes()).await?;
        self.stdin.flush().await?;
        let line = timeout(deadline, self.stdout.next_line())
            .await
            .context("the worker did not answer in time")??
            .context("the worker exited")?;
        match serde_json::from_str::<WorkerReply>(&line).context("worker answer")? {
            WorkerReply::Failed { error } => bail!("worker: {error}"),
            reply => Ok(reply),
        }
    }
}

/// Starts `count` nodes, each bootstrapped from a random address of `bootstrap` or of the
/// nodes started before it (the first with no bootstrap when both are empty). The first
/// node uses `first_key` when given.
async fn spawn_nodes(
    count: usize,
    bootstrap: &[Multiaddr],
    first_key: Option<Keypair>,
    rng: &mut StdRng,
) -> anyhow::Result<Vec<DhtHandle>> {
    let k = NonZeroUsize::new(REPLICATION_FACTOR).context("replication factor")?;
    let mut pool = bootstrap.to_vec();
    let mut handles = Vec::with_capacity(count);
    let mut first_key = first_key;
    for i in 0..count {
        let key = first_key.take().unwrap_or_else(Keypair::generate_ed25519);
        let mut config = DhtConfig::new(key)
            .with_listen(loopback_tcp())
            .with_replication_factor(k);
        if !pool.is_empty() {
            config = config.with_bootstrap(pool[rng.random_range(0..pool.len())].clone());
        }
        let handle = timeout(SPAWN_DEADLINE, DhtHandle::spawn(config))
            .await
            .with_context(|| format!("node {i} did not start in time"))?
            .with_context(|| format!("node {i}"))?;
        pool.push(
            handle
                .listen_addrs()
                .into_iter()
                .next()
                .context("node without address")?,
        );
        handles.push(handle);
    }
    Ok(handles)
}

/// One timed `get_record` with its query statistics.
async fn get(node: &DhtHandle, key: Vec<u8>) -> anyhow::Result<GetSample> {
    let started = Instant::now();
    let (values, query) = timeout(QUERY_DEADLINE, node.get_record_with_stats(key))
        .await
        .context("the get did not finish in time")??;
    Ok(GetSample {
        ms: stats::ms(&started.elapsed()),
        found: !values.is_empty(),
        requests: query.requests,
        successes: query.successes,
        failures: query.failures,
    })
}

fn first_addrs(handles: &[DhtHandle]) -> anyhow::Result<Vec<Multiaddr>> {
    handles
        .iter()
        .map(|h| {
            h.listen_addrs()
                .into_iter()
                .next()
                .context("node without address")
        })
        .collect()
}

fn failed(error: &anyhow::Error) -> WorkerReply {
    WorkerReply::Failed {
        error: format!("{error:#}"),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A valid mailbox envelope from `key`'s peer to a random peer: storing nodes accept only
/// signed, unexpired envelopes under the key their room, sender and recipient derive.
fn record(key: &Keypair, room: &RoomName) -> Envelope {
    let now = unix_time_ms();
    Envelope {
        version: ENVELOPE_VERSION,
        room_id: room.id(),
        from: key.public().to_peer_id(),
        to: Some(PeerId::random()),
        session: SessionId::random(),
        seq: 1,
        created_at: now,
        expires_at: now + RECORD_TTL.as_millis() as u64,
        body: Body::Offer(Signal {
            sdp: "v=0".into(),
            candidates: Vec::new(),
            end_of_candidates: false,
            offer_hash: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_hex() {
        let key = b"/kadrtc/mailbox/\x00\xff\x10".to_vec();
        assert_eq!(from_hex(&to_hex(&key)), Some(key));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
