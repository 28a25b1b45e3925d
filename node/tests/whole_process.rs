//! Whole-process tests: the real `kadrtc` binary on 127.0.0.1, driven through stdin and read
//! through its `--json` stdout, with deadlines on every wait.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kadrtc_proto::{Keypair, PeerId, RoomName};
use serde_json::Value;

use support::{client, forged_offer, network, room_name, signed_offer, Proc, DEADLINE};

fn is_message_from(event: &Value, peer: &str, text: &str) -> bool {
    event["event"] == "message" && event["peer_id"] == peer && event["text"] == text
}

#[test]
fn two_joiners_bootstrapped_from_different_nodes_of_five_exchange_messages_both_ways() {
    let (_nodes, addrs) = network(5);
    let room = room_name("pair");
    let mut a = Proc::join("a", &room, &addrs[1]);
    let mut b = Proc::join("b", &room, &addrs[3]);
    let (a_id, _) = a.ready();
    let (b_id, _) = b.ready();

    let discovered = a.wait_event("peer_discovered");
    assert_eq!(discovered["peer_id"], b_id.as_str());
    assert!(matches!(
        discovered["via"].as_str(),
        Some("dht" | "gossipsub")
    ));
    let open_a = a.wait_event("channel_open");
    let open_b = b.wait_event("channel_open");
    assert_eq!(open_a["peer_id"], b_id.as_str());
    assert_eq!(open_b["peer_id"], a_id.as_str());
    assert!(open_a["elapsed_ms"].as_u64().is_some());
    // On 127.0.0.1 both ends use host candidates: a direct path, reported as such.
    for open in [&open_a, &open_b] {
        assert_eq!(
            (&open["local"], &open["remote"]),
            (&"host".into(), &"host".into())
        );
    }

    a.say("hello from a");
    b.say("hello from b");
    b.wait_for("a's message", |e| is_message_from(e, &a_id, "hello from a"));
    a.wait_for("b's message", |e| is_message_from(e, &b_id, "hello from b"));

    // a leaves (end of stdin); b is told.
    a.finish();
    b.wait_for("a leaving", |e| {
        e["event"] == "peer_left" && e["peer_id"] == a_id.as_str()
    });
}

#[test]
fn room_of_three_connects_every_pair_exactly_once_and_every_message_reaches_the_other_two() {
    let (_nodes, addrs) = network(3);
    let room = room_name("trio");
    let mut joiners: Vec<Proc> = (0..3)
        .map(|i| Proc::join(&format!("j{i}"), &room, &addrs[i]))
        .collect();
    let ids: Vec<String> = joiners.iter_mut().map(|j| j.ready().0).collect();

    for j in joiners.iter_mut() {
        j.wait_event("channel_open");
        j.wait_event("channel_open");
    }
    for (i, j) in joiners.iter_mut().enumerate() {
        j.say(&format!("hello from {i}"));
    }
    for (i, j) in joiners.iter_mut().enumerate() {
        for (k, id) in ids.iter().enumerate().filter(|(k, _)| *k != i) {
            let text = format!("hello from {k}");
            j.wait_for(&text, |e| is_message_from(e, id, &text));
        }
    }

    let mut all_events = Vec::new();
    for j in joiners {
        all_events.push(j.finish());
    }
    for (i, events) in all_events.iter().enumerate() {
        let mut opens: HashMap<&str, usize> = HashMap::new();
        for e in events.iter().filter(|e| e["event"] == "channel_open") {
            *opens.entry(e["peer_id"].as_str().unwrap()).or_default() += 1;
        }
        let expected: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, id)| (id.as_str(), 1))
            .collect();
        assert_eq!(
            opens, expected,
            "joiner {i} opened exactly one channel per other member"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_envelope_is_refused_by_the_storing_node_and_ignored_by_the_joiner() {
    const TTL: Duration = Duration::from_secs(60);
    let mut node = Proc::node("storer", None);
    let (_, node_addr) = node.ready();
    let room = room_name("forged");
    let mut joiner = Proc::join("joiner", &room, &node_addr);
    let (joiner_id, _) = joiner.ready();
    let joiner_peer: PeerId = joiner_id.parse().unwrap();

    // The attacker writes a forged offer (claimed sender: a third identity) into the mailbox
    // for the joiner, plus a valid record elsewhere as a control.
    let attacker_key = Keypair::generate_ed25519();
    let attacker = client(&node_addr, attacker_key.clone()).await;
    let forger = Keypair::generate_ed25519();
    let forger_id = forger.public().to_peer_id().to_string();
    let (forged_key, forged) = forged_offer(&forger, joiner_peer, &room);
    let _ = attacker
        .put_record(forged_key.clone(), forged.clone(), TTL)
        .await;
    let (control_key, control) = signed_offer(&attacker_key, PeerId::random(), &room);
    attacker
        .put_record(control_key.clone(), control, TTL)
        .await
        .unwrap();

    // The same forged offer on the room topic, reaching the joiner directly.
    let topic = RoomName::new(room.as_str()).unwrap().id().topic();
    let _sub = attacker.subscribe(topic.clone()).await.unwrap();
    let presence = RoomName::new(room.as_str()).unwrap().id().presence_key();
    let end = Instant::now() + DEADLINE;
    loop {
        // get_providers dials the joiner; publish succeeds once it knows our subscription.
        let _ = attacker.get_providers(presence.clone()).await;
        if attacker
            .publish(topic.clone(), forged.clone())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "attacker never reached the joiner's topic"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The joiner is a DHT client: only the topic message reaches it, so the attacker stays
    // connected until the joiner has read (and refused) it.
    let end = Instant::now() + DEADLINE;
    while !joiner.log().contains("does not verify") {
        assert!(
            Instant::now() < end,
            "the joiner never refused the forged topic message:\n{}",
            joiner.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(attacker);

    // A reader that never held either record asks the network.
    let reader = client(&node_addr, Keypair::generate_ed25519()).await;
    let end = Instant::now() + DEADLINE;
    while reader
        .get_record(control_key.clone())
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < end, "the control record is never found");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reader.get_record(forged_key).await.unwrap().is_empty(),
        "no node stored the forged record"
    );

    // Both the node and the joiner said why, in a log line.
    let end = Instant::now() + DEADLINE;
    while !(node.log().contains("rejected record") && joiner.log().contains("does not verify")) {
        assert!(
            Instant::now() < end,
            "expected rejection log lines; node:\n{}\njoiner:\n{}",
            node.log(),
            joiner.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The joiner still works: an honest peer connects to it.
    let mut honest = Proc::join("honest", &room, &node_addr);
    let (honest_id, _) = honest.ready();
    joiner.wait_for("channel to the honest peer", |e| {
        e["event"] == "channel_open" && e["peer_id"] == honest_id.as_str()
    });
    honest.wait_event("channel_open");
    drop(honest);
    let events = joiner.finish();
    assert!(
        events
            .iter()
            .all(|e| e["event"] != "error" && !e.to_string().contains(&forger_id)),
        "the forged envelope produced no event: {events:?}"
    );
}

/// Runs `kadrtc` to completion with stdin closed and returns (success, stderr).
fn run_to_exit(args: &[&str]) -> (bool, String) {
    let output = support::command(&support::fresh_home("run-to-exit"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("kadrtc binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    (output.status.success(), stderr)
}

#[test]
fn bad_multiaddr_is_a_clear_error() {
    let (ok, stderr) = run_to_exit(&["join", "room", "--bootstrap", "127.0.0.1:4001"]);
    assert!(!ok);
    assert!(stderr.contains("invalid multiaddr"), "{stderr}");
}

#[test]
fn bootstrap_address_without_peer_id_is_a_clear_error() {
    let (ok, stderr) = run_to_exit(&[
        "node",
        "--ephemeral",
        "--stun-port",
        "0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        "/ip4/127.0.0.1/tcp/4001",
    ]);
    assert!(!ok);
    assert!(stderr.contains("/p2p/<PeerId>"), "{stderr}");
}

#[test]
fn unreachable_bootstrap_node_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", PeerId::random());
    let (ok, stderr) = run_to_exit(&[
        "join",
        "room",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        &addr,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("no bootstrap peer could be reached"),
        "{stderr}"
    );
}

#[test]
fn unreadable_identity_file_is_a_clear_error_and_a_new_one_is_created_and_reused() {
    let dir = std::env::temp_dir().join(format!("kadrtc-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.key");
    std::fs::write(&garbage, b"not a key").unwrap();
    let (ok, stderr) = run_to_exit(&[
        "node",
        "--stun-port",
        "0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
        "--identity",
        garbage.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("is not a libp2p key"), "{stderr}");

    // A missing file is created, and the same identity comes back on the next start.
    let fresh = dir.join("fresh.key");
    let _ = std::fs::remove_file(&fresh);
    let path = fresh.to_str().unwrap();
    let start = |name: &str| {
        Proc::spawn(
            name,
            &[
                "node",
                "--stun-port",
                "0",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--no-mdns",
                "--identity",
                path,
                "--json",
            ],
        )
    };
    let mut first = start("id1");
    let (first_id, _) = first.ready();
    drop(first);
    assert_eq!(start("id2").ready().0, first_id);
}

#[test]
fn ctrl_c_leaves_the_room_cleanly_and_the_other_member_is_told() {
    let (_nodes, addrs) = network(1);
    let room = room_name("ctrlc");
    let mut a = Proc::join("ctrlc-a", &room, &addrs[0]);
    let mut b = Proc::join("ctrlc-b", &room, &addrs[0]);
    let (a_id, _) = a.ready();
    b.ready();
    a.wait_event("channel_open");
    b.wait_event("channel_open");

    let status = Command::new("kill")
        .args(["-INT", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = Instant::now();
    b.wait_for("a leaving", |e| {
        e["event"] == "peer_left" && e["peer_id"] == a_id.as_str()
    });
    // A member that vanishes is noticed after 4 s of silence (kadrtc::PEER_TIMEOUT); one that
    // leaves says goodbye on the channel and is reported at once.
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "peer_left came {:?} after Ctrl-C: not a clean leave",
        signalled.elapsed()
    );
    // stdin is still open: the exit comes from the signal alone, within kadrtc::LEAVE_LIMIT
    // (5 s) and the process's own teardown.
    let exit = a.wait_exit("Ctrl-C");
    assert!(
        exit.success(),
        "clean exit after Ctrl-C: {exit}; {}",
        a.log()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "exit {:?} after Ctrl-C",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn node_answers_stun_binding_requests_on_the_port_it_reports() {
    use rtc_stun::message::{Getter as _, Message, Setter, TransactionId, BINDING_REQUEST};
    use rtc_stun::xoraddr::XorMappedAddress;

    let mut node = Proc::node("stun-node", None);
    let ready = node.wait_event("ready");
    let stun: std::net::SocketAddr = ready["stun"]
        .as_str()
        .expect("a STUN address")
        .parse()
        .unwrap();
    assert!(stun.ip().is_loopback(), "on the --listen IP: {stun}");

    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut request = Message::new();
    let setters: [Box<dyn Setter>; 2] = [Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)];
    request.build(&setters).unwrap();
    client.send_to(&request.raw, stun).await.unwrap();
    let mut buf = [0u8; 1500];
    let (len, _) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
        .await
        .expect("the node answers within the deadline")
        .unwrap();
    let mut response = Message::new();
    response.unmarshal_binary(&buf[..len]).unwrap();
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&response).unwrap();
    assert_eq!(
        std::net::SocketAddr::new(mapped.ip, mapped.port),
        client.local_addr().unwrap()
    );
}

#[test]
fn stun_port_in_use_is_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (ok, stderr) = run_to_exit(&[
        "node",
        "--ephemeral",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
        "--stun-port",
        &port,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot bind the STUN responder") && stderr.contains("--no-stun"),
        "{stderr}"
    );
}

/// A node on 127.0.0.1 that answers STUN and volunteers a TURN relay, both on free ports.
fn relay_node(name: &str) -> (Proc, String, std::net::SocketAddr) {
    let mut node = Proc::spawn(
        name,
        &[
            "node",
            "--ephemeral",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--stun-port",
            "0",
            "--relay",
            "--relay-port",
            "0",
            "--json",
        ],
    );
    let ready = node.wait_event("ready");
    let addr = ready["listen"][0].as_str().unwrap().to_string();
    let relay = ready["relay"]
        .as_str()
        .expect("a relay address")
        .parse()
        .unwrap();
    (node, addr, relay)
}

#[test]
fn relay_only_joiners_connect_through_the_relay_their_node_offers() {
    let (_node, addr, relay) = relay_node("relay-node");
    assert!(relay.ip().is_loopback(), "on the --listen IP: {relay}");
    let room = room_name("relayed");
    let mut a = Proc::join_with("a", &room, &addr, &["--relay-only"], &[]);
    let mut b = Proc::join_with("b", &room, &addr, &["--relay-only"], &[]);
    let (a_id, _) = a.ready();
    let (b_id, _) = b.ready();
    for open in [a.wait_event("channel_open"), b.wait_event("channel_open")] {
        // Neither side may offer a host candidate: the path is relay↔relay.
        assert_eq!(
            (&open["local"], &open["remote"]),
            (&"relay".into(), &"relay".into()),
            "{open}"
        );
    }
    a.say("relayed hello");
    b.wait_for("a's message", |e| {
        is_message_from(e, &a_id, "relayed hello")
    });
    b.say("relayed reply");
    a.wait_for("b's message", |e| {
        is_message_from(e, &b_id, "relayed reply")
    });
}

#[test]
fn with_no_path_and_no_relay_joiners_say_so_within_30_seconds() {
    // Relay-only peers on a network without a relay have no candidate at all: the
    // situation of two peers behind symmetric NATs, on loopback.
    let (_nodes, addrs) = network(1);
    let room = room_name("nopath");
    let mut a = Proc::join_with("a", &room, &addrs[0], &["--relay-only"], &[]);
    let mut b = Proc::join_with("b", &room, &addrs[0], &["--relay-only"], &[]);
    let (a_id, _) = a.ready();
    let (b_id, _) = b.ready();
    let start = Instant::now();
    // The offerer's attempt is the one that fails for want of a path; the answerer only
    // waits for offers.
    let (a_id, b_id): (PeerId, PeerId) = (a_id.parse().unwrap(), b_id.parse().unwrap());
    let offerer = if kadrtc_proto::is_offerer(&a_id, &b_id) {
        &mut a
    } else {
        &mut b
    };
    let error = offerer.wait_for("a no_path error", |e| {
        e["event"] == "error" && e["kind"] == "no_path"
    });
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("no direct path") && message.contains("no relay is known"),
        "{message}"
    );
    assert!(
        !a.events_so_far()
            .iter()
            .any(|e| e["event"] == "channel_open"),
        "no channel without a path"
    );
}

#[test]
fn relay_without_a_known_ip_is_a_clear_error() {
    let (ok, stderr) = run_to_exit(&[
        "node",
        "--ephemeral",
        "--listen",
        "/ip4/0.0.0.0/tcp/0",
        "--no-stun",
        "--no-mdns",
        "--relay",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--relay-ip"), "{stderr}");
}
