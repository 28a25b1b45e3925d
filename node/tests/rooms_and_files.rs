//! Whole-process tests on 127.0.0.1: `kadrtc send` / `kadrtc recv`, rooms made from nothing,
//! `/peers` and `/ping`, and a peer that vanishes.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{network, room_name, test_dir, Proc};

/// `kadrtc send|recv ROOM ...` on loopback, bootstrapped from `bootstrap`, with `--json`.
fn files_proc(name: &str, verb: &str, room: &str, bootstrap: &str, extra: &[&str]) -> Proc {
    Proc::in_room(name, verb, room, bootstrap, extra, &[])
}

/// `kadrtc recv ROOM --out OUT --once`, named "recv".
fn recv_once(room: &str, bootstrap: &str, out: &Path) -> Proc {
    files_proc(
        "recv",
        "recv",
        room,
        bootstrap,
        &["--out", path_str(out), "--once"],
    )
}

/// A file of `len` pseudo-random bytes.
fn write_file(path: &Path, len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn scratch(label: &str) -> std::path::PathBuf {
    let dir = test_dir().join(label);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn send_delivers_every_file_confirmed_and_recv_once_exits_when_the_sender_is_done() {
    let (_nodes, addrs) = network(2);
    let room = room_name("files");
    let dir = scratch("files");
    let (first, second) = (dir.join("first.bin"), dir.join("second.txt"));
    let first_bytes = write_file(&first, 3 * 1024 * 1024 + 5);
    std::fs::write(&second, b"a small one\n").unwrap();
    let out = dir.join("out");

    let mut recv = recv_once(&room, &addrs[0], &out);
    recv.ready();
    let mut send = files_proc(
        "send",
        "send",
        &room,
        &addrs[1],
        &[path_str(&first), path_str(&second)],
    );
    let sent_first = send.wait_for("first.bin confirmed", |e| {
        e["event"] == "file_sent" && e["file"] == "first.bin"
    });
    assert_eq!(sent_first["bytes"], first_bytes.len() as u64);
    send.wait_for("second.txt confirmed", |e| {
        e["event"] == "file_sent" && e["file"] == "second.txt"
    });
    let status = send.wait_exit("every file confirmed");
    assert!(status.success(), "send: {status}\n{}", send.log());

    let received = recv.wait_for("first.bin received", |e| {
        e["event"] == "file_received" && e["file"] == "first.bin"
    });
    assert_eq!(received["sha256"], sent_first["sha256"]);
    let status = recv.wait_exit("the sender left (--once)");
    assert!(status.success(), "recv: {status}\n{}", recv.log());
    assert_eq!(std::fs::read(out.join("first.bin")).unwrap(), first_bytes);
    assert_eq!(
        std::fs::read(out.join("second.txt")).unwrap(),
        b"a small one\n"
    );
    assert!(!out.join("first.bin.part").exists());
}

#[test]
fn an_existing_file_is_not_overwritten_and_send_exits_non_zero() {
    let (_nodes, addrs) = network(1);
    let room = room_name("exists");
    let dir = scratch("exists");
    let source = dir.join("report.txt");
    std::fs::write(&source, b"new text").unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.txt"), b"old text").unwrap();

    let mut recv = recv_once(&room, &addrs[0], &out);
    recv.ready();
    let mut send = files_proc("send", "send", &room, &addrs[0], &[path_str(&source)]);
    let status = send.wait_exit("the refusal");
    assert!(!status.success());
    let error = send.wait_event("error");
    assert!(
        error["message"].as_str().unwrap().contains("refused"),
        "{error}"
    );
    recv.wait_for("the refusal", |e| {
        e["event"] == "error" && e["message"].as_str().unwrap().contains("exists")
    });
    assert_eq!(std::fs::read(out.join("report.txt")).unwrap(), b"old text");
    // --once: the one transfer ended (refused) and its sender left, so recv ends too, and
    // not with success.
    let status = recv.wait_exit("the sender of the refused file left");
    assert!(!status.success());
}

#[test]
fn send_passes_over_a_member_that_does_not_receive_files_and_finds_the_receiver() {
    let (_nodes, addrs) = network(1);
    let room = room_name("pass-over");
    let dir = scratch("pass-over");
    let source = dir.join("for-recv.txt");
    std::fs::write(&source, b"only recv gets this").unwrap();
    let out = dir.join("out");
    // At first the only other member is a chat, which refuses the file.
    let mut chat = Proc::join("chat", &room, &addrs[0]);
    chat.ready();
    let mut send = files_proc("send", "send", &room, &addrs[0], &[path_str(&source)]);
    let (send_id, _) = send.ready();
    let refused = chat.wait_event("file_refused");
    assert_eq!(refused["peer_id"], send_id.as_str());
    assert_eq!(refused["file"], "for-recv.txt");
    // Then a receiver comes: send goes on to it by itself.
    let mut recv = recv_once(&room, &addrs[0], &out);
    let (recv_id, _) = recv.ready();
    let sent = send.wait_event("file_sent");
    assert_eq!(sent["peer_id"], recv_id.as_str(), "{sent}");
    let status = send.wait_exit("the confirmation");
    assert!(status.success(), "send: {status}\n{}", send.log());
    assert_eq!(
        std::fs::read(out.join("for-recv.txt")).unwrap(),
        b"only recv gets this"
    );
}

#[test]
fn a_sender_killed_mid_transfer_leaves_only_a_part_file_and_recv_reports_it() {
    let (_nodes, addrs) = network(1);
    let room = room_name("killed");
    let dir = scratch("killed");
    let source = dir.join("large.bin");
    write_file(&source, 64 * 1024 * 1024);
    let out = dir.join("out");

    let mut recv = recv_once(&room, &addrs[0], &out);
    recv.ready();
    let mut send = files_proc("send", "send", &room, &addrs[0], &[path_str(&source)]);
    // Progress events come every 0.5 s: the transfer is under way.
    recv.wait_for("progress", |e| {
        e["event"] == "progress" && e["bytes"].as_u64().unwrap_or(0) > 0
    });
    send.child.kill().unwrap();
    let error = recv.wait_for("the failure", |e| e["event"] == "error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("large.bin"), "{message}");
    let status = recv.wait_exit("the sender vanished (--once)");
    assert!(!status.success(), "a failed transfer is not a success");
    assert!(out.join("large.bin.part").exists());
    assert!(!out.join("large.bin").exists());
    assert!(!recv
        .events_so_far()
        .iter()
        .any(|e| e["event"] == "file_received"));
}

#[test]
fn join_without_a_room_makes_one_and_its_link_brings_the_other_side_in() {
    let (_nodes, addrs) = network(1);
    let mut maker = Proc::spawn(
        "maker",
        &[
            "join",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &addrs[0],
            "--json",
        ],
    );
    let (maker_id, _) = maker.ready();
    let created = maker.wait_event("room_created");
    let link = created["link"].as_str().unwrap().to_string();
    assert!(link.starts_with("kadrtc://"), "{link}");
    assert_eq!(created["command"], format!("kadrtc join {link}"));
    assert_eq!(created["room"].as_str().unwrap().len(), 32);

    // The link alone (its bootstrap address included) is enough.
    let mut guest = Proc::spawn(
        "guest",
        &["join", &link, "--listen", "/ip4/127.0.0.1/tcp/0", "--json"],
    );
    let open = guest.wait_event("channel_open");
    assert_eq!(open["peer_id"], maker_id.as_str());
}

#[test]
fn peers_and_ping_commands_list_members_with_round_trip_times() {
    let (_nodes, addrs) = network(1);
    let room = room_name("peers");
    let mut a = Proc::join("a", &room, &addrs[0]);
    let mut b = Proc::join("b", &room, &addrs[0]);
    let (b_id, _) = b.ready();
    a.wait_event("channel_open");
    a.say("/ping");
    let ping = a.wait_event("ping");
    assert_eq!(ping["peer_id"], b_id.as_str());
    assert!(ping["rtt_ms"].as_f64().unwrap() < 1000.0, "{ping}");
    a.say("/peers");
    let peers = a.wait_event("peers");
    let list = peers["peers"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{peers}");
    assert_eq!(list[0]["peer_id"], b_id.as_str());
    assert_eq!(list[0]["local"], "host");
    a.say("/nonsense");
    a.wait_for("unknown command", |e| {
        e["event"] == "error" && e["message"].as_str().unwrap().contains("/peers")
    });
    // `//` sends a line that starts with `/`.
    a.say("//slash");
    b.wait_for("the escaped line", |e| {
        e["event"] == "message" && e["text"] == "/slash"
    });
}

#[test]
fn a_member_that_vanishes_is_reported_left_within_a_few_seconds() {
    let (_nodes, addrs) = network(1);
    let room = room_name("vanish");
    let mut a = Proc::join("a", &room, &addrs[0]);
    let mut b = Proc::join("b", &room, &addrs[0]);
    let (b_id, _) = b.ready();
    a.wait_event("channel_open");
    // SIGKILL: no goodbye, no closed channel, only silence.
    b.child.kill().unwrap();
    let killed = Instant::now();
    a.wait_for("b reported left", |e| {
        e["event"] == "peer_left" && e["peer_id"] == b_id.as_str()
    });
    let after = killed.elapsed();
    assert!(after < Duration::from_secs(8), "peer_left after {after:?}");
}
