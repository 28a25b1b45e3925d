//! Shared rig of the whole-process tests: `kadrtc` processes read through their `--json`
//! stdout, small networks of them, and signed envelopes for attackers.

#![allow(dead_code)] // each test binary uses its own part of the rig

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kadrtc_dht::{DhtConfig, DhtHandle};
use kadrtc_proto::{
    Body, Envelope, Keypair, PeerId, RoomKey, RoomName, SessionId, Signal, ENVELOPE_VERSION,
};
use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(60);

/// One running `kadrtc` process.
pub struct Proc {
    name: String,
    pub child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    /// Every event read so far, in order.
    seen: Vec<Value>,
    /// Events read but not yet matched by a wait.
    backlog: Vec<Value>,
    stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        Self::spawn_with_env(name, args, &[])
    }

    /// [`Proc::spawn`] with extra environment variables (`RUST_LOG` defaults to `warn`; the
    /// config and data directories to a fresh one, see [`command`]).
    pub fn spawn_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = test_dir();
        let stderr = dir.join(format!("{name}.log"));
        let mut child = command(&fresh_home(name))
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("kadrtc binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        let label = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                    Err(_) => panic!("{label}: stdout line is not JSON: {line}"),
                }
            }
        });
        Self {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            events,
            seen: Vec::new(),
            backlog: Vec::new(),
            stderr,
        }
    }

    pub fn node(name: &str, bootstrap: Option<&str>) -> Self {
        Self::node_with_env(name, bootstrap, &[])
    }

    /// `kadrtc node --ephemeral` on loopback with extra environment variables.
    pub fn node_with_env(name: &str, bootstrap: Option<&str>, env: &[(&str, &str)]) -> Self {
        // Tests run in parallel: each node answers STUN on a free port.
        let mut args = vec![
            "node",
            "--ephemeral",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--stun-port",
            "0",
            "--no-mdns",
            "--json",
        ];
        if let Some(b) = bootstrap {
            args.extend(["--bootstrap", b]);
        }
        Self::spawn_with_env(name, &args, env)
    }

    pub fn join(name: &str, room: &str, bootstrap: &str) -> Self {
        Self::join_with(name, room, bootstrap, &[], &[])
    }

    /// `kadrtc join` with extra arguments and environment variables.
    pub fn join_with(
        name: &str,
        room: &str,
        bootstrap: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::in_room(name, "join", room, bootstrap, extra, env)
    }

    /// `kadrtc VERB ROOM` (`join`, `send`, `recv`) on loopback, bootstrapped from
    /// `bootstrap`, with `--json`, extra arguments and environment variables.
    pub fn in_room(
        name: &str,
        verb: &str,
        room: &str,
        bootstrap: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = vec![
            verb,
            room,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            bootstrap,
            "--json",
        ];
        args.extend_from_slice(extra);
        Self::spawn_with_env(name, &args, env)
    }

    /// Every event read so far, including those still waiting in the backlog.
    pub fn events_so_far(&mut self) -> &[Value] {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event.clone());
            self.backlog.push(event);
        }
        &self.seen
    }

    /// Peak resident memory of the process so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the process's stderr contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        self.wait_log_count(needle, 1);
    }

    /// Waits until one line of the process's stderr contains every one of `needles`.
    pub fn wait_log_line(&self, needles: &[&str]) {
        self.wait_log_until(&format!("a log line with all of {needles:?}"), |log| {
            log.lines()
                .any(|line| needles.iter().all(|n| line.contains(n)))
        });
    }

    /// Waits until the process's stderr contains `needle` at least `count` times.
    pub fn wait_log_count(&self, needle: &str, count: usize) {
        self.wait_log_until(&format!("{count} log lines with {needle:?}"), |log| {
            log.matches(needle).count() >= count
        });
    }

    fn wait_log_until(&self, what: &str, done: impl Fn(&str) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !done(&self.log()) {
            assert!(
                Instant::now() < end,
                "{}: no {what} within {DEADLINE:?}; stderr:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Takes the first event not matched by an earlier wait that satisfies `pred`, waiting
    /// for it if needed.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                    self.backlog.push(event);
                }
                Err(_) => panic!(
                    "{}: no {what} within {DEADLINE:?}; saw {:?}; stderr:\n{}",
                    self.name,
                    self.seen,
                    self.log()
                ),
            }
        }
    }

    pub fn wait_event(&mut self, name: &str) -> Value {
        self.wait_for(name, |e| e["event"] == name)
    }

    /// The ready event's peer id and first listen address.
    pub fn ready(&mut self) -> (String, String) {
        let ready = self.wait_event("ready");
        let addr = ready["listen"][0].as_str().unwrap().to_string();
        assert!(addr.ends_with(&format!("/p2p/{}", ready["peer_id"].as_str().unwrap())));
        (ready["peer_id"].as_str().unwrap().to_string(), addr)
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin, waits for a clean exit and collects the remaining events.
    pub fn finish(mut self) -> Vec<Value> {
        drop(self.stdin.take());
        let status = self.wait_exit("end of stdin");
        assert!(
            status.success(),
            "{}: exit {status}; stderr:\n{}",
            self.name,
            self.log()
        );
        while let Ok(event) = self.events.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(event);
        }
        std::mem::take(&mut self.seen)
    }

    /// Waits (at most 20 s) for the process to exit after `cause`.
    pub fn wait_exit(&mut self, cause: &str) -> std::process::ExitStatus {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "{}: did not exit after {cause}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test binary's scratch directory (logs, homes), created if missing.
pub fn test_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kadrtc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A new empty directory under [`test_dir`], for one process's config and data.
pub fn fresh_home(label: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let home = test_dir().join(format!("home-{label}-{n}"));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    home
}

/// The `kadrtc` binary with its config and data directories (`XDG_CONFIG_HOME`,
/// `XDG_DATA_HOME`) in `home`, so that no test reads the developer's config file or writes
/// their identity.
pub fn command(home: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kadrtc"));
    command
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("KADRTC_CONFIG");
    command
}

/// Starts `n` nodes, each bootstrapped from the first; returns them with their addresses.
pub fn network(n: usize) -> (Vec<Proc>, Vec<String>) {
    let mut first = Proc::node("node1", None);
    let (_, first_addr) = first.ready();
    let mut nodes = vec![first];
    let mut addrs = vec![first_addr.clone()];
    for i in 2..=n {
        let mut node = Proc::node(&format!("node{i}"), Some(&first_addr));
        addrs.push(node.ready().1);
        nodes.push(node);
    }
    (nodes, addrs)
}

pub fn room_name(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A signed offer from `from` to `to` in `room`, and the mailbox key it belongs under.
pub fn signed_offer(from: &Keypair, to: PeerId, room: &str) -> (Vec<u8>, Vec<u8>) {
    let envelope = Envelope {
        version: ENVELOPE_VERSION,
        room_id: RoomName::new(room).unwrap().id(),
        from: from.public().to_peer_id(),
        to: Some(to),
        session: SessionId::random(),
        seq: 1,
        created_at: now_ms(),
        expires_at: now_ms() + 60_000,
        body: Body::Offer(Signal {
            sdp: "v=0\r\n".into(),
            candidates: vec![],
            end_of_candidates: true,
            offer_hash: None,
        }),
    };
    let key = envelope.room_id.mailbox_key(&envelope.from, &to);
    let room_key = RoomKey::derive(&RoomName::new(room).unwrap());
    (key, envelope.sign(from, &room_key).unwrap())
}

/// [`signed_offer`] with one bit of its signature (the last field) flipped.
pub fn forged_offer(from: &Keypair, to: PeerId, room: &str) -> (Vec<u8>, Vec<u8>) {
    let (key, mut bytes) = signed_offer(from, to, room);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    (key, bytes)
}

pub async fn client(bootstrap: &str, key: Keypair) -> DhtHandle {
    DhtHandle::spawn(
        DhtConfig::new(key)
            .with_listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .with_bootstrap(bootstrap.parse().unwrap()),
    )
    .await
    .unwrap()
}

/// Puts `value` under `key` at the node `bootstrap`, and only there, with a bare Kademlia
/// client whose own store takes values of any size, as a non-kadrtc implementation could:
/// kadrtc's own nodes refuse to even send an oversized record. Returns the put's outcome
/// once that node answered: `Err` with libp2p's reason when it did not. (A put to the closest
/// peers with quorum one could end on another peer's answer, and the client be dropped
/// before its request reached `bootstrap`: seen in CI.)
pub async fn raw_put_record(bootstrap: &str, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
    use futures::StreamExt as _;
    use libp2p::kad::{self, store::MemoryStore, store::MemoryStoreConfig};
    use libp2p::multiaddr::Protocol;
    use libp2p::swarm::SwarmEvent;

    let addr: libp2p::Multiaddr = bootstrap.parse().unwrap();
    let Some(Protocol::P2p(peer)) = addr.iter().last() else {
        panic!("bootstrap address without /p2p/");
    };
    let mut swarm = raw_swarm(kadrtc_proto::Keypair::generate_ed25519(), |key| {
        let local = key.public().to_peer_id();
        let store = MemoryStore::with_config(
            local,
            MemoryStoreConfig {
                max_value_bytes: 1 << 20,
                ..Default::default()
            },
        );
        let config = kad::Config::new(libp2p::StreamProtocol::new(kadrtc_dht::KAD_PROTOCOL));
        let mut kad = kad::Behaviour::with_config(local, store, config);
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    swarm.behaviour_mut().add_address(&peer, addr);
    swarm.behaviour_mut().put_record_to(
        kad::Record::new(key, value),
        std::iter::once(peer),
        kad::Quorum::One,
    );
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(end, swarm.select_next_some())
            .await
            .expect("the put finishes within the deadline");
        if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
            result: kad::QueryResult::PutRecord(result),
            step,
            ..
        }) = event
        {
            if step.last {
                return result.map(drop).map_err(|error| error.to_string());
            }
        }
    }
}

/// A bare gossipsub client (no Kademlia, no identify: nobody learns its address) that
/// connects to `relay`, waits for the relay's subscription to `topic`, publishes `messages`
/// signed and authored by `key`, and keeps running until the returned task is aborted: a
/// publisher that reaches a room only through one relay.
pub async fn raw_gossip_publish(
    relay: &str,
    key: kadrtc_proto::Keypair,
    topic: String,
    messages: Vec<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt as _;
    use libp2p::gossipsub;
    use libp2p::swarm::SwarmEvent;

    let relay_addr: libp2p::Multiaddr = relay.parse().unwrap();
    let mut swarm = raw_swarm(key, |key| {
        let config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .build()
            .unwrap();
        gossipsub::Behaviour::<gossipsub::IdentityTransform>::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            config,
        )
        .unwrap()
    });
    let topic = gossipsub::IdentTopic::new(topic);
    swarm.behaviour_mut().subscribe(&topic).unwrap();
    swarm.dial(relay_addr).unwrap();
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(end, swarm.select_next_some())
            .await
            .expect("the relay subscribes within the deadline");
        if let SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) = event {
            break;
        }
    }
    for message in messages {
        swarm
            .behaviour_mut()
            .publish(topic.clone(), message)
            .unwrap();
    }
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    })
}

/// A bare libp2p swarm with `key` over TCP + noise + yamux running `behaviour`, for the
/// attackers that kadrtc's own node would not let the tests play.
fn raw_swarm<B: libp2p::swarm::NetworkBehaviour>(
    key: kadrtc_proto::Keypair,
    behaviour: impl FnOnce(&kadrtc_proto::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(behaviour)
        .unwrap()
        .build()
}
