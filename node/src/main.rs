//! `kadrtc`: run a long-lived DHT node, or join a room and chat with every member over direct
//! WebRTC data channels.

mod identity;
mod output;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kadrtc::{Multiaddr, Node, Passphrase, PeerId, RoomConfig};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::output::Output;

/// Log filter when `RUST_LOG` is unset: warnings, but not webrtc-rs's routine ones.
const DEFAULT_LOG_FILTER: &str =
    "warn,rtc=error,rtc_dtls=error,rtc_ice=error,rtc_sctp=error,webrtc=error";

/// Largest --relay-rate: its value in bytes must fit in 32 bits.
const MAX_RELAY_RATE_KIB: i64 = (u32::MAX / 1024) as i64;

#[derive(Debug, Parser)]
#[command(
    name = "kadrtc",
    version,
    about = "Decentralized WebRTC signaling: peers meet in a room through a libp2p DHT and talk over direct data channels",
    long_about = None,
    after_help = "Logs go to stderr; set RUST_LOG (for example RUST_LOG=debug) for more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a long-lived DHT node (bootstrap and storage for others) until Ctrl-C.
    Node(NodeArgs),
    /// Join ROOM, open a channel to every member, send each stdin line to all of them and
    /// print what they send. End of stdin or Ctrl-C leaves the room.
    Join(JoinArgs),
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// Address to listen on (repeatable).
    #[arg(long, value_name = "MULTIADDR", value_parser = parse_multiaddr, default_value = "/ip4/0.0.0.0/tcp/0")]
    listen: Vec<Multiaddr>,
    /// Node to join the network through, ending in /p2p/<PeerId> (repeatable).
    #[arg(long, value_name = "MULTIADDR", value_parser = parse_multiaddr)]
    bootstrap: Vec<Multiaddr>,
    /// File holding this node's identity key (libp2p protobuf encoding); created if missing.
    /// Without it a fresh identity is used for this run.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Print one JSON object per line on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// UDP port to answer STUN Binding requests on (RFC 8489), so that peers behind NATs learn
    /// their public address from this node; on the IP of the first --listen address. 0 picks a
    /// free port.
    #[arg(long, value_name = "PORT", default_value_t = kadrtc::DEFAULT_STUN_PORT, conflicts_with = "no_stun")]
    stun_port: u16,
    /// Do not answer STUN.
    #[arg(long)]
    no_stun: bool,
    #[command(flatten)]
    relay: RelayArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// Volunteer a TURN relay (RFC 8656) for peers that find no direct path (for example both
    /// behind symmetric NATs). Connected peers get short-lived credentials over libp2p; there
    /// is no password to configure. The relay forwards only DTLS-encrypted bytes.
    #[arg(long)]
    relay: bool,
    /// UDP port the relay listens on, on the IP of the first --listen address.
    #[arg(long, value_name = "PORT", default_value_t = kadrtc::DEFAULT_TURN_PORT, requires = "relay")]
    relay_port: u16,
    /// IP that peers send relayed traffic to, an address of this host (relayed ports are bound
    /// on it); needed when --listen is 0.0.0.0.
    #[arg(long, value_name = "IP", requires = "relay")]
    relay_ip: Option<std::net::IpAddr>,
    /// Most relay allocations (peer connections through this relay) at once.
    #[arg(long, value_name = "N", default_value_t = kadrtc::DEFAULT_MAX_ALLOCATIONS, requires = "relay")]
    relay_max_allocations: usize,
    /// Most KiB per second one allocation relays in each direction; more is dropped.
    #[arg(
        long,
        value_name = "KIB",
        default_value_t = kadrtc::DEFAULT_BYTES_PER_SECOND / 1024,
        value_parser = clap::value_parser!(u32).range(1..=MAX_RELAY_RATE_KIB),
        requires = "relay"
    )]
    relay_rate: u32,
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// The room name: everyone who uses the same name meets.
    room: String,
    /// Room passphrase: signaling is sealed under a key derived from the room name and this
    /// passphrase (argon2id), so that only members with the same passphrase can read it.
    /// Prefer the KADRTC_PASSPHRASE variable or --passphrase-file: other local users can
    /// read command lines.
    #[arg(
        long,
        value_name = "TEXT",
        env = "KADRTC_PASSPHRASE",
        hide_env_values = true,
        value_parser = parse_passphrase
    )]
    passphrase: Option<Passphrase>,
    /// Read the room passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase")]
    passphrase_file: Option<PathBuf>,
    /// Only connect to this peer (repeatable); envelopes from any other peer are ignored.
    #[arg(long, value_name = "PEERID", value_parser = parse_peer_id)]
    allow: Vec<PeerId>,
    /// Also use this STUN server (repeatable), for example stun:192.0.2.1:3478. By default
    /// only the STUN and TURN servers of the kadrtc nodes this peer is connected to are used,
    /// never a public one.
    #[arg(long, value_name = "URL", value_parser = parse_stun_url)]
    stun: Vec<String>,
    /// Connect only through TURN relays of the network's nodes, so that peers never learn
    /// this host's IP addresses (needs a connected node started with --relay).
    #[arg(long)]
    relay_only: bool,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kadrtc: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let json = match &cli.command {
        Command::Node(args) => args.common.json,
        Command::Join(args) => args.common.json,
    };
    let out = Output::new(json);
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => run_node(args, &out).await,
            Command::Join(args) => run_join(args, &out).await,
        }
    });
    // Do not wait for the blocking stdin reader thread.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            out.error(&format!("{error:#}"));
            eprintln!("kadrtc: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start_node(
    args: &CommonArgs,
    stun: Option<u16>,
    relay: Option<&RelayArgs>,
    join: Option<&JoinArgs>,
) -> anyhow::Result<Node> {
    let mut builder = Node::builder();
    if join.is_none() {
        // A long-lived node serves the DHT; a joiner serves it only when it has no bootstrap
        // node, and otherwise only uses it (NodeBuilder::dht_server).
        builder = builder.dht_server(true);
    }
    if let Some(join) = join {
        for url in &join.stun {
            builder = builder.ice_server(url.clone());
        }
        builder = builder.relay_only(join.relay_only);
    }
    if let Some(port) = stun {
        builder = builder.stun(port);
    }
    if let Some(relay) = relay.filter(|r| r.relay) {
        let bytes_per_second = std::num::NonZeroU32::new(relay.relay_rate.saturating_mul(1024))
            .context("--relay-rate must be at least 1")?;
        builder = builder
            .relay(relay.relay_port)
            .relay_limits(relay.relay_max_allocations, bytes_per_second);
        if let Some(ip) = relay.relay_ip {
            builder = builder.relay_ip(ip);
        }
    }
    if let Some(path) = &args.identity {
        builder = builder.identity(identity::load_or_create(path)?);
    }
    for addr in &args.listen {
        builder = builder.listen(addr.clone());
    }
    for addr in &args.bootstrap {
        builder = builder.bootstrap(addr.clone());
    }
    builder.build().await.map_err(|error| match error {
        stun @ kadrtc::NodeError::Stun { .. } => anyhow::Error::new(stun)
            .context("cannot start the node (choose another port with --stun-port, or --no-stun)"),
        relay @ kadrtc::NodeError::Relay { .. } => anyhow::Error::new(relay)
            .context("cannot start the node (choose another port with --relay-port)"),
        kadrtc::NodeError::RelayIpUnknown => anyhow::anyhow!(
            "cannot start the relay: it needs the IP peers reach this node at; give --relay-ip IP or --listen /ip4/IP/tcp/PORT"
        ),
        other => anyhow::Error::new(other).context("cannot start the node"),
    })
}

async fn run_node(args: NodeArgs, out: &Output) -> anyhow::Result<()> {
    let stun = (!args.no_stun).then_some(args.stun_port);
    let node = start_node(&args.common, stun, Some(&args.relay), None).await?;
    out.ready(&node);
    shutdown_signal().await
}

async fn run_join(args: JoinArgs, out: &Output) -> anyhow::Result<()> {
    let node = start_node(&args.common, None, None, Some(&args)).await?;
    out.ready(&node);
    if args.common.bootstrap.is_empty() {
        tracing::warn!("no --bootstrap given: only peers that connect to this node can be found");
    }
    let mut config = RoomConfig {
        passphrase: passphrase(&args)?,
        ..RoomConfig::default()
    };
    if !args.allow.is_empty() {
        config = config.with_allow(args.allow.iter().copied());
    }
    let mut room = node
        .join_with(&args.room, config)
        .await
        .with_context(|| format!("cannot join room {:?}", args.room))?;
    out.joined(&args.room);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    // Created once, so that a signal arriving while the loop body runs is not lost.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    if room.broadcast(line.as_bytes()).await == 0 {
                        out.error("no open channel yet; message not sent");
                    }
                }
                Ok(None) => stdin_open = false,
                Err(error) => {
                    tracing::warn!(%error, "cannot read stdin");
                    stdin_open = false;
                }
            },
            event = room.next_event() => match event {
                Some(event) => out.room_event(&event),
                None => break,
            },
            result = &mut shutdown => {
                result?;
                break;
            }
        }
        if !stdin_open {
            break;
        }
    }
    room.leave().await;
    Ok(())
}

/// The passphrase from --passphrase / KADRTC_PASSPHRASE, or the first line of
/// --passphrase-file (whose text is wiped from memory once read).
fn passphrase(args: &JoinArgs) -> anyhow::Result<Option<Passphrase>> {
    if let Some(path) = &args.passphrase_file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or_default();
        anyhow::ensure!(
            !line.is_empty(),
            "the passphrase file {} is empty",
            path.display()
        );
        return Ok(Some(Passphrase::new(line)));
    }
    Ok(args.passphrase.clone())
}

fn parse_passphrase(text: &str) -> Result<Passphrase, String> {
    if text.is_empty() {
        return Err("the passphrase is empty".into());
    }
    Ok(Passphrase::new(text))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C"),
        _ = terminate.recv() => Ok(()),
    }
}

/// A `stun:host:port` URL (RFC 7064), checked for its scheme and port so that a typo fails
/// here and not silently at ICE gathering.
fn parse_stun_url(text: &str) -> Result<String, String> {
    let expected = "expected for example stun:192.0.2.1:3478";
    let rest = text.strip_prefix("stun:").ok_or_else(|| {
        format!("invalid STUN URL {text:?}: it must start with stun: ({expected})")
    })?;
    let port = rest.rsplit_once(':').map(|(_, port)| port);
    match port.map(str::parse::<u16>) {
        Some(Ok(port)) if port != 0 => Ok(text.to_string()),
        _ => Err(format!(
            "invalid STUN URL {text:?}: it needs a port ({expected})"
        )),
    }
}

fn parse_peer_id(text: &str) -> Result<PeerId, String> {
    text.parse().map_err(|error| {
        format!("invalid PeerId {text:?} ({error}); expected for example 12D3KooW...")
    })
}

fn parse_multiaddr(text: &str) -> Result<Multiaddr, String> {
    text.parse()
        .map_err(|error| format!("invalid multiaddr {text:?} ({error}); expected for example /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW..."))
}
