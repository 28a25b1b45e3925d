//! In-process rooms on 127.0.0.1: files on their own data channels, pings, the peer list and
//! the room's size limit.

use std::path::Path;
use std::time::Duration;

use kadrtc::{FileError, IncomingFile, Node, PeerId, Room, RoomConfig, RoomError, RoomEvent};
use sha2::{Digest as _, Sha256};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(30);

async fn dht_node() -> Node {
    Node::builder()
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .dht_server(true)
        .build()
        .await
        .unwrap()
}

async fn member(bootstrap: &Node) -> Node {
    Node::builder()
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .bootstrap(bootstrap.listen_addrs()[0].clone())
        .build()
        .await
        .unwrap()
}

/// Events until `pick` returns something, within [`DEADLINE`].
async fn until<T>(room: &mut Room, mut pick: impl FnMut(RoomEvent) -> Option<T>) -> T {
    timeout(DEADLINE, async {
        loop {
            let event = room.next_event().await.expect("room is open");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
    .expect("event within the deadline")
}

async fn open_pair(room: &str) -> (Node, Node, Node, Room, Room) {
    let dht = dht_node().await;
    let (a, b) = (member(&dht).await, member(&dht).await);
    let mut room_a = a.join(room).await.unwrap();
    let mut room_b = b.join(room).await.unwrap();
    let opened = |event| match event {
        RoomEvent::ChannelOpen { peer, .. } => Some(peer),
        _ => None,
    };
    let (peer_of_a, peer_of_b) =
        tokio::join!(until(&mut room_a, opened), until(&mut room_b, opened));
    assert_eq!((peer_of_a, peer_of_b), (b.peer_id(), a.peer_id()));
    (dht, a, b, room_a, room_b)
}

fn incoming(event: RoomEvent) -> Option<IncomingFile> {
    match event {
        RoomEvent::IncomingFile(file) => Some(file),
        _ => None,
    }
}

/// A file of `len` pseudo-random bytes.
fn write_file(path: &Path, len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_arrives_whole_on_its_own_channel_with_progress_and_a_confirmed_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("photo.bin");
    // Over the flow-control window (4 MiB), so the receiver's reports pace the sender.
    let content = write_file(&source, 9 * 1024 * 1024 + 17);
    let (_dht, _a, b, room_a, mut room_b) = open_pair("files").await;

    let channel = room_a.channel(b.peer_id()).expect("channel to b");
    let sending = channel.send_file(&source).await.unwrap();
    let mut sender_progress = sending.progress();
    let offer = until(&mut room_b, incoming).await;
    assert_eq!(
        (offer.name(), offer.size()),
        ("photo.bin", content.len() as u64)
    );
    let out = dir.path().join("received");
    std::fs::create_dir(&out).unwrap();
    let target = out.join(offer.name());
    let receiving = offer.accept(target, false).await.unwrap();
    let receiver_progress = receiving.progress();

    // Main-channel messages still flow during the transfer.
    room_a.send(b.peer_id(), b"during").await.unwrap();
    let message = until(&mut room_b, |event| match event {
        RoomEvent::Message { data, .. } => Some(data),
        _ => None,
    })
    .await;
    assert_eq!(message, b"during");

    let (sent, received) = timeout(DEADLINE, async {
        tokio::join!(sending.finish(), receiving.finish())
    })
    .await
    .expect("transfer ends within the deadline");
    let (sent, received) = (sent.unwrap(), received.unwrap());
    let expected: [u8; 32] = Sha256::digest(&content).into();
    assert_eq!(sent.sha256, expected);
    assert_eq!(received.sha256, expected);
    assert_eq!(received.path, out.join("photo.bin"));
    assert_eq!(std::fs::read(&received.path).unwrap(), content);
    assert!(!out.join("photo.bin.part").exists());
    assert_eq!(
        sender_progress.borrow_and_update().bytes,
        content.len() as u64
    );
    assert_eq!(receiver_progress.borrow().bytes, content.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_file_is_refused_unless_overwrite_is_asked_and_the_sender_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("notes.txt");
    write_file(&source, 1000);
    let existing = dir.path().join("existing.txt");
    std::fs::write(&existing, b"keep me").unwrap();
    let (_dht, _a, b, room_a, mut room_b) = open_pair("refusal").await;
    let channel = room_a.channel(b.peer_id()).unwrap();

    let sending = channel.send_file(&source).await.unwrap();
    let offer = until(&mut room_b, incoming).await;
    assert!(matches!(
        offer.accept(&existing, false).await,
        Err(FileError::Exists(path)) if path == existing
    ));
    let refused = timeout(DEADLINE, sending.finish())
        .await
        .expect("sender told");
    assert!(matches!(refused, Err(FileError::Refused(_))), "{refused:?}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let sending = channel.send_file(&source).await.unwrap();
    let offer = until(&mut room_b, incoming).await;
    let receiving = offer.accept(&existing, true).await.unwrap();
    let (sent, received) = timeout(DEADLINE, async {
        tokio::join!(sending.finish(), receiving.finish())
    })
    .await
    .expect("transfer ends within the deadline");
    assert_eq!(sent.unwrap().sha256, received.unwrap().sha256);
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        std::fs::read(&source).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_leaves_mid_transfer_leaves_a_part_file_never_reported_complete() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big.bin");
    write_file(&source, 64 * 1024 * 1024);
    let (_dht, _a, b, room_a, mut room_b) = open_pair("departure").await;
    let sending = room_a
        .channel(b.peer_id())
        .unwrap()
        .send_file(&source)
        .await
        .unwrap();
    let offer = until(&mut room_b, incoming).await;
    let target = dir.path().join("big.copy");
    let receiving = offer.accept(&target, false).await.unwrap();
    let mut progress = receiving.progress();
    timeout(DEADLINE, progress.wait_for(|p| p.bytes >= 1024 * 1024))
        .await
        .expect("some bytes arrive")
        .unwrap();

    room_a.leave().await;
    let outcome = timeout(DEADLINE, receiving.finish())
        .await
        .expect("receiver ends");
    match outcome {
        Err(FileError::PeerGone {
            bytes,
            size,
            partial: Some(partial),
        }) => {
            assert!(bytes < size, "{bytes} of {size}");
            assert_eq!(partial, dir.path().join("big.copy.part"));
            assert!(partial.exists());
        }
        other => panic!("expected PeerGone with a partial file, got {other:?}"),
    }
    assert!(
        !target.exists(),
        "a partial file is never given the final name"
    );
    let sender = timeout(DEADLINE, sending.finish())
        .await
        .expect("sender ends");
    assert!(sender.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transfers_of_one_name_never_share_a_file_and_the_second_does_not_replace_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    let first = write_file(&one.join("same.bin"), 3 * 1024 * 1024);
    // Another content under the same name.
    let second: Vec<u8> = first.iter().map(|b| b.wrapping_add(1)).collect();
    std::fs::write(two.join("same.bin"), &second).unwrap();
    let (_dht, _a, b, room_a, mut room_b) = open_pair("same-name").await;
    let channel = room_a.channel(b.peer_id()).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();

    // Both offers are accepted before either transfer ends.
    let send_one = channel.send_file(one.join("same.bin")).await.unwrap();
    let offer_one = until(&mut room_b, incoming).await;
    let recv_one = offer_one.accept(out.join("same.bin"), false).await.unwrap();
    let send_two = channel.send_file(two.join("same.bin")).await.unwrap();
    let offer_two = until(&mut room_b, incoming).await;
    let recv_two = offer_two.accept(out.join("same.bin"), false).await.unwrap();

    let (s1, r1, s2, r2) = timeout(DEADLINE, async {
        tokio::join!(
            send_one.finish(),
            recv_one.finish(),
            send_two.finish(),
            recv_two.finish()
        )
    })
    .await
    .expect("both transfers end within the deadline");
    let received: Vec<_> = [r1, r2].into_iter().filter_map(Result::ok).collect();
    assert_eq!(received.len(), 1, "exactly one transfer gets the name");
    assert_eq!(
        [s1.is_ok(), s2.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "exactly one sender is told it was confirmed"
    );
    // What is on disk is what the receipt says, and one of the two files whole.
    let on_disk: [u8; 32] = Sha256::digest(std::fs::read(out.join("same.bin")).unwrap()).into();
    assert_eq!(on_disk, received[0].sha256);
    let whole: [[u8; 32]; 2] = [
        Sha256::digest(&first).into(),
        Sha256::digest(&second).into(),
    ];
    assert!(whole.contains(&on_disk));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_channels_are_pinged_and_listed_with_their_round_trip_time() {
    let (_dht, a, b, room_a, _room_b) = open_pair("pings").await;
    let rtt = room_a.ping(b.peer_id()).await.unwrap();
    assert!(rtt < Duration::from_secs(1), "{rtt:?} on loopback");
    // The room pings every open channel once a second: the list shows a time soon.
    let listed = timeout(DEADLINE, async {
        loop {
            let peers = room_a.peers();
            if let Some(info) = peers.iter().find(|info| info.rtt.is_some()) {
                return info.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a round-trip time is listed within the deadline");
    assert_eq!(listed.peer, b.peer_id());
    assert_eq!(room_a.peers().len(), 1);
    let stranger = PeerId::random();
    assert!(room_a.ping(stranger).await.is_err());
    assert_ne!(a.peer_id(), b.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_says_so_instead_of_ignoring_peers_silently() {
    let dht = dht_node().await;
    let (a, b, c) = (member(&dht).await, member(&dht).await, member(&dht).await);
    let one = RoomConfig {
        max_peers: 1,
        ..RoomConfig::default()
    };
    let mut room_a = a.join_with("small", one).await.unwrap();
    let mut room_b = b.join("small").await.unwrap();
    let opened = until(&mut room_a, |event| match event {
        RoomEvent::ChannelOpen { peer, .. } => Some(peer),
        _ => None,
    })
    .await;
    assert_eq!(opened, b.peer_id());
    let _room_c = c.join("small").await.unwrap();
    let refused = until(&mut room_a, |event| match event {
        RoomEvent::Error {
            peer: Some(peer),
            error: RoomError::RoomFull { max },
        } => Some((peer, max)),
        _ => None,
    })
    .await;
    assert_eq!(refused, (c.peer_id(), 1));
    assert_eq!(room_a.connected_peers(), vec![b.peer_id()]);
    // b has room for c; only a refuses.
    let _ = until(&mut room_b, |event| match event {
        RoomEvent::ChannelOpen { peer, .. } if peer == c.peer_id() => Some(()),
        _ => None,
    })
    .await;
}
