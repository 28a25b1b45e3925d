//! `kadrtc`: run a long-lived DHT node, join a room and chat with every member over direct
//! WebRTC data channels, send and receive files, or signal by copy and paste.

mod config;
mod copy_paste;
mod files;
mod identity;
mod join;
mod output;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kadrtc::{Multiaddr, Node, Passphrase, PeerId};

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
    after_help = config::SHORT_HELP,
    after_long_help = config::LONG_HELP
)]
struct Cli {
    /// Config file with defaults (TOML; see `kadrtc --help`), also given by the KADRTC_CONFIG
    /// variable; default config.toml in the platform's config directory (~/.config/kadrtc on
    /// Linux), which may be missing.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a long-lived DHT node (bootstrap and storage for others) until Ctrl-C.
    Node(NodeArgs),
    /// Join ROOM, open a channel to every member, send each stdin line to all of them and
    /// print what they send. End of stdin or Ctrl-C leaves the room. Without ROOM, a new
    /// random room is made and the command for the other side is printed.
    Join(JoinArgs),
    /// Send FILE... to a peer in ROOM that runs `kadrtc recv`; exits 0 once it confirmed every
    /// file.
    Send(SendArgs),
    /// Receive files sent to ROOM with `kadrtc send`, into --out, until Ctrl-C (or --once).
    Recv(RecvArgs),
    /// Copy-paste signaling with no network: print an offer line ({"type":"offer","sdp":…}),
    /// read the answer line from stdin, then chat like `join`.
    Offer(OfferArgs),
    /// Copy-paste signaling with no network: read an offer line from stdin, print the answer
    /// line, then chat like `join`.
    Answer(OfferArgs),
    /// Print this node's PeerId (the identity `kadrtc node` uses).
    Id(IdArgs),
    /// Print a shell completion script, for example `kadrtc completions bash` (a script, so
    /// there is no --json).
    Completions(CompletionsArgs),
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
    /// Find peers on the local network by multicast DNS; on by default when no --bootstrap is
    /// given (the zero-configuration mode).
    #[arg(long, conflicts_with = "no_mdns")]
    mdns: bool,
    /// Do not use multicast DNS, even without --bootstrap.
    #[arg(long)]
    no_mdns: bool,
}

#[derive(Debug, Args)]
#[command(mut_arg("identity", |arg| arg.help(
    "File holding this node's identity key (libp2p protobuf encoding); created if missing. \
     Default: node_identity in the config file, else node.key in the data directory \
     (~/.local/share/kadrtc on Linux)."
).long_help(None)))]
struct NodeArgs {
    /// Use a fresh identity for this run instead of the persistent one (for testnets that run
    /// many nodes on one machine).
    #[arg(long, conflicts_with = "identity")]
    ephemeral: bool,
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

/// How to be in a room: shared by `join`, `send` and `recv`.
#[derive(Debug, Args)]
struct RoomArgs {
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
    /// Most other members this peer connects to (a full mesh: every pair has one channel);
    /// further members are reported and ignored until one leaves.
    #[arg(long, value_name = "N", default_value_t = join::DEFAULT_MAX_PEERS, value_parser = clap::value_parser!(u16).range(1..=256))]
    max_peers: u16,
    /// Also use this STUN server (repeatable), for example stun:192.0.2.1:3478. By default
    /// only the STUN and TURN servers of the kadrtc nodes this peer is connected to are used,
    /// never a public one.
    #[arg(long, value_name = "URL", value_parser = parse_stun_url)]
    stun: Vec<String>,
    /// Connect only through TURN relays of the network's nodes, so that peers never learn
    /// this host's IP addresses (needs a connected node started with --relay).
    #[arg(long)]
    relay_only: bool,
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// The room name, or a kadrtc:// link printed by another `kadrtc join`: everyone who uses
    /// the same name meets. Without it, a new random room is made.
    room: Option<String>,
    #[command(flatten)]
    room_args: RoomArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
struct SendArgs {
    /// The room name (or kadrtc:// link) the receiver joined with `kadrtc recv`.
    room: String,
    /// Files to send, in order.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Send to this peer only; by default, to the first peer in the room that accepts files.
    #[arg(long, value_name = "PEERID", value_parser = parse_peer_id)]
    to: Option<PeerId>,
    #[command(flatten)]
    room_args: RoomArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
struct RecvArgs {
    /// The room name (or kadrtc:// link) senders use.
    room: String,
    /// Directory to write received files to.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Replace files that exist already (by default such a file is refused).
    #[arg(long)]
    overwrite: bool,
    /// Exit after the first transfer (all files of one `kadrtc send`) ends.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    room_args: RoomArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
struct OfferArgs {
    /// Local IP to gather ICE candidates on (repeatable); default every IPv4 interface and
    /// loopback.
    #[arg(long, value_name = "IP")]
    bind: Vec<std::net::IpAddr>,
    /// Use this STUN server (repeatable), for example stun:192.0.2.1:3478. There is none by
    /// default: only host candidates are offered.
    #[arg(long, value_name = "URL", value_parser = parse_stun_url)]
    stun: Vec<String>,
    /// Print one JSON object per line on stdout instead of text (after the offer or answer
    /// line, which is JSON either way).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct IdArgs {
    /// Identity file to read (created if missing); default the one `kadrtc node` uses
    /// (node_identity in the config file, else node.key in the data directory).
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Print {"peer_id": …, "identity": …, "created": …} instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

fn main() -> ExitCode {
    // The matches tell command-line values from defaults, for the config file.
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
        .unwrap_or_else(|error| error.exit());
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
        Command::Send(args) => args.common.json,
        Command::Recv(args) => args.common.json,
        Command::Offer(args) | Command::Answer(args) => args.json,
        Command::Id(args) => args.json,
        Command::Completions(_) => false,
    };
    let out = Output::new(json);
    let result = runtime.block_on(async {
        let config = config::apply(&mut cli, &matches)?;
        match cli.command {
            Command::Node(args) => run_node(args, &out).await,
            Command::Join(args) => join::run_join(args, &out).await,
            Command::Send(args) => files::run_send(args, &out).await,
            Command::Recv(args) => files::run_recv(args, &out).await,
            Command::Offer(args) => copy_paste::run_offer(args, &out).await,
            Command::Answer(args) => copy_paste::run_answer(args, &out).await,
            Command::Id(args) => config::run_id(args, &config),
            Command::Completions(args) => {
                config::run_completions(args);
                Ok(())
            }
        }
    });
    // Do not wait for the blocking stdin reader thread.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The JSON reader gets an error event; stderr gets it either way, once.
            if out.is_json() {
                out.error(&format!("{error:#}"));
            }
            eprintln!("kadrtc: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start_node(
    args: &CommonArgs,
    stun: Option<u16>,
    relay: Option<&RelayArgs>,
    room: Option<&RoomArgs>,
) -> anyhow::Result<Node> {
    let mut builder = Node::builder();
    if room.is_none() {
        // A long-lived node serves the DHT; a joiner serves it only when it has no bootstrap
        // node, and otherwise only uses it (NodeBuilder::dht_server).
        builder = builder.dht_server(true);
    }
    if let Some(room) = room {
        for url in &room.stun {
            builder = builder.ice_server(url.clone());
        }
        builder = builder.relay_only(room.relay_only);
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
        // Locked until this process exits.
        builder = builder.identity(identity::lock_and_load(path)?);
    }
    for addr in &args.listen {
        builder = builder.listen(addr.clone());
    }
    for addr in &args.bootstrap {
        builder = builder.bootstrap(addr.clone());
    }
    builder = builder.mdns(args.mdns || (!args.no_mdns && args.bootstrap.is_empty()));
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
