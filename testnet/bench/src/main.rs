//! `kadrtc-bench`: the benchmark suite of issue 5, on 127.0.0.1.
//!
//! Measures, in this order: offer-to-open of the bare WebRTC stack; join-to-open through
//! kadrtc on a 5-node loopback testnet, and through a central WebSocket signaling relay
//! (the tutorials' design) with the same WebRTC stack; throughput over one channel against
//! plain TCP; the RSS and idle CPU of the real `kadrtc` binary; `get_record` latency and
//! requests in in-process DHTs of N nodes; a file transfer between two `kadrtc` processes
//! (`kadrtc send` to `kadrtc recv`). Progress goes to stderr, the table to stdout,
//! and `results.json` and `results.svg` to the output folder. Timings are reported, never
//! asserted: the exit status is non-zero only when a measurement could not run.
//!
//! `cargo run --release -p kadrtc-bench -- [--quick] [--out DIR]`; BENCHMARKS.md says what
//! each figure measures.

mod dht;
mod files;
mod join;
mod logging;
mod plot;
mod procs;
mod relay;
mod report;
mod rtc;
mod stats;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

use crate::report::{Machine, Results, SectionError};
use crate::rtc::MIB;

/// Message sizes of the throughput figures, bytes.
const MESSAGE_SIZES: [usize; 2] = [16 * 1024, 64 * 1024];

#[derive(Debug, Parser)]
#[command(
    name = "kadrtc-bench",
    version,
    about = "kadrtc's benchmark suite on 127.0.0.1: set-up latency (bare WebRTC, kadrtc, a central WebSocket relay), throughput vs TCP, DHT lookups, RSS and idle CPU, a file transfer through the kadrtc CLI",
    after_help = "Progress goes to stderr, the table to stdout; DIR/results.json and DIR/results.svg hold the figures. See BENCHMARKS.md."
)]
struct Cli {
    /// Tiny counts and a 10-node DHT only: checks that every measurement works (CI).
    #[arg(long)]
    quick: bool,
    /// Output folder for results.json, results.svg and the logs of child processes.
    #[arg(long, value_name = "DIR", default_value = "target/kadrtc-bench")]
    out: PathBuf,
    /// The kadrtc binary for the RSS, CPU and file-transfer figures. Default: `kadrtc` next to this
    /// executable, built first (cargo build -p kadrtc-node, same profile) unless --no-build.
    #[arg(long, value_name = "PATH")]
    kadrtc: Option<PathBuf>,
    /// Do not run cargo build for the kadrtc binary; use the one next to this executable.
    #[arg(long)]
    no_build: bool,
    /// Runs of each set-up latency (default 20, quick 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    runs: Option<u16>,
    /// DHT sizes (default 10,50,200; quick 10).
    #[arg(long, value_name = "N,...", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(2..=1000))]
    dht_nodes: Option<Vec<u16>>,
    /// Run only these measurements (default: all).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    only: Vec<Section>,
    /// Internal: host DHT nodes for the DHT measurement, commanded over stdin/stdout.
    #[arg(long, hide = true)]
    dht_worker: bool,
}

/// One measurement of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Bare WebRTC offer-to-open.
    Bare,
    /// Join-to-open through kadrtc.
    Join,
    /// Join-to-open through the WebSocket relay.
    Relay,
    /// Channel and TCP throughput.
    Throughput,
    /// RSS and idle CPU of the kadrtc binary.
    Resources,
    /// DHT lookups.
    Dht,
    /// A file transfer through the kadrtc CLI (send to recv).
    Files,
}

/// Counts for one run of the suite.
struct Plan {
    runs: usize,
    throughput_bytes: usize,
    throughput_reps: usize,
    dht_nodes: Vec<usize>,
    dht_gets: usize,
    channels: usize,
    idle: Duration,
    cpu_window: Duration,
    file_bytes: usize,
    file_reps: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kadrtc-bench: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if cli.dht_worker {
        let result = runtime.block_on(dht::worker_main());
        runtime.shutdown_timeout(Duration::from_secs(2));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("kadrtc-bench worker: error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = runtime.block_on(run(cli));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("kadrtc-bench: some measurements could not run (see the table)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("kadrtc-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the suite; `Ok(false)` when a measurement could not run.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let started = Instant::now();
    let plan = Plan::new(&cli);
    let wanted = |section: Section| cli.only.is_empty() || cli.only.contains(&section);
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("creating the output folder {}", cli.out.display()))?;
    let machine = Machine::detect();
    eprintln!("machine: {}", machine.describe());
    let mut results = Results {
        version: 1,
        quick: cli.quick,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        started_at_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        duration_s: 0.0,
        machine,
        bare_offer_to_open: None,
        join_kadrtc: None,
        join_relay: None,
        join_ratio: None,
        throughput: None,
        dht: Vec::new(),
        resources: None,
        files: None,
        table: Vec::new(),
        errors: Vec::new(),
    };
    let mut errors = Vec::new();
    // The kadrtc binary, once found (and built) for a first section that needs it.
    let mut binary = None;

    if wanted(Section::Bare) {
        results.bare_offer_to_open = section(
            &mut errors,
            &format!("bare WebRTC offer-to-open, {} runs", plan.runs),
            rtc::offer_to_open(plan.runs),
        )
        .await;
    }
    if wanted(Section::Join) {
        results.join_kadrtc = section(
            &mut errors,
            &format!(
                "join-to-open via kadrtc, 5-node testnet, {} runs",
                plan.runs
            ),
            join::measure(plan.runs),
        )
        .await;
    }
    if wanted(Section::Relay) {
        results.join_relay = section(
            &mut errors,
            &format!(
                "join-to-open via a central WebSocket relay, {} runs",
                plan.runs
            ),
            relay::measure(plan.runs),
        )
        .await;
    }
    if let (Some(kadrtc), Some(relay)) = (&results.join_kadrtc, &results.join_relay) {
        results.join_ratio = Some(kadrtc.both_open.median_ms / relay.both_open.median_ms);
    }
    if wanted(Section::Throughput) {
        results.throughput = section(
            &mut errors,
            &format!(
                "throughput, {} MiB × {} per configuration, and TCP",
                plan.throughput_bytes / MIB,
                plan.throughput_reps
            ),
            rtc::throughput(&MESSAGE_SIZES, plan.throughput_bytes, plan.throughput_reps),
        )
        .await;
    }
    if wanted(Section::Resources) {
        let logs = cli.out.join("logs");
        let measured = async {
            let binary = kadrtc_binary(&mut binary, &cli).await?;
            procs::measure(&binary, &logs, plan.channels, plan.idle, plan.cpu_window).await
        };
        results.resources = section(
            &mut errors,
            &format!(
                "RSS and idle CPU of the kadrtc binary (0, 1, {} channels)",
                plan.channels
            ),
            measured,
        )
        .await;
    }
    if wanted(Section::Dht) {
        for &nodes in &plan.dht_nodes {
            if let Some(result) = section(
                &mut errors,
                &format!("DHT get_record, {nodes} nodes, {} gets", plan.dht_gets),
                dht::measure(nodes, plan.dht_gets, &cli.out.join("logs")),
            )
            .await
            {
                results.dht.push(result);
            }
            // Thousands of connections close after a network is dropped; let their file
            // descriptors go before the next network (or the output files) needs them.
            settle_open_files().await;
        }
    }

    if wanted(Section::Files) {
        let measured = async {
            let binary = kadrtc_binary(&mut binary, &cli).await?;
            files::measure(&binary, &cli.out, plan.file_bytes, plan.file_reps).await
        };
        results.files = section(
            &mut errors,
            &format!(
                "file transfer through the kadrtc CLI (send to recv), {} MiB × {}",
                plan.file_bytes / MIB,
                plan.file_reps
            ),
            measured,
        )
        .await;
    }

    results.errors = errors;
    results.duration_s = started.elapsed().as_secs_f64();
    results.build_table();
    let json_path = cli.out.join("results.json");
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = cli.out.join("results.svg");
    let plotted = plot::write_svg(&results, &svg_path);
    match &plotted {
        Ok(()) => eprintln!(
            "wrote {} and {} in {:.0} s",
            json_path.display(),
            svg_path.display(),
            results.duration_s
        ),
        Err(error) => eprintln!("wrote {}; the plot failed: {error:#}", json_path.display()),
    }
    println!("machine: {}", results.machine.describe());
    println!(
        "build: {}{}",
        results.profile,
        if results.quick { ", --quick" } else { "" }
    );
    println!();
    print!("{}", results.table_text());
    Ok(results.errors.is_empty() && plotted.is_ok())
}

/// The `kadrtc` binary (see `procs::kadrtc_binary`), looked up (and built) only once.
async fn kadrtc_binary(known: &mut Option<PathBuf>, cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(binary) = known {
        return Ok(binary.clone());
    }
    let binary = procs::kadrtc_binary(cli.kadrtc.clone(), !cli.no_build).await?;
    *known = Some(binary.clone());
    Ok(binary)
}

/// Waits (at most 10 s) until this process holds fewer than 1,000 open files.
async fn settle_open_files() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match std::fs::read_dir("/proc/self/fd").map(Iterator::count) {
            Ok(open) if open >= 1000 => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return,
        }
    }
}

/// Runs one measurement with a progress header; a failure is recorded, not fatal.
async fn section<T>(
    errors: &mut Vec<SectionError>,
    name: &str,
    measurement: impl Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    eprintln!("== {name}");
    let started = Instant::now();
    match measurement.await {
        Ok(value) => {
            eprintln!("   done in {:.1} s", started.elapsed().as_secs_f64());
            Some(value)
        }
        Err(error) => {
            eprintln!("   could not run: {error:#}");
            errors.push(SectionError {
                section: name.to_string(),
                error: format!("{error:#}"),
            });
            None
        }
    }
}

impl Plan {
    fn new(cli: &Cli) -> Self {
        let quick = cli.quick;
        Self {
            runs: cli.runs.map_or(if quick { 3 } else { 20 }, usize::from),
            throughput_bytes: if quick { 4 * MIB } else { 64 * MIB },
            throughput_reps: if quick { 1 } else { 3 },
            dht_nodes: cli.dht_nodes.as_ref().map_or_else(
                || if quick { vec![10] } else { vec![10, 50, 200] },
                |sizes| sizes.iter().map(|&n| usize::from(n)).collect(),
            ),
            dht_gets: if quick { 10 } else { 50 },
            channels: 10,
            idle: Duration::from_secs(2),
            cpu_window: Duration::from_secs(if quick { 2 } else { 10 }),
            file_bytes: if quick { 8 * MIB } else { 256 * MIB },
            file_reps: if quick { 1 } else { 5 },
        }
    }
}
