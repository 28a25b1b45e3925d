//! `kadrtc-netdelay`: a lab tool that adds a constant delay to the packets an iptables NFQUEUE
//! rule hands to user space, for NAT labs in network namespaces on kernels without `sch_netem`.
//!
//! One thread, one epoll set (mio) holding the NFQUEUE netlink socket and a signal pipe. It sleeps
//! until a packet arrives, the oldest held packet is due, or a signal comes; it never spins.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod hold;

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::fd::RawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nfq::{Message, Queue, Verdict};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::hold::{DelayLine, Pushed};

/// Packets held at once unless `--max-held` says otherwise. Each held packet keeps a 4 KiB
/// netlink receive buffer, so the default costs at most about 40 MiB.
const DEFAULT_MAX_HELD: u32 = 10_000;

/// Largest accepted `--max-held` (about 400 MiB of held buffers).
const MAX_MAX_HELD: u32 = 100_000;

/// Largest accepted `--delay-ms`: one minute is already far beyond any path we emulate.
const MAX_DELAY_MS: u64 = 60_000;

const AFTER_HELP: &str = "\
Every packet that the kernel queues to NFQUEUE number N is held for D milliseconds after it
arrived here and then accepted. The delay is constant, so packet order is kept. Pair it with
this rule in the network namespace that forwards the traffic (for example the NAT router):

    iptables -t mangle -A FORWARD -j NFQUEUE --queue-num N --queue-bypass

--queue-bypass lets packets through undelayed while no kadrtc-netdelay is bound to the queue.
A packet crossing the router is delayed once per direction, so a ping through it gains 2*D of
round-trip time. Packet loss is not this tool's job (use an nftables `numgen random` rule).

At most M packets are held; beyond that a packet is accepted at once and counted. If the
kernel's own queue overflows, it accepts rather than drops (fail-open).

Prints `ready queue=N delay_ms=D` on stdout once the queue is bound. On SIGTERM or SIGINT it
accepts every packet still held, prints a summary line on stderr and exits 0. Needs root
(CAP_NET_ADMIN) in the network namespace, e.g. `ip netns exec ROUTER kadrtc-netdelay ...`.";

/// Hold packets from an NFQUEUE for a fixed delay, then accept them.
#[derive(Debug, Parser)]
#[command(name = "kadrtc-netdelay", version, after_help = AFTER_HELP)]
struct Args {
    /// NFQUEUE number to bind: the `--queue-num` of the iptables rule.
    #[arg(long, value_name = "N")]
    queue: u16,

    /// Delay added to every queued packet, in milliseconds.
    #[arg(long, value_name = "D", value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    delay_ms: u64,

    /// Most packets held at once; beyond that a packet is accepted at once and counted.
    #[arg(
        long,
        value_name = "M",
        default_value_t = DEFAULT_MAX_HELD,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_MAX_HELD)),
    )]
    max_held: u32,
}

/// The kernel counts every packet queued to us until its verdict, including those still in the
/// socket buffer, against the queue's length limit; leave this much room above `--max-held` so
/// our own bound is the one that applies.
const KERNEL_QUEUE_HEADROOM: u32 = 4_096;

/// Packets read per wake-up before releasing due ones, so a flood cannot starve the releases.
const DRAIN_BUDGET: usize = 256;

/// Receive errors in a row, with no packet between them, after which the socket is given up.
const MAX_RECV_ERRORS_IN_A_ROW: u32 = 1_000;

/// Warnings printed before further errors are only counted in the summary.
const MAX_WARNINGS: u32 = 20;

/// Packets still queued to us that are read and accepted at exit, at most.
const MAX_EXIT_DRAIN: usize = 100_000;

/// `CAP_NET_ADMIN` in the capability bit sets of `/proc/self/status` (linux/capability.h).
const CAP_NET_ADMIN_BIT: u32 = 12;

const QUEUE: Token = Token(0);
const SIGNALS: Token = Token(1);

/// What happened to the packets, for the summary line.
#[derive(Debug, Default)]
struct Counts {
    delayed: u64,
    over_bound: u64,
    flushed_at_exit: u64,
    verdict_errors: u64,
    recv_errors: u64,
}

/// The bound queue and the packets it holds.
struct Relay {
    queue: Queue,
    line: DelayLine<Message>,
    counts: Counts,
    recv_errors_in_a_row: u32,
    warnings: u32,
}

impl Relay {
    fn new(queue: Queue, delay: Duration, max_held: usize) -> Self {
        Self {
            queue,
            line: DelayLine::new(delay, max_held),
            counts: Counts::default(),
            recv_errors_in_a_row: 0,
            warnings: 0,
        }
    }

    /// Waits for packets, holds and releases them until SIGTERM or SIGINT; returns the signal.
    fn run(&mut self, poll: &mut Poll, signals: &mut Signals) -> Result<i32> {
        let mut events = Events::with_capacity(8);
        // Packets may have been queued before the socket joined the epoll set.
        let mut more_waiting = true;
        loop {
            let timeout = if more_waiting {
                Some(Duration::ZERO)
            } else {
                self.line
                    .next_due()
                    .map(|due| due.saturating_duration_since(Instant::now()))
            };
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(err).context("waiting for packets (epoll)"),
            }
            if events.iter().any(|event| event.token() == SIGNALS) {
                if let Some(signal) = signals.pending().next() {
                    return Ok(signal);
                }
            }
            // The socket is edge-triggered: read until it is empty or the budget is spent.
            more_waiting = self.drain_queue()?;
            self.release_due(Instant::now());
        }
    }

    /// Reads queued packets into the delay line; true if it stopped on the budget.
    fn drain_queue(&mut self) -> Result<bool> {
        for _ in 0..DRAIN_BUDGET {
            match self.queue.recv() {
                Ok(message) => {
                    self.recv_errors_in_a_row = 0;
                    self.admit(Instant::now(), message);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    // Netlink reports a failed verdict as an error message on the socket, so
                    // one error is no reason to stop; an endless run of them is.
                    self.counts.recv_errors += 1;
                    self.recv_errors_in_a_row += 1;
                    if self.recv_errors_in_a_row >= MAX_RECV_ERRORS_IN_A_ROW {
                        return Err(err).context(format!(
                            "reading the NFQUEUE socket failed {MAX_RECV_ERRORS_IN_A_ROW} times \
                             in a row"
                        ));
                    }
                    self.warn(format_args!("reading the NFQUEUE socket: {err}"));
                }
            }
        }
        Ok(true)
    }

    fn admit(&mut self, now: Instant, message: Message) {
        match self.line.push(now, message) {
            Pushed::Held => {}
            Pushed::OverBound(message) => {
                self.counts.over_bound += 1;
                self.accept(message);
            }
        }
    }

    fn release_due(&mut self, now: Instant) {
        while let Some(message) = self.line.pop_due(now) {
            self.counts.delayed += 1;
            self.accept(message);
        }
    }

    /// Accepts everything held, oldest first, then whatever is still waiting in the socket.
    fn flush(&mut self) {
        while let Some(message) = self.line.pop_any() {
            self.counts.flushed_at_exit += 1;
            self.accept(message);
        }
        for _ in 0..MAX_EXIT_DRAIN {
            match self.queue.recv() {
                Ok(message) => {
                    self.counts.flushed_at_exit += 1;
                    self.accept(message);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn accept(&mut self, mut message: Message) {
        message.set_verdict(Verdict::Accept);
        if let Err(err) = self.queue.verdict(message) {
            self.counts.verdict_errors += 1;
            self.warn(format_args!("sending an ACCEPT verdict: {err}"));
        }
    }

    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        self.warnings += 1;
        if self.warnings <= MAX_WARNINGS {
            eprintln!("kadrtc-netdelay: warning: {what}");
        }
        if self.warnings == MAX_WARNINGS {
            eprintln!("kadrtc-netdelay: further errors are only counted in the summary");
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kadrtc-netdelay: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let (mut queue, queue_fd) = open_queue()?;
    bind_queue(&mut queue, args)?;
    queue.set_nonblocking(true);

    let mut poll = Poll::new().context("creating an epoll instance")?;
    poll.registry()
        .register(&mut SourceFd(&queue_fd), QUEUE, Interest::READABLE)
        .context("adding the NFQUEUE socket to epoll")?;
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).context("installing SIGTERM/SIGINT handlers")?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .context("adding the signal pipe to epoll")?;

    let (num, delay_ms) = (args.queue, args.delay_ms);
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "ready queue={num} delay_ms={delay_ms}")
        .and_then(|()| stdout.flush())
        .context("writing the ready line to stdout")?;
    drop(stdout);

    let max_held = usize::try_from(args.max_held).context("--max-held does not fit in memory")?;
    let mut relay = Relay::new(queue, Duration::from_millis(args.delay_ms), max_held);
    let outcome = relay.run(&mut poll, &mut signals);
    // Whatever stopped the loop, release what is held: unanswered packets are dropped by the
    // kernel when the socket closes.
    relay.flush();
    let counts = &relay.counts;
    let stopped_by = match &outcome {
        Ok(signal) => signal_name(*signal),
        Err(_) => "error",
    };
    eprintln!(
        "kadrtc-netdelay: stopped by {stopped_by}: delayed={} over_bound={} flushed_at_exit={} \
         verdict_errors={} recv_errors={}",
        counts.delayed,
        counts.over_bound,
        counts.flushed_at_exit,
        counts.verdict_errors,
        counts.recv_errors,
    );
    outcome.map(|_| ())
}

/// Opens the netfilter netlink socket and finds its descriptor.
///
/// nfq 0.2.5 keeps the socket of a `Queue` private, yet sleeping until "a packet or the next
/// release time, whichever is first" needs it in an epoll set. Nothing else runs in this process
/// yet (one thread, no other sockets being opened), so the one socket that appears in
/// `/proc/self/fd` across `Queue::open` is the queue's.
fn open_queue() -> Result<(Queue, RawFd)> {
    let before = socket_fds()?;
    let queue = Queue::open().context("opening a netfilter netlink socket")?;
    let after = socket_fds()?;
    let new: Vec<RawFd> = after.difference(&before).copied().collect();
    match new.as_slice() {
        [fd] => Ok((queue, *fd)),
        _ => bail!(
            "cannot tell which descriptor is the NFQUEUE socket ({} new sockets appeared)",
            new.len()
        ),
    }
}

/// The descriptors of this process that are sockets.
fn socket_fds() -> Result<BTreeSet<RawFd>> {
    let mut fds = BTreeSet::new();
    let dir = fs::read_dir("/proc/self/fd").context("listing /proc/self/fd (is /proc mounted?)")?;
    for entry in dir {
        let entry = entry.context("listing /proc/self/fd")?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        // The listing's own descriptor is closed by the time its link is read: skip what vanished.
        if let Ok(target) = fs::read_link(entry.path()) {
            if target.to_string_lossy().starts_with("socket:") {
                fds.insert(fd);
            }
        }
    }
    Ok(fds)
}

/// Binds the queue and sets it up: metadata only, kernel limit above ours, fail-open.
fn bind_queue(queue: &mut Queue, args: &Args) -> Result<()> {
    let num = args.queue;
    if let Err(err) = queue.bind(num) {
        return Err(explain_bind_error(err, num));
    }
    // The verdict needs only the packet id, so copying payloads would only cost memory.
    queue
        .set_copy_range(num, 0)
        .with_context(|| format!("setting NFQUEUE {num} to copy metadata only"))?;
    let kernel_max = args.max_held.saturating_add(KERNEL_QUEUE_HEADROOM);
    queue
        .set_queue_max_len(num, kernel_max)
        .with_context(|| format!("setting the kernel length limit of NFQUEUE {num}"))?;
    queue
        .set_fail_open(num, true)
        .with_context(|| format!("setting NFQUEUE {num} to fail open"))?;
    Ok(())
}

fn explain_bind_error(err: io::Error, num: u16) -> anyhow::Error {
    let why = match err.kind() {
        // The kernel answers EPERM both to a caller without CAP_NET_ADMIN and to anyone but the
        // socket that already holds the queue.
        ErrorKind::PermissionDenied if has_net_admin() == Some(true) => format!(
            "NFQUEUE {num} is already bound by another process: stop that process (another \
             kadrtc-netdelay?) or use another --queue together with a matching --queue-num in \
             the iptables rule"
        ),
        ErrorKind::PermissionDenied => format!(
            "binding NFQUEUE {num} needs CAP_NET_ADMIN in this network namespace: run as root, \
             e.g. `sudo ip netns exec ROUTER kadrtc-netdelay --queue {num} ...`"
        ),
        ErrorKind::ResourceBusy => format!("NFQUEUE {num} is already bound by this socket"),
        _ => format!(
            "binding NFQUEUE {num} failed: is the kernel's nfnetlink_queue support available \
             (`modprobe nfnetlink_queue`)?"
        ),
    };
    anyhow::Error::new(err).context(why)
}

/// Whether this process holds `CAP_NET_ADMIN`, read from `/proc/self/status`; `None` if unknown.
fn has_net_admin() -> Option<bool> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_NET_ADMIN_BIT) != 0)
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_with_default_bound() {
        let args = Args::try_parse_from(["kadrtc-netdelay", "--queue", "3", "--delay-ms", "30"])
            .expect("valid arguments");
        assert_eq!(args.queue, 3);
        assert_eq!(args.delay_ms, 30);
        assert_eq!(args.max_held, DEFAULT_MAX_HELD);
    }

    #[test]
    fn out_of_range_arguments_are_rejected() {
        for bad in [
            ["--queue", "70000", "--delay-ms", "30"],
            ["--queue", "0", "--delay-ms", "600000"],
            ["--queue", "0", "--delay-ms", "-1"],
        ] {
            let argv = std::iter::once("kadrtc-netdelay").chain(bad);
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
        let zero_bound = [
            "kadrtc-netdelay",
            "--queue",
            "0",
            "--delay-ms",
            "30",
            "--max-held",
            "0",
        ];
        assert!(Args::try_parse_from(zero_bound).is_err());
    }

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
