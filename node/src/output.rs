//! What `kadrtc` prints on stdout: text for people, or one JSON object per line with
//! `--json`.

use std::io::Write as _;

use std::time::Duration;

use kadrtc::{Discovery, Node, PeerId, PeerInfo, RoomError, RoomEvent};
use serde_json::{json, Value};

/// Prints events as text or JSON lines.
#[derive(Clone)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub fn ready(&self, node: &Node) {
        let listen: Vec<String> = node
            .listen_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        let stun = node.stun_addr().map(|addr| addr.to_string());
        let relay = node.relay_addr().map(|addr| addr.to_string());
        if self.json {
            self.json(json!({
                "event": "ready",
                "peer_id": node.peer_id().to_string(),
                "listen": listen,
                "stun": stun,
                "relay": relay,
            }));
        } else {
            self.text(&format!("peer id {}", node.peer_id()));
            for addr in listen {
                self.text(&format!("listening on {addr}"));
            }
            if let Some(stun) = stun {
                self.text(&format!("answering STUN on udp {stun}"));
            }
            if let Some(relay) = relay {
                self.text(&format!("relaying TURN on udp {relay}"));
            }
        }
    }

    /// A room made from nothing: how the other side joins it.
    pub fn room_created(&self, room: &str, link: &str) {
        let command = format!("kadrtc join {link}");
        if self.json {
            self.json(
                json!({"event": "room_created", "room": room, "link": link, "command": command}),
            );
        } else {
            self.text(&format!("* made a new room {room}; on the other side run:"));
            self.text(&format!("    {command}"));
        }
    }

    /// Text mode: the room is joined, and what to do next (`next`).
    pub fn joined(&self, room: &str, next: &str) {
        if !self.json {
            self.text(&format!("* joined room {room:?}; {next}"));
        }
    }

    pub fn room_event(&self, event: &RoomEvent) {
        match event {
            RoomEvent::PeerDiscovered { peer, via } => {
                let via = match via {
                    Discovery::Dht => "dht",
                    Discovery::Gossipsub => "gossipsub",
                };
                if self.json {
                    self.json(json!({"event": "peer_discovered", "peer_id": peer.to_string(), "via": via}));
                } else {
                    self.text(&format!("* discovered {peer} via {via}"));
                }
            }
            RoomEvent::ChannelOpen {
                peer,
                elapsed,
                candidate_pair,
            } => {
                let elapsed_ms = elapsed.as_millis();
                let (local, remote) = match candidate_pair {
                    Some(pair) => (Some(pair.local.as_str()), Some(pair.remote.as_str())),
                    None => (None, None),
                };
                if self.json {
                    self.json(json!({
                        "event": "channel_open",
                        "peer_id": peer.to_string(),
                        "elapsed_ms": elapsed_ms,
                        "local": local,
                        "remote": remote,
                    }));
                } else {
                    let path = match candidate_pair {
                        Some(pair) if pair.is_relayed() => {
                            format!("relayed, {}↔{}", pair.local, pair.remote)
                        }
                        Some(pair) => format!("direct, {}↔{}", pair.local, pair.remote),
                        None => "path unknown".into(),
                    };
                    self.text(&format!(
                        "* channel open to {peer} ({elapsed_ms} ms after joining; {path})"
                    ));
                }
            }
            RoomEvent::Message { peer, data } => {
                let text = String::from_utf8_lossy(data);
                if self.json {
                    self.json(
                        json!({"event": "message", "peer_id": peer.to_string(), "text": text}),
                    );
                } else {
                    self.text(&format!("<{}> {text}", short(&peer.to_string())));
                }
            }
            RoomEvent::PeerLeft { peer } => {
                if self.json {
                    self.json(json!({"event": "peer_left", "peer_id": peer.to_string()}));
                } else {
                    self.text(&format!("* {peer} left"));
                }
            }
            RoomEvent::Error { peer, error } => {
                let kind = match error {
                    RoomError::GaveUp { .. } => "gave_up",
                    RoomError::AttemptFailed { .. } => "attempt_failed",
                    RoomError::Rtc(_) => "webrtc",
                    RoomError::WrongPassphrase => "wrong_passphrase",
                    RoomError::ChannelBinding(_) => "channel_binding",
                    RoomError::NoPath { .. } => "no_path",
                    RoomError::RoomFull { .. } => "room_full",
                    _ => "other",
                };
                let message = match peer {
                    Some(peer) => format!("{peer}: {error}"),
                    None => error.to_string(),
                };
                if self.json {
                    self.json(json!({
                        "event": "error",
                        "kind": kind,
                        "peer_id": peer.map(|p| p.to_string()),
                        "message": message,
                    }));
                } else {
                    self.error(&message);
                }
            }
            other => tracing::debug!(?other, "event not shown"),
        }
    }

    /// A file offered to a command that does not take files.
    pub fn file_refused(&self, peer: PeerId, name: &str, reason: &str) {
        if self.json {
            self.json(json!({
                "event": "file_refused",
                "peer_id": peer.to_string(),
                "file": name,
                "reason": reason,
            }));
        } else {
            self.text(&format!("* {peer} offered {name}; refused: {reason}"));
        }
    }

    /// The answer to `/peers`.
    pub fn peers(&self, peers: &[PeerInfo]) {
        if self.json {
            let list: Vec<Value> = peers
                .iter()
                .map(|info| {
                    json!({
                        "peer_id": info.peer.to_string(),
                        "rtt_ms": info.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
                        "local": info.candidate_pair.map(|pair| pair.local.as_str()),
                        "remote": info.candidate_pair.map(|pair| pair.remote.as_str()),
                        "connected_s": info.connected_at.elapsed().as_secs(),
                    })
                })
                .collect();
            self.json(json!({"event": "peers", "peers": list}));
            return;
        }
        self.text(&format!("* {} peer(s) with an open channel", peers.len()));
        for info in peers {
            let rtt = match info.rtt {
                Some(rtt) => format!("{:.1} ms", rtt.as_secs_f64() * 1000.0),
                None => "rtt unknown".into(),
            };
            let path = match info.candidate_pair {
                Some(pair) => format!("{}↔{}", pair.local, pair.remote),
                None => "path unknown".into(),
            };
            self.text(&format!(
                "  {}  {rtt}  {path}  connected {} s",
                info.peer,
                info.connected_at.elapsed().as_secs()
            ));
        }
    }

    /// The answer to `/ping` for one peer.
    pub fn ping(&self, peer: PeerId, rtt: Duration) {
        let rtt_ms = rtt.as_secs_f64() * 1000.0;
        if self.json {
            self.json(json!({"event": "ping", "peer_id": peer.to_string(), "rtt_ms": rtt_ms}));
        } else {
            self.text(&format!("* ping {peer}: {rtt_ms:.1} ms"));
        }
    }

    /// The node lost its last connection to the network (`peers` 0), or has one again.
    pub fn network(&self, peers: usize) {
        if peers == 0 {
            let message = "lost every connection to the kadrtc network: open channels go on, but no new member can be found until a node answers (dialling the bootstrap nodes again)";
            if self.json {
                self.json(json!({"event": "error", "kind": "network_lost", "message": message}));
            } else {
                eprintln!("kadrtc: {message}");
            }
        } else if self.json {
            self.json(json!({"event": "network_restored", "peers": peers}));
        } else {
            self.text(&format!("* connected to the network again ({peers} peers)"));
        }
    }

    /// An error event in JSON mode; text mode leaves errors to stderr.
    pub fn error(&self, message: &str) {
        if self.json {
            self.json(json!({"event": "error", "message": message}));
        } else {
            eprintln!("kadrtc: {message}");
        }
    }

    /// Whether events are JSON lines.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A line for people on stdout in text mode (`* text`); nothing with `--json`.
    pub fn note(&self, text: &str) {
        if !self.json {
            self.text(&format!("* {text}"));
        }
    }

    /// One JSON event line (call only with `--json`).
    pub fn json(&self, value: Value) {
        self.text(&value.to_string());
    }

    fn text(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (the reader went away) is not worth crashing for.
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }
}

/// The last 8 characters of a PeerId, enough to tell room members apart in chat.
fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}
