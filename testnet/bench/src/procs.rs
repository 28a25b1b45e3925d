//! Resident memory and idle CPU of the real `kadrtc` binary: an idle `kadrtc node`, and a
//! `kadrtc join` with 0, 1 and 10 open channels (its peers are in-process `Node`s that
//! admit only the joiner, so they open no channels among themselves). Also how the other
//! measurements of the binary (`files`) find it, start it and read its JSON lines and
//! memory.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use kadrtc::{Multiaddr, PeerId, RoomConfig, RoomEvent};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::join;

/// How long a process may take to print its `ready` line.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a channel to the joiner may take to open (a failed attempt is retried).
const OPEN_DEADLINE: Duration = Duration::from_secs(60);
/// How long an in-process peer may take to start.
const BUILD_DEADLINE: Duration = Duration::from_secs(20);
/// How long a joiner may take to leave and exit once its stdin is closed.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(10);
/// How long building the `kadrtc` binary may take (a clean release build is ≈ 10 min here).
const BUILD_BINARY_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// JSON lines of one process queued for the benchmark.
const LINE_QUEUE: usize = 256;

/// Memory and CPU figures.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceResult {
    /// VmRSS of a `kadrtc node` that has been ready and idle for `idle_s`, MiB.
    pub node_idle_rss_mib: f64,
    /// VmRSS of a `kadrtc join` process by open channels, each after `idle_s` idle, MiB.
    pub joiner_rss_mib: Vec<ChannelsRss>,
    /// CPU time (user + system) of that joiner with all its channels open and idle, over
    /// `cpu_window_s`, as % of one core.
    pub joiner_idle_cpu_percent: f64,
    /// Channels open during the CPU window.
    pub cpu_channels: usize,
    /// The `kadrtc node`'s CPU over the same window (its clients are idle too), % of one
    /// core.
    pub node_cpu_percent: f64,
    /// Seconds idle before each RSS reading.
    pub idle_s: f64,
    /// Length of the CPU window, s.
    pub cpu_window_s: f64,
}

/// RSS at a number of open channels.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelsRss {
    /// Open channels.
    pub channels: usize,
    /// VmRSS, MiB.
    pub rss_mib: f64,
}

/// How often [`follow_peak_rss`] reads a process's VmHWM.
const PEAK_RSS_INTERVAL: Duration = Duration::from_millis(50);

/// A child process printing JSON lines.
pub struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    name: &'static str,
    log: PathBuf,
}

/// One in-process peer: its task, and how to stop it.
struct Peer {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// The `kadrtc` binary: `explicit` when given; otherwise the one next to this executable,
/// first brought up to date with `cargo build` (same profile) when `build` is set and this
/// executable runs from a Cargo target directory of this workspace.
pub async fn kadrtc_binary(explicit: Option<PathBuf>, build: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        ensure!(path.is_file(), "--kadrtc {}: no such file", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("executable without a directory")?;
    let binary = dir.join("kadrtc");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let profile = dir.file_name().and_then(|n| n.to_str());
    if let (true, Some(profile @ ("release" | "debug")), Some(target_dir)) = (
        build && workspace.join("Cargo.toml").is_file(),
        profile,
        dir.parent(),
    ) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        // `cargo run` gives this process its package's variables (CARGO_PKG_NAME, ...).
        // Build scripts that read one (ring's does) are rerun when it differs from the last
        // build's, so a nested build with them would rebuild half the tree, and the next
        // build from a shell again.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
                || name == "CARGO_PRIMARY_PACKAGE"
            {
                command.env_remove(&key);
            }
        }
        command
            .current_dir(&workspace)
            .args([
                "build",
                "-p",
                "kadrtc-node",
                "--bin",
                "kadrtc",
                "--target-dir",
            ])
            .arg(target_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if profile == "release" {
            command.arg("--release");
        }
        eprintln!("building the kadrtc binary ({profile}) for the figures of the kadrtc binary");
        let status = timeout(BUILD_BINARY_DEADLINE, command.status())
            .await
            .context("cargo build of the kadrtc binary took too long")?
            .context("running cargo")?;
        ensure!(status.success(), "cargo build of the kadrtc binary failed");
    }
    ensure!(
        binary.is_file(),
        "no kadrtc binary at {} (build it with `cargo build --release -p kadrtc-node`, or pass --kadrtc PATH)",
        binary.display()
    );
    Ok(binary)
}

/// Measures RSS and CPU of `kadrtc` processes; child logs (stderr) go to `logs`.
pub async fn measure(
    binary: &Path,
    logs: &Path,
    channels: usize,
    idle: Duration,
    cpu_window: Duration,
) -> anyhow::Result<ResourceResult> {
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut node = Process::spawn(
        binary,
        "node",
        &[
            "node",
            "--ephemeral",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--stun-port",
            "0",
            "--no-mdns",
            "--json",
        ],
        &logs.join("node.stderr"),
    )?;
    let ready = node.wait_for("ready", READY_DEADLINE).await?;
    let bootstrap: Multiaddr = ready["listen"][0]
        .as_str()
        .context("ready line without a listen address")?
        .parse()
        .context("listen address")?;
    tokio::time::sleep(idle).await;
    let node_idle_rss_mib = rss_mib(node.pid()?)?;
    eprintln!("  idle kadrtc node: {node_idle_rss_mib:.1} MiB");

    let room = format!("bench-rss-{:016x}", rand::random::<u64>());
    let bootstrap_text = bootstrap.to_string();
    let mut joiner = Process::spawn(
        binary,
        "joiner",
        &[
            "join",
            &room,
            "--json",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &bootstrap_text,
        ],
        &logs.join("joiner.stderr"),
    )?;
    let ready = joiner.wait_for("ready", READY_DEADLINE).await?;
    let joiner_id: PeerId = ready["peer_id"]
        .as_str()
        .context("ready line without peer_id")?
        .parse()
        .context("joiner peer id")?;
    tokio::time::sleep(idle).await;
    let rss = rss_mib(joiner.pid()?)?;
    eprintln!("  kadrtc join with no channel: {rss:.1} MiB");
    let mut joiner_rss_mib = vec![ChannelsRss {
        channels: 0,
        rss_mib: rss,
    }];

    let mut peers = Vec::with_capacity(channels);
    let result = async {
        let mut open = 0;
        for step in [1, channels] {
            // One peer at a time: the figures are about idle channels, and ten set-ups at
            // once on two cores (worse in a debug build) can starve ICE into retries.
            while open < step {
                let starting = Instant::now();
                peers.push(peer(bootstrap.clone(), &room, joiner_id).await?);
                joiner.wait_for("channel_open", OPEN_DEADLINE).await?;
                open += 1;
                eprintln!(
                    "  channel {open}/{channels} open, {} ms after its peer started",
                    starting.elapsed().as_millis(),
                );
            }
            tokio::time::sleep(idle).await;
            let rss = rss_mib(joiner.pid()?)?;
            eprintln!("  kadrtc join with {open} open channel(s): {rss:.1} MiB");
            joiner_rss_mib.push(ChannelsRss {
                channels: open,
                rss_mib: rss,
            });
        }
        let (joiner_cpu, node_cpu) = {
            let (j0, n0, t0) = (cpu_ticks(joiner.pid()?)?, cpu_ticks(node.pid()?)?, Instant::now());
            tokio::time::sleep(cpu_window).await;
            let (j1, n1, elapsed) = (cpu_ticks(joiner.pid()?)?, cpu_ticks(node.pid()?)?, t0.elapsed());
            let hz = clock_ticks_per_second().await;
            let pct = |ticks: u64| ticks as f64 / hz / elapsed.as_secs_f64() * 100.0;
            (pct(j1.saturating_sub(j0)), pct(n1.saturating_sub(n0)))
        };
        eprintln!(
            "  kadrtc join idle with {open} channels: {joiner_cpu:.2} % of a core (node {node_cpu:.2} %)"
        );
        anyhow::Ok((joiner_cpu, node_cpu, open))
    }
    .await;

    for peer in &peers {
        let _ = peer.stop.send(true);
    }
    for peer in peers {
        let _ = timeout(EXIT_DEADLINE, peer.task).await;
    }
    joiner.finish().await;
    // A node does not stop when its stdin closes.
    node.kill().await;
    let (joiner_idle_cpu_percent, node_cpu_percent, cpu_channels) = result?;
    Ok(ResourceResult {
        node_idle_rss_mib,
        joiner_rss_mib,
        joiner_idle_cpu_percent,
        cpu_channels,
        node_cpu_percent,
        idle_s: idle.as_secs_f64(),
        cpu_window_s: cpu_window.as_secs_f64(),
    })
}

/// An in-process peer in `room` that admits only `joiner`, kept until stopped.
async fn peer(bootstrap: Multiaddr, room: &str, joiner: PeerId) -> anyhow::Result<Peer> {
    let node = join::joiner(bootstrap).await.context("peer")?;
    let mut room = timeout(
        BUILD_DEADLINE,
        node.join_with(room, RoomConfig::default().with_allow([joiner])),
    )
    .await
    .context("peer did not join in time")?
    .context("peer join")?;
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let _node = node;
        loop {
            tokio::select! {
                event = room.next_event() => match event {
                    Some(RoomEvent::Error { peer, error }) => {
                        tracing::warn!(?peer, %error, "room error in the RSS benchmark");
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = stopped.changed() => {
                    room.leave().await;
                    return;
                }
            }
        }
    });
    Ok(Peer { task, stop })
}

impl Process {
    /// Starts `binary` with `args`, stdin piped (and kept open), stdout read as JSON lines,
    /// stderr to the file `log`; killed when dropped.
    pub fn spawn(
        binary: &Path,
        name: &'static str,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let stderr =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel(LINE_QUEUE);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        if tx.send(value).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => tracing::debug!(%line, "non-JSON line from kadrtc"),
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            name,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .with_context(|| format!("the {} process has exited", self.name))
    }

    /// Waits for the next line whose `event` is `event`, skipping others (and reporting
    /// error events on stderr).
    pub async fn wait_for(&mut self, event: &str, deadline: Duration) -> anyhow::Result<Value> {
        let found = timeout(deadline, async {
            while let Some(line) = self.lines.recv().await {
                match line["event"].as_str() {
                    Some(e) if e == event => return Some(line),
                    Some("error") => eprintln!("  {}: error event: {line}", self.name),
                    _ => {}
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => Ok(line),
            Ok(None) => bail!(
                "the {} process ended before `{event}` (see {})",
                self.name,
                self.log.display()
            ),
            Err(_) => bail!(
                "no `{event}` from the {} process within {deadline:?} (see {})",
                self.name,
                self.log.display()
            ),
        }
    }

    /// Closes stdin (a joiner leaves its room and exits), waits a little, then kills.
    pub async fn finish(mut self) {
        drop(self.stdin.take());
        if timeout(EXIT_DEADLINE, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// Kills the process (a `kadrtc node` does not stop when its stdin closes) and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit on its own (stdin stays open); kills it and fails
    /// after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        match timeout(deadline, self.child.wait()).await {
            Ok(status) => status.with_context(|| format!("waiting for the {} process", self.name)),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "the {} process did not exit within {deadline:?} (see {})",
                    self.name,
                    self.log.display()
                )
            }
        }
    }

    /// The file its stderr goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// Follows the peak resident memory (VmHWM) of a running process: reads it every 50 ms
/// until the process is gone (or a zombie, which has no memory lines), then resolves to the
/// last reading, MiB (`None` if there was none). Growth in the last 50 ms before the exit is
/// missed; a PID reused within those 50 ms would be read too (Linux hands out PIDs in
/// sequence, so that takes a wrap-around).
pub fn follow_peak_rss(pid: u32) -> JoinHandle<Option<f64>> {
    tokio::spawn(async move {
        let mut peak = None;
        while let Ok(mib) = status_mib(pid, "VmHWM") {
            peak = Some(mib);
            tokio::time::sleep(PEAK_RSS_INTERVAL).await;
        }
        peak
    })
}

/// VmRSS of a process, MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    status_mib(pid, "VmRSS")
}

/// A memory line of `/proc/PID/status` (`VmRSS`, `VmHWM`, …: kB), MiB.
fn status_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {field} line"))?;
    Ok(kib / 1024.0)
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).context("unexpected /proc/PID/stat format")
}

/// Fields 14 and 15 of `/proc/PID/stat` (proc(5)); the command name, field 2, may hold
/// spaces and parentheses, so counting starts after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`); 100, Linux's value, when that fails.
async fn clock_ticks_per_second() -> f64 {
    let output = timeout(
        Duration::from_secs(5),
        Command::new("getconf")
            .arg("CLK_TCK")
            .kill_on_drop(true)
            .output(),
    )
    .await;
    output
        .ok()
        .and_then(Result::ok)
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|hz| *hz > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces() {
        let stat = "1234 (tokio (runtime) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn own_rss_and_cpu_are_readable() {
        let pid = std::process::id();
        assert!(rss_mib(pid).expect("own VmRSS") > 0.0);
        assert!(status_mib(pid, "VmHWM").expect("own VmHWM") > 0.0);
        cpu_ticks(pid).expect("own CPU ticks");
    }
}
