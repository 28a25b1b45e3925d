//! Whole-process tests of churn: nodes that die and come back, joiners whose bootstrap node
//! dies. Real `kadrtc` processes on 127.0.0.1.

mod support;

use std::path::Path;

use support::{network, room_name, test_dir, Proc};

/// Both joiners report `channel_open` with each other.
fn both_open(a: &mut Proc, a_id: &str, b: &mut Proc, b_id: &str) {
    let open_a = a.wait_for("channel_open with b", |e| {
        e["event"] == "channel_open" && e["peer_id"] == b_id
    });
    let open_b = b.wait_for("channel_open with a", |e| {
        e["event"] == "channel_open" && e["peer_id"] == a_id
    });
    assert_eq!(open_a["peer_id"], b_id);
    assert_eq!(open_b["peer_id"], a_id);
}

/// A `kadrtc node` on the identity kept in `identity`, listening on `listen`.
fn identity_node(label: &str, identity: &Path, listen: &str, bootstrap: Option<&str>) -> Proc {
    let mut args = vec![
        "node",
        "--identity",
        identity.to_str().unwrap(),
        "--listen",
        listen,
        "--stun-port",
        "0",
        "--no-mdns",
        "--json",
    ];
    if let Some(bootstrap) = bootstrap {
        args.extend(["--bootstrap", bootstrap]);
    }
    Proc::spawn(label, &args)
}

#[test]
fn a_node_restarted_with_its_identity_comes_back_with_its_peer_id_and_serves_joiners_again() {
    let (_nodes, addrs) = network(2);
    let identity = test_dir().join("restarted-node.key");
    let listen = "/ip4/127.0.0.1/tcp/0";
    let mut node = identity_node("restarted-before", &identity, listen, Some(&addrs[0]));
    let (first_id, _) = node.ready();
    node.child.kill().unwrap();
    node.child.wait().unwrap();

    // Back on its identity (the dead process's lock went with it), through the other node.
    let mut node = identity_node("restarted-after", &identity, listen, Some(&addrs[1]));
    let (second_id, addr) = node.ready();
    assert_eq!(second_id, first_id, "the same PeerId after the restart");

    // Joiners that know only the restarted node meet through it.
    let room = room_name("restarted");
    let mut a = Proc::join("restarted-a", &room, &addr);
    let mut b = Proc::join("restarted-b", &room, &addr);
    let (a_id, _) = a.ready();
    let (b_id, _) = b.ready();
    both_open(&mut a, &a_id, &mut b, &b_id);
}

#[test]
fn a_joiner_whose_bootstrap_node_dies_keeps_finding_newcomers_through_the_other_nodes() {
    let (mut nodes, addrs) = network(3);
    let room = room_name("bootstrap-dies");
    // a knows the network only through node 2.
    let mut a = Proc::join("dies-a", &room, &addrs[1]);
    let mut b = Proc::join("dies-b", &room, &addrs[2]);
    let (a_id, _) = a.ready();
    let (b_id, _) = b.ready();
    both_open(&mut a, &a_id, &mut b, &b_id);

    // Node 2 dies; a newcomer arrives through node 3, after a's first lookups.
    let dead = &mut nodes[1].child;
    dead.kill().unwrap();
    dead.wait().unwrap();
    let mut c = Proc::join("dies-c", &room, &addrs[2]);
    let (c_id, _) = c.ready();
    both_open(&mut a, &a_id, &mut c, &c_id);
    both_open(&mut b, &b_id, &mut c, &c_id);

    // a's first channel is not disturbed by the loss of its bootstrap node.
    a.say("still here");
    b.wait_for("a's message after its bootstrap node died", |e| {
        e["event"] == "message" && e["peer_id"] == a_id.as_str() && e["text"] == "still here"
    });
}

#[test]
fn a_joiner_cut_off_from_every_node_says_so_and_comes_back_when_its_bootstrap_node_does() {
    let identity = test_dir().join("comeback-node.key");
    let mut node = identity_node(
        "comeback-node-before",
        &identity,
        "/ip4/127.0.0.1/tcp/0",
        None,
    );
    let (_, addr) = node.ready();
    let room = room_name("comeback");
    let mut a = Proc::join("comeback-a", &room, &addr);
    let (a_id, _) = a.ready();

    // Its only node dies before it learnt any other: it says so instead of going quiet.
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let lost = a.wait_for("network_lost", |e| {
        e["event"] == "error" && e["kind"] == "network_lost"
    });
    assert!(lost["message"].as_str().unwrap().contains("bootstrap"));

    // The node comes back on the same address: the joiner dials it again by itself.
    let listen = addr.split("/p2p/").next().unwrap();
    let mut node = identity_node("comeback-node-after", &identity, listen, None);
    node.ready();
    a.wait_event("network_restored");

    let mut b = Proc::join("comeback-b", &room, &addr);
    let (b_id, _) = b.ready();
    both_open(&mut a, &a_id, &mut b, &b_id);
}
