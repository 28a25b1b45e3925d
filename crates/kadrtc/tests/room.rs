//! In-process rooms on 127.0.0.1: members bootstrapped from different nodes find each other
//! and exchange messages over the data channel.

use std::time::Duration;

use kadrtc::{Node, PeerId, Room, RoomConfig, RoomEvent};
use tokio::time::timeout;

/// A node that serves the DHT, like `kadrtc node`, whether or not it has a bootstrap peer.
async fn dht_node(bootstrap: Option<&Node>) -> Node {
    let mut builder = Node::builder()
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .dht_server(true);
    if let Some(b) = bootstrap {
        builder = builder.bootstrap(b.listen_addrs()[0].clone());
    }
    builder.build().await.unwrap()
}

/// A room member with the library's defaults: with a bootstrap peer, a DHT client.
async fn node(bootstrap: Option<&Node>) -> Node {
    let mut builder = Node::builder().listen("/ip4/127.0.0.1/tcp/0".parse().unwrap());
    if let Some(b) = bootstrap {
        builder = builder.bootstrap(b.listen_addrs()[0].clone());
    }
    builder.build().await.unwrap()
}

/// Waits for the channel-open event and returns the peer (reading the room as a `Stream`).
async fn wait_open(room: &mut Room) -> PeerId {
    use futures::StreamExt as _;
    loop {
        match room.next().await.expect("room is open") {
            RoomEvent::ChannelOpen { peer, .. } => return peer,
            _ => continue,
        }
    }
}

async fn wait_message(room: &mut Room) -> (PeerId, Vec<u8>) {
    loop {
        match room.next_event().await.expect("room is open") {
            RoomEvent::Message { peer, data } => return (peer, data),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_bootstrapped_from_different_nodes_connect_and_talk() {
    let first = dht_node(None).await;
    let second = dht_node(Some(&first)).await;
    let a = node(Some(&first)).await;
    let b = node(Some(&second)).await;
    let mut room_a = a.join("lobby").await.unwrap();
    let mut room_b = b.join("lobby").await.unwrap();

    let deadline = Duration::from_secs(30);
    let (open_a, open_b) = timeout(deadline, async {
        tokio::join!(wait_open(&mut room_a), wait_open(&mut room_b))
    })
    .await
    .expect("both channels open within the deadline");
    assert_eq!(open_a, b.peer_id());
    assert_eq!(open_b, a.peer_id());

    room_a.send(b.peer_id(), b"hello from a").await.unwrap();
    assert_eq!(room_b.broadcast(b"hello from b").await, 1);
    let (got_a, got_b) = timeout(deadline, async {
        tokio::join!(wait_message(&mut room_a), wait_message(&mut room_b))
    })
    .await
    .expect("messages arrive within the deadline");
    assert_eq!(got_a, (b.peer_id(), b"hello from b".to_vec()));
    assert_eq!(got_b, (a.peer_id(), b"hello from a".to_vec()));

    room_a.leave().await;
    let left = timeout(deadline, async {
        loop {
            match room_b.next_event().await.expect("room is open") {
                RoomEvent::PeerLeft { peer } => return peer,
                _ => continue,
            }
        }
    })
    .await
    .expect("departure is reported");
    assert_eq!(left, a.peer_id());
}

#[tokio::test]
async fn invalid_room_name_is_refused() {
    let lone = node(None).await;
    assert!(matches!(
        lone.join("").await,
        Err(kadrtc::JoinError::RoomName(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_records_alone_carry_the_negotiation_when_the_topic_is_not_used() {
    let first = node(None).await;
    let a = node(Some(&first)).await;
    let b = node(Some(&first)).await;
    let mailbox_only = || RoomConfig {
        signal_on_topic: false,
        ..RoomConfig::default()
    };
    let mut room_a = a.join_with("mailbox-only", mailbox_only()).await.unwrap();
    let mut room_b = b.join_with("mailbox-only", mailbox_only()).await.unwrap();
    let (open_a, open_b) = timeout(Duration::from_secs(30), async {
        tokio::join!(wait_open(&mut room_a), wait_open(&mut room_b))
    })
    .await
    .expect("both channels open through mailbox polling alone");
    assert_eq!((open_a, open_b), (b.peer_id(), a.peer_id()));
    room_a.send(b.peer_id(), b"via the dht").await.unwrap();
    let got = timeout(Duration::from_secs(10), wait_message(&mut room_b))
        .await
        .expect("message arrives");
    assert_eq!(got, (a.peer_id(), b"via the dht".to_vec()));
}

#[tokio::test]
async fn a_room_is_joined_once_at_a_time_and_can_be_joined_again_after_leaving() {
    let lone = node(None).await;
    let room = lone.join("once").await.unwrap();
    assert!(matches!(
        lone.join("once").await,
        Err(kadrtc::JoinError::AlreadyJoined(_))
    ));
    room.leave().await;
    let again = lone.join("once").await.expect("joinable after leaving");
    again.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_the_same_passphrase_connect_and_another_passphrase_is_reported() {
    let first = node(None).await;
    let a = node(Some(&first)).await;
    let b = node(Some(&first)).await;
    let c = node(Some(&first)).await;
    let with = |passphrase: &str| RoomConfig::default().with_passphrase(passphrase);
    let mut room_a = a.join_with("secret", with("open sesame")).await.unwrap();
    let mut room_b = b.join_with("secret", with("open sesame")).await.unwrap();
    let mut room_c = c.join_with("secret", with("something else")).await.unwrap();

    let (open_a, open_b) = timeout(Duration::from_secs(30), async {
        tokio::join!(wait_open(&mut room_a), wait_open(&mut room_b))
    })
    .await
    .expect("members with the same passphrase connect");
    assert_eq!((open_a, open_b), (b.peer_id(), a.peer_id()));

    let unreadable = timeout(Duration::from_secs(30), async {
        loop {
            match room_c.next_event().await.expect("room is open") {
                RoomEvent::Error {
                    peer: Some(peer),
                    error: kadrtc::RoomError::WrongPassphrase,
                } => return peer,
                RoomEvent::ChannelOpen { peer, .. } => panic!("channel to {peer} opened"),
                _ => continue,
            }
        }
    })
    .await
    .expect("the other passphrase is reported");
    assert!(unreadable == a.peer_id() || unreadable == b.peer_id());
}

#[tokio::test]
async fn empty_passphrase_is_refused_at_join() {
    let lone = node(None).await;
    assert!(matches!(
        lone.join_with("room", RoomConfig::default().with_passphrase(""))
            .await,
        Err(kadrtc::JoinError::Passphrase(_))
    ));
}
