//! The results of one run: the machine, every figure, the table with the targets,
//! and how they are written (`results.json`, the table on stdout).

use serde::Serialize;

use crate::dht::DhtResult;
use crate::files::FilesResult;
use crate::join::JoinResult;
use crate::procs::ResourceResult;
use crate::rtc::{order_word, Throughput};
use crate::stats::{fmt_ms, Summary};

/// Where the figures were taken.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// Cores available to this process.
    pub cores: usize,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// MemTotal of /proc/meminfo, MiB.
    pub memory_mib: u64,
}

/// Everything one run measured; a figure is `None` when its measurement failed (see
/// `errors`).
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Format version of this file.
    pub version: u32,
    /// Whether `--quick` (tiny counts, for CI) was given.
    pub quick: bool,
    /// `release` or `debug`: how the benchmark was built.
    pub profile: &'static str,
    /// Unix time the run started, s.
    pub started_at_unix_s: u64,
    /// Wall time of the whole run, s.
    pub duration_s: f64,
    /// The machine.
    pub machine: Machine,
    /// Bare WebRTC offer-to-open (two connections in one process).
    pub bare_offer_to_open: Option<Summary>,
    /// Join-to-open through kadrtc on a 5-node loopback testnet.
    pub join_kadrtc: Option<JoinResult>,
    /// Join-to-open through the central WebSocket relay.
    pub join_relay: Option<JoinResult>,
    /// Median kadrtc join over median relay join (both sides open).
    pub join_ratio: Option<f64>,
    /// Channel and TCP throughput.
    pub throughput: Option<Vec<Throughput>>,
    /// DHT lookups by network size.
    pub dht: Vec<DhtResult>,
    /// RSS and CPU of the `kadrtc` binary.
    pub resources: Option<ResourceResult>,
    /// A file sent from `kadrtc send` to `kadrtc recv`.
    pub files: Option<FilesResult>,
    /// The printed table.
    pub table: Vec<Row>,
    /// Measurements that could not run, with why.
    pub errors: Vec<SectionError>,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What is measured.
    pub figure: String,
    /// The measured value.
    pub value: String,
    /// The target, or "—".
    pub target: String,
    /// "met", "missed" or "—" (no target).
    pub status: String,
}

/// A measurement that could not run.
#[derive(Debug, Clone, Serialize)]
pub struct SectionError {
    /// Which measurement.
    pub section: String,
    /// Why (the error chain).
    pub error: String,
}

impl Machine {
    /// Reads /proc.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, name)| name.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            kernel,
            memory_mib,
        }
    }

    /// One line: "Intel Xeon, 2 cores, 23.5 GiB, Linux 6.1".
    pub fn describe(&self) -> String {
        format!(
            "{}, {} cores, {:.1} GiB, Linux {}",
            self.cpu,
            self.cores,
            self.memory_mib as f64 / 1024.0,
            self.kernel
        )
    }
}

impl Results {
    /// Builds the table from the figures, with the targets of issue 5.
    pub fn build_table(&mut self) {
        let mut rows = Vec::new();
        let row = |figure: &str, value: String, target: &str, met: Option<bool>| Row {
            figure: figure.to_string(),
            value,
            target: target.to_string(),
            status: match met {
                Some(true) => "met".into(),
                Some(false) => "missed".into(),
                None => "—".into(),
            },
        };
        if let Some(bare) = &self.bare_offer_to_open {
            rows.push(row(
                "bare WebRTC offer-to-open (both open)",
                bare.describe(),
                "≤ 5 ms median",
                Some(bare.median_ms <= 5.0),
            ));
        }
        if let Some(join) = &self.join_kadrtc {
            rows.push(row(
                "join-to-open via kadrtc DHT, 5 nodes (both open)",
                join_value(join),
                "≤ 20 ms median",
                Some(join.both_open.median_ms <= 20.0),
            ));
            rows.push(row(
                "  each joiner's own elapsed (A / B medians)",
                format!(
                    "{} / {} ms",
                    fmt_ms(join.side_a.median_ms),
                    fmt_ms(join.side_b.median_ms)
                ),
                "—",
                None,
            ));
        }
        if let Some(join) = &self.join_relay {
            rows.push(row(
                "join-to-open via central WebSocket relay (both open)",
                join_value(join),
                "— (baseline)",
                None,
            ));
        }
        if let Some(ratio) = self.join_ratio {
            rows.push(row(
                "join ratio kadrtc / relay (medians)",
                format!("{ratio:.2}×"),
                "≤ 1.5×",
                Some(ratio <= 1.5),
            ));
        }
        if let Some(throughput) = &self.throughput {
            let tcp = |size: usize| {
                throughput
                    .iter()
                    .find(|t| t.transport == "tcp" && t.message_bytes == size)
                    .map(|t| t.median_mb_per_s)
            };
            for t in throughput.iter().filter(|t| t.transport == "webrtc") {
                let kib = t.message_bytes / 1024;
                let ratio = tcp(t.message_bytes)
                    .filter(|tcp| *tcp > 0.0)
                    .map(|tcp| format!(", {:.1} % of TCP", t.median_mb_per_s / tcp * 100.0))
                    .unwrap_or_default();
                let target = kib == 16 && t.ordered;
                rows.push(row(
                    &format!("channel throughput, {kib} KiB, {}", order_word(t.ordered)),
                    format!(
                        "{:.1} MB/s{ratio} ({} MiB × {})",
                        t.median_mb_per_s,
                        t.total_bytes / (1024 * 1024),
                        t.mb_per_s.len()
                    ),
                    if target { "≥ 100 MB/s" } else { "—" },
                    target.then_some(t.median_mb_per_s >= 100.0),
                ));
            }
            for t in throughput.iter().filter(|t| t.transport == "tcp") {
                rows.push(row(
                    &format!("plain TCP loopback, {} KiB writes", t.message_bytes / 1024),
                    format!("{:.0} MB/s", t.median_mb_per_s),
                    "— (reference)",
                    None,
                ));
            }
        }
        for dht in &self.dht {
            rows.push(row(
                &format!(
                    "DHT get_record, N = {} (k = {}, {} process{})",
                    dht.nodes,
                    dht.replication_factor,
                    dht.processes,
                    if dht.processes == 1 { "" } else { "es" }
                ),
                format!(
                    "p50 {} ms, p90 {} ms; {:.1} requests/get (log2 N = {:.1}); {}/{} found; put p50 {} ms",
                    fmt_ms(dht.get.median_ms),
                    fmt_ms(dht.get.p90_ms),
                    dht.mean_requests,
                    dht.log2_nodes,
                    dht.found,
                    dht.gets,
                    fmt_ms(dht.put.median_ms),
                ),
                "—",
                None,
            ));
        }
        if let Some(r) = &self.resources {
            rows.push(row(
                "RSS, idle kadrtc node",
                format!("{:.1} MiB", r.node_idle_rss_mib),
                "≤ 15 MiB",
                Some(r.node_idle_rss_mib <= 15.0),
            ));
            for sample in &r.joiner_rss_mib {
                rows.push(row(
                    &format!("RSS, kadrtc join with {} open channel(s)", sample.channels),
                    format!("{:.1} MiB", sample.rss_mib),
                    "—",
                    None,
                ));
            }
            rows.push(row(
                &format!("CPU, kadrtc join idle with {} channels", r.cpu_channels),
                format!(
                    "{:.2} % of a core (over {:.0} s)",
                    r.joiner_idle_cpu_percent, r.cpu_window_s
                ),
                "≤ 2 %",
                Some(r.joiner_idle_cpu_percent <= 2.0),
            ));
        }
        if let Some(f) = &self.files {
            rows.push(row(
                &format!(
                    "file transfer, kadrtc send → recv CLI, {} MiB",
                    f.file_bytes / (1024 * 1024)
                ),
                format!(
                    "{:.1} MB/s median (min {:.1}, max {:.1}; {} run{}) = {:.1} MiB/s (min {:.1}, max {:.1})",
                    f.median_mb_per_s,
                    f.min_mb_per_s,
                    f.max_mb_per_s,
                    f.runs.len(),
                    if f.runs.len() == 1 { "" } else { "s" },
                    f.median_mib_per_s,
                    f.min_mib_per_s,
                    f.max_mib_per_s,
                ),
                "—",
                None,
            ));
            rows.push(row(
                "  transfer / whole kadrtc send process (medians)",
                format!(
                    "{:.2} s / {:.2} s",
                    f.median_transfer_s, f.median_send_wall_s
                ),
                "—",
                None,
            ));
            rows.push(row(
                "  peak RSS, kadrtc send / kadrtc recv",
                format!(
                    "{:.1} / {:.1} MiB",
                    f.sender_peak_rss_mib, f.receiver_peak_rss_mib
                ),
                "—",
                None,
            ));
        }
        for error in &self.errors {
            rows.push(row(
                &error.section,
                format!("could not run: {}", error.error),
                "—",
                None,
            ));
        }
        self.table = rows;
    }

    /// The table as Markdown (it reads as plain text too).
    pub fn table_text(&self) -> String {
        let headers = ["figure", "value", "target", "status"];
        let cells: Vec<[&str; 4]> = self
            .table
            .iter()
            .map(|r| [&*r.figure, &*r.value, &*r.target, &*r.status])
            .collect();
        let mut widths = headers.map(|h| h.chars().count());
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 4]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = line(headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        for row in cells {
            out.push_str(&line(row));
        }
        out
    }
}

fn join_value(join: &JoinResult) -> String {
    let failed = if join.failed_runs > 0 {
        format!(", {} failed", join.failed_runs)
    } else {
        String::new()
    };
    format!("{}{failed}", join.both_open.describe())
}
