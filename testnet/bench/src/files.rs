//! File transfer through the real CLI: `kadrtc send` to `kadrtc recv`, both bootstrapped
//! from one `kadrtc node`, all on 127.0.0.1. Each repetition is a fresh pair of processes in
//! a fresh room; the rate is the one `kadrtc send` reports (offer to the receiver's
//! confirmation of the SHA-256).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use rand::RngCore as _;
use serde::Serialize;
use serde_json::Value;

use crate::procs::{self, Process, EXIT_DEADLINE, READY_DEADLINE};
use crate::rtc::MIB;
use crate::stats::median;

/// Name of the file sent, in the output folder.
const SOURCE_NAME: &str = "files-source.bin";
/// Folder (in the output folder) `kadrtc recv` writes to.
const RECEIVED_DIR: &str = "files-received";
/// Time allowed for a `kadrtc send` on top of its transfer at [`SLOWEST_RATE`].
const SEND_BASE_DEADLINE: Duration = Duration::from_secs(60);
/// The slowest transfer rate given time for, bytes/s (a debug build does ≈ 20 MB/s).
const SLOWEST_RATE: f64 = 2e6;
/// Bytes written at a time to the source file.
const WRITE_CHUNK: usize = MIB;

/// The figures of the file transfers.
#[derive(Debug, Clone, Serialize)]
pub struct FilesResult {
    /// Size of the file sent, bytes (pseudo-random content).
    pub file_bytes: u64,
    /// Median transfer rate, MB/s (10⁶ bytes/s), as `kadrtc send` reports it: from the
    /// offer to the receiver's confirmation.
    pub median_mb_per_s: f64,
    /// Slowest repetition, MB/s.
    pub min_mb_per_s: f64,
    /// Fastest repetition, MB/s.
    pub max_mb_per_s: f64,
    /// Median transfer rate, MiB/s (2²⁰ bytes/s).
    pub median_mib_per_s: f64,
    /// Slowest repetition, MiB/s.
    pub min_mib_per_s: f64,
    /// Fastest repetition, MiB/s.
    pub max_mib_per_s: f64,
    /// Median transfer time (offer to confirmation), s.
    pub median_transfer_s: f64,
    /// Median wall time of the `kadrtc send` process from its start to its exit (node
    /// start, DHT discovery, connection set-up, transfer, leaving), s.
    pub median_send_wall_s: f64,
    /// Largest peak RSS (VmHWM) of the `kadrtc send` processes, MiB.
    pub sender_peak_rss_mib: f64,
    /// Largest peak RSS (VmHWM) of the `kadrtc recv` processes, MiB.
    pub receiver_peak_rss_mib: f64,
    /// SHA-256 of the file, as both sides reported it.
    pub sha256: String,
    /// Every repetition in the order run.
    pub runs: Vec<FileRun>,
}

/// One `kadrtc send` to one `kadrtc recv`.
#[derive(Debug, Clone, Serialize)]
pub struct FileRun {
    /// `bytes_per_second` of `file_sent`, in MB/s.
    pub mb_per_s: f64,
    /// `elapsed_ms` of `file_sent` (offer to confirmation), s.
    pub transfer_s: f64,
    /// The `kadrtc send` process from start to exit, s.
    pub send_wall_s: f64,
    /// Peak RSS (VmHWM, read every 50 ms) of `kadrtc send`, MiB.
    pub sender_peak_rss_mib: f64,
    /// Peak RSS (VmHWM, read every 50 ms) of `kadrtc recv`, MiB.
    pub receiver_peak_rss_mib: f64,
}

/// Sends a file of `bytes` pseudo-random bytes `reps` times from `kadrtc send` to `kadrtc
/// recv` through a `kadrtc node`; the file and the received copies live in `out`, the
/// processes' stderr in `out/logs`. Both files are deleted afterwards, even on failure.
pub async fn measure(
    binary: &Path,
    out: &Path,
    bytes: usize,
    reps: usize,
) -> anyhow::Result<FilesResult> {
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let source = out.join(SOURCE_NAME);
    let received = out.join(RECEIVED_DIR);
    let result = measure_with(binary, &source, &received, &logs, bytes, reps).await;
    remove_received(&received);
    let _ = std::fs::remove_dir(&received);
    if let Err(error) = std::fs::remove_file(&source) {
        if error.kind() != std::io::ErrorKind::NotFound {
            eprintln!("  could not delete {}: {error}", source.display());
        }
    }
    result
}

async fn measure_with(
    binary: &Path,
    source: &Path,
    received: &Path,
    logs: &Path,
    bytes: usize,
    reps: usize,
) -> anyhow::Result<FilesResult> {
    remove_received(received);
    std::fs::create_dir_all(received)
        .with_context(|| format!("creating {}", received.display()))?;
    let written = Instant::now();
    write_random_file(source.to_path_buf(), bytes).await?;
    eprintln!(
        "  wrote {} MiB of pseudo-random bytes to {} in {:.1} s",
        bytes / MIB,
        source.display(),
        written.elapsed().as_secs_f64()
    );

    let mut node = Process::spawn(
        binary,
        "node",
        &[
            "node",
            "--ephemeral",
            "--no-stun",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--json",
        ],
        &logs.join("files-node.stderr"),
    )?;
    let ready = node.wait_for("ready", READY_DEADLINE).await?;
    let bootstrap = ready["listen"][0]
        .as_str()
        .context("ready line without a listen address")?
        .to_string();
    let send_deadline = SEND_BASE_DEADLINE + Duration::from_secs_f64(bytes as f64 / SLOWEST_RATE);

    let setup = Setup {
        binary,
        bootstrap: &bootstrap,
        source,
        received,
        logs,
        bytes: bytes as u64,
        send_deadline,
    };

    let mut runs = Vec::with_capacity(reps);
    let mut sha256 = String::new();
    let outcome = async {
        for rep in 1..=reps {
            let (run, digest) = repetition(&setup, rep)
                .await
                .with_context(|| format!("repetition {rep}/{reps}"))?;
            eprintln!(
                "  {rep}/{reps}: {:.1} MB/s, transfer {:.2} s, send {:.2} s start to exit; peak RSS send {:.1} MiB, recv {:.1} MiB",
                run.mb_per_s,
                run.transfer_s,
                run.send_wall_s,
                run.sender_peak_rss_mib,
                run.receiver_peak_rss_mib
            );
            ensure!(
                sha256.is_empty() || sha256 == digest,
                "repetition {rep}: SHA-256 {digest} differs from the earlier {sha256}"
            );
            sha256 = digest;
            runs.push(run);
        }
        anyhow::Ok(())
    }
    .await;
    node.kill().await;
    outcome?;

    let rates: Vec<f64> = runs.iter().map(|r| r.mb_per_s).collect();
    let (min, max) = rates.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
        (lo.min(*r), hi.max(*r))
    });
    let mib = |mb_per_s: f64| mb_per_s * 1e6 / MIB as f64;
    let peak = |get: fn(&FileRun) -> f64| runs.iter().map(get).fold(0.0_f64, f64::max);
    Ok(FilesResult {
        file_bytes: bytes as u64,
        median_mb_per_s: median(&rates),
        min_mb_per_s: min,
        max_mb_per_s: max,
        median_mib_per_s: mib(median(&rates)),
        min_mib_per_s: mib(min),
        max_mib_per_s: mib(max),
        median_transfer_s: median(&runs.iter().map(|r| r.transfer_s).collect::<Vec<_>>()),
        median_send_wall_s: median(&runs.iter().map(|r| r.send_wall_s).collect::<Vec<_>>()),
        sender_peak_rss_mib: peak(|r| r.sender_peak_rss_mib),
        receiver_peak_rss_mib: peak(|r| r.receiver_peak_rss_mib),
        sha256,
        runs,
    })
}

/// What every repetition shares.
struct Setup<'a> {
    /// The `kadrtc` binary.
    binary: &'a Path,
    /// The `kadrtc node`'s listen address, with /p2p/.
    bootstrap: &'a str,
    /// The file to send.
    source: &'a Path,
    /// Where `kadrtc recv` writes.
    received: &'a Path,
    /// Where the processes' stderr goes.
    logs: &'a Path,
    /// Size of `source`.
    bytes: u64,
    /// How long a `kadrtc send` may take to report `file_sent`.
    send_deadline: Duration,
}

/// One `kadrtc recv --once` and one `kadrtc send` in a fresh room; the run and the file's
/// SHA-256. Deletes the received file.
async fn repetition(setup: &Setup<'_>, rep: usize) -> anyhow::Result<(FileRun, String)> {
    let Setup {
        binary,
        bootstrap,
        source,
        received,
        logs,
        bytes,
        send_deadline,
    } = *setup;
    let room = format!("bench-files-{:016x}", rand::random::<u64>());
    let listen = "/ip4/127.0.0.1/tcp/0";
    let mut recv = Process::spawn(
        binary,
        "recv",
        &[
            "recv",
            &room,
            "--out",
            utf8(received)?,
            "--once",
            "--json",
            "--bootstrap",
            bootstrap,
            "--listen",
            listen,
        ],
        &logs.join(format!("files-recv-{rep}.stderr")),
    )?;
    let recv_peak = procs::follow_peak_rss(recv.pid()?);
    recv.wait_for("ready", READY_DEADLINE).await?;

    let started = Instant::now();
    let mut send = Process::spawn(
        binary,
        "send",
        &[
            "send",
            &room,
            utf8(source)?,
            "--json",
            "--bootstrap",
            bootstrap,
            "--listen",
            listen,
        ],
        &logs.join(format!("files-send-{rep}.stderr")),
    )?;
    let send_peak = procs::follow_peak_rss(send.pid()?);
    let sent = send.wait_for("file_sent", send_deadline).await?;
    let status = send.wait_exit(EXIT_DEADLINE).await?;
    let send_wall = started.elapsed();
    ensure!(
        status.success(),
        "kadrtc send exited with {status} after `file_sent` (see {})",
        send.log().display()
    );
    let got = recv.wait_for("file_received", EXIT_DEADLINE).await?;
    let status = recv.wait_exit(EXIT_DEADLINE).await?;
    ensure!(
        status.success(),
        "kadrtc recv --once exited with {status} (see {})",
        recv.log().display()
    );

    let sent_bytes = u64_field(&sent, "bytes")?;
    ensure!(
        sent_bytes == bytes,
        "file_sent says {sent_bytes} bytes, the file has {bytes}"
    );
    let path = PathBuf::from(str_field(&got, "path")?);
    let on_disk = std::fs::metadata(&path)
        .with_context(|| format!("reading the received file {}", path.display()))?
        .len();
    ensure!(
        on_disk == bytes,
        "the received file {} has {on_disk} bytes, the sent one {bytes}",
        path.display()
    );
    let digest = str_field(&sent, "sha256")?.to_string();
    let received_digest = str_field(&got, "sha256")?;
    ensure!(
        digest.len() == 64 && received_digest == digest,
        "SHA-256 sent {digest}, received {received_digest}"
    );
    std::fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;

    let rate = sent["bytes_per_second"]
        .as_f64()
        .context("file_sent without bytes_per_second")?;
    let transfer_ms = u64_field(&sent, "elapsed_ms")?;
    let peak = |handle: tokio::task::JoinHandle<Option<f64>>, name: &'static str| async move {
        tokio::time::timeout(Duration::from_secs(2), handle)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .with_context(|| format!("no VmHWM reading of the {name} process"))
    };
    Ok((
        FileRun {
            mb_per_s: rate / 1e6,
            transfer_s: transfer_ms as f64 / 1000.0,
            send_wall_s: send_wall.as_secs_f64(),
            sender_peak_rss_mib: peak(send_peak, "send").await?,
            receiver_peak_rss_mib: peak(recv_peak, "recv").await?,
        },
        digest,
    ))
}

/// Writes `bytes` pseudo-random bytes to `path` (off the async threads).
async fn write_random_file(path: PathBuf, bytes: usize) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut rng = rand::rng();
        let mut chunk = vec![0_u8; WRITE_CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            rng.fill_bytes(&mut chunk[..n]);
            file.write_all(&chunk[..n])
                .with_context(|| format!("writing {}", path.display()))?;
            left -= n;
        }
        file.flush()
            .with_context(|| format!("writing {}", path.display()))
    })
    .await
    .context("the task writing the source file failed")?
}

/// Deletes what `kadrtc recv` may have left of the source file in `received` (a copy, or a
/// `.part` of a failed transfer).
fn remove_received(received: &Path) {
    for name in [SOURCE_NAME.to_string(), format!("{SOURCE_NAME}.part")] {
        let path = received.join(name);
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                eprintln!("  could not delete {}: {error}", path.display());
            }
        }
    }
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn str_field<'a>(event: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    event[field]
        .as_str()
        .with_context(|| format!("{} event without {field}", event["event"]))
}

fn u64_field(event: &Value, field: &str) -> anyhow::Result<u64> {
    event[field]
        .as_u64()
        .with_context(|| format!("{} event without {field}", event["event"]))
}
