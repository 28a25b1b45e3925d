//! Behaviour tests on real loopback swarms: storing nodes validate mailbox records, providers
//! are found across nodes, and room topics deliver only valid envelopes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kadrtc_dht::{
    DhtConfig, DhtError, DhtHandle, TopicEvent, MAX_RECORDS_PER_PUBLISHER_PER_MINUTE,
};
use kadrtc_proto::{Body, Envelope, RoomKey, RoomName, SessionId, Signal, ENVELOPE_VERSION};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use tokio::time::{sleep, timeout, Instant};

const TTL: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn node(bootstrap: Option<&DhtHandle>) -> DhtHandle {
    node_with_key(Keypair::generate_ed25519(), bootstrap).await
}

async fn node_with_key(key: Keypair, bootstrap: Option<&DhtHandle>) -> DhtHandle {
    DhtHandle::spawn(config(key, bootstrap)).await.unwrap()
}

/// A loopback node's configuration, joining through `bootstrap` when given.
fn config(key: Keypair, bootstrap: Option<&DhtHandle>) -> DhtConfig {
    let config = DhtConfig::new(key).with_listen("/ip4/127.0.0.1/tcp/0".parse().unwrap());
    match bootstrap {
        Some(b) => config.with_bootstrap(b.listen_addrs()[0].clone()),
        None => config,
    }
}

/// Signs `envelope` with `key`, sealed under the key of room "lobby".
fn sign(envelope: &Envelope, key: &Keypair) -> Vec<u8> {
    envelope
        .sign(key, &RoomKey::derive(&RoomName::new("lobby").unwrap()))
        .unwrap()
}

fn offer(key: &Keypair, to: PeerId, room: &str) -> Envelope {
    Envelope {
        version: ENVELOPE_VERSION,
        room_id: RoomName::new(room).unwrap().id(),
        from: key.public().to_peer_id(),
        to: Some(to),
        session: SessionId::random(),
        seq: 1,
        created_at: now_ms(),
        expires_at: now_ms() + 60_000,
        body: Body::Offer(Signal {
            sdp: "v=0".into(),
            candidates: vec![],
            end_of_candidates: false,
            offer_hash: None,
        }),
    }
}

/// Puts a signed offer of `writer_key` (to a random peer, room "lobby") under its mailbox
/// key from `writer`; returns the key and the stored value.
async fn put_offer(writer: &DhtHandle, writer_key: &Keypair) -> (Vec<u8>, Vec<u8>) {
    let envelope = offer(writer_key, PeerId::random(), "lobby");
    let key = envelope
        .room_id
        .mailbox_key(&envelope.from, &envelope.to.unwrap());
    let value = sign(&envelope, writer_key);
    writer
        .put_record(key.clone(), value.clone(), TTL)
        .await
        .unwrap();
    (key, value)
}

/// Polls `check` every 20 ms until it returns `Some` or `limit` passes.
async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = check().await {
            return Some(v);
        }
        sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn storing_node_keeps_valid_mailbox_records_and_refuses_forged_ones() {
    let storer = node(None).await;
    let writer_key = Keypair::generate_ed25519();
    let writer = node_with_key(writer_key.clone(), Some(&storer)).await;
    let to = PeerId::random();

    // A valid record, as a control: the storer keeps it.
    let valid = offer(&writer_key, to, "lobby");
    let valid_key = valid.room_id.mailbox_key(&valid.from, &to);
    writer
        .put_record(valid_key.clone(), sign(&valid, &writer_key), TTL)
        .await
        .unwrap();

    // A forged one: valid envelope, one flipped signature bit.
    let forged = offer(&writer_key, to, "other-room");
    let forged_key = forged.room_id.mailbox_key(&forged.from, &to);
    let mut bytes = sign(&forged, &writer_key);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    // The writer stores locally whatever it puts; the storer answers but must not keep it.
    let _ = writer.put_record(forged_key.clone(), bytes, TTL).await;

    // A reader that never saw either record asks the network; the writer is gone.
    drop(writer);
    let reader = node(Some(&storer)).await;
    let found = eventually(Duration::from_secs(10), || {
        let reader = reader.clone();
        let key = valid_key.clone();
        async move { reader.get_record(key).await.ok().filter(|v| !v.is_empty()) }
    })
    .await;
    assert!(found.is_some(), "the valid record is stored by the storer");
    assert!(
        reader.get_record(forged_key).await.unwrap().is_empty(),
        "the forged record must not be stored"
    );
}

/// A storer and a writer hold a mailbox record; two nodes join after the put; then the storer
/// and the writer stop. Returns whether a reader that joins through a newcomer finds the
/// record, after the newcomers have received it (hand-over on) or after 3 s (off).
async fn record_outlives_its_first_holders(handover: bool) -> bool {
    let spawn = |key: Keypair, bootstrap: Option<&DhtHandle>| {
        DhtHandle::spawn(config(key, bootstrap).with_record_handover(handover))
    };
    let storer = spawn(Keypair::generate_ed25519(), None).await.unwrap();
    let writer_key = Keypair::generate_ed25519();
    let writer = spawn(writer_key.clone(), Some(&storer)).await.unwrap();
    let (key, value) = put_offer(&writer, &writer_key).await;
    let newcomers = [
        spawn(Keypair::generate_ed25519(), Some(&storer))
            .await
            .unwrap(),
        spawn(Keypair::generate_ed25519(), Some(&storer))
            .await
            .unwrap(),
    ];
    let wait = if handover {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(3)
    };
    let copied = eventually(wait, || {
        let newcomers = newcomers.clone();
        let key = key.clone();
        async move {
            for newcomer in &newcomers {
                newcomer.stored_record(key.clone()).await.ok()??;
            }
            Some(())
        }
    })
    .await;
    assert_eq!(
        copied.is_some(),
        handover,
        "newcomers hold a copy exactly when the hand-over is on"
    );

    drop((storer, writer));
    let reader = spawn(Keypair::generate_ed25519(), Some(&newcomers[0]))
        .await
        .unwrap();
    let found = eventually(Duration::from_secs(5), || {
        let reader = reader.clone();
        let key = key.clone();
        async move { reader.get_record(key).await.ok().filter(|v| !v.is_empty()) }
    })
    .await;
    found.is_some_and(|values| values.contains(&value))
}

#[tokio::test]
async fn a_record_outlives_the_nodes_that_first_held_it_through_the_hand_over_to_newcomers() {
    assert!(
        record_outlives_its_first_holders(true).await,
        "with the hand-over, a reader finds the record on the newcomers"
    );
    // Control: without the hand-over nothing copies the record to the newcomers, so the
    // same scenario loses it. This shows the test above can fail.
    assert!(
        !record_outlives_its_first_holders(false).await,
        "without the hand-over the record dies with its first holders"
    );
}

#[tokio::test]
async fn providers_are_found_through_a_common_bootstrap_node() {
    let boot = node(None).await;
    let a = node(Some(&boot)).await;
    let b = node(Some(&boot)).await;
    let key = RoomName::new("lobby").unwrap().id().presence_key();
    a.start_providing(key.clone()).await.unwrap();
    let found = eventually(Duration::from_secs(10), || {
        let b = b.clone();
        let key = key.clone();
        async move { b.get_providers(key).await.ok().filter(|p| !p.is_empty()) }
    })
    .await
    .expect("b finds a provider");
    assert_eq!(found, vec![a.peer_id()]);
    // b dialed the provider it found.
    let connected = eventually(Duration::from_secs(5), || {
        let b = b.clone();
        let a = a.peer_id();
        async move {
            b.connected_peers()
                .await
                .ok()
                .filter(|peers| peers.contains(&a))
        }
    })
    .await;
    assert!(connected.is_some());
}

#[tokio::test]
async fn topic_delivers_valid_envelopes_and_drops_invalid_ones() {
    let a_key = Keypair::generate_ed25519();
    let a = node_with_key(a_key.clone(), None).await;
    let b = node(Some(&a)).await;
    let room = RoomName::new("lobby").unwrap().id();
    let _a_sub = a.subscribe(room.topic()).await.unwrap();
    let mut b_sub = b.subscribe(room.topic()).await.unwrap();

    let mut valid = offer(&a_key, b.peer_id(), "lobby");
    valid.body = Body::Presence;
    let valid = sign(&valid, &a_key);
    let wrong_room = sign(&offer(&a_key, b.peer_id(), "elsewhere"), &a_key);
    // Publishing fails until b's subscription has reached a.
    eventually(Duration::from_secs(10), || {
        let a = a.clone();
        let topic = room.topic();
        let data = wrong_room.clone();
        async move { a.publish(topic, data).await.ok() }
    })
    .await
    .expect("a can publish once b subscribed");
    a.publish(room.topic(), b"garbage".to_vec()).await.unwrap();
    a.publish(room.topic(), valid.clone()).await.unwrap();

    let message = timeout(Duration::from_secs(10), async {
        loop {
            match b_sub.recv().await.expect("subscription open") {
                TopicEvent::Message {
                    source,
                    propagation_source,
                    envelope,
                } => return (source, envelope, propagation_source),
                _ => continue,
            }
        }
    })
    .await
    .expect("a message within the deadline");
    assert_eq!(
        *message.1,
        Envelope::decode(&valid, now_ms()).unwrap(),
        "only the valid envelope is delivered, decoded"
    );
    assert_eq!(message.0, Some(a.peer_id()));
    assert_eq!(
        message.2,
        a.peer_id(),
        "delivered by its author, directly connected"
    );
    while let Ok(event) = b_sub.try_recv() {
        assert!(
            !matches!(event, TopicEvent::Message { .. }),
            "nothing else is delivered"
        );
    }
}

#[tokio::test]
async fn a_late_subscriber_learns_the_peers_already_on_the_topic() {
    let a = node(None).await;
    let b_key = Keypair::generate_ed25519();
    let b = node_with_key(b_key.clone(), Some(&a)).await;
    let room = RoomName::new("lobby").unwrap().id();
    let _a_sub = a.subscribe(room.topic()).await.unwrap();
    // b, not subscribed, can publish (to its fanout) once a's subscription has reached it.
    let mut presence = offer(&b_key, a.peer_id(), "lobby");
    presence.to = None;
    presence.body = Body::Presence;
    let presence = sign(&presence, &b_key);
    eventually(Duration::from_secs(10), || {
        let (b, topic, data) = (b.clone(), room.topic(), presence.clone());
        async move { b.publish(topic, data).await.ok() }
    })
    .await
    .expect("a's subscription reaches b");

    // a's subscription came before b's own: b's receiver still starts with it.
    let mut b_sub = b.subscribe(room.topic()).await.unwrap();
    let first = timeout(Duration::from_secs(1), b_sub.recv()).await;
    assert!(
        matches!(first, Ok(Some(TopicEvent::AlreadySubscribed { peer })) if peer == a.peer_id()),
        "b learns that a is on the topic: {first:?}"
    );
}

#[tokio::test]
async fn unreachable_bootstrap_is_a_clear_error() {
    // Bind and drop a listener to get a loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", PeerId::random());
    let result = DhtHandle::spawn(
        DhtConfig::new(Keypair::generate_ed25519())
            .with_listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .with_bootstrap(addr.parse().unwrap()),
    )
    .await;
    assert!(matches!(result, Err(DhtError::BootstrapUnreachable { .. })));
}

#[tokio::test]
async fn storing_node_refuses_to_roll_a_mailbox_back_to_an_older_envelope() {
    let storer = node(None).await;
    let writer_key = Keypair::generate_ed25519();
    let writer = node_with_key(writer_key.clone(), Some(&storer)).await;
    let to = PeerId::random();
    let mut newer = offer(&writer_key, to, "lobby");
    newer.seq = 2;
    let mut older = newer.clone();
    older.seq = 1;
    let key = newer.room_id.mailbox_key(&newer.from, &to);
    let newer_bytes = sign(&newer, &writer_key);
    writer
        .put_record(key.clone(), newer_bytes.clone(), TTL)
        .await
        .unwrap();
    // A replay of an older state reaches the storer (the writer's own copy is overwritten
    // locally, so the writer must leave before the read).
    let _ = writer
        .put_record(key.clone(), sign(&older, &writer_key), TTL)
        .await;
    drop(writer);

    let reader = node(Some(&storer)).await;
    let values = eventually(Duration::from_secs(10), || {
        let reader = reader.clone();
        let key = key.clone();
        async move { reader.get_record(key).await.ok().filter(|v| !v.is_empty()) }
    })
    .await
    .expect("the storer holds a record");
    assert_eq!(
        values,
        vec![newer_bytes],
        "the storer kept the newer envelope"
    );
}

#[tokio::test]
async fn topic_message_signed_for_another_identity_is_rejected_and_scored() {
    let a = node(None).await;
    let b = node(Some(&a)).await;
    let room = RoomName::new("lobby").unwrap().id();
    let _a_sub = a.subscribe(room.topic()).await.unwrap();
    let mut b_sub = b.subscribe(room.topic()).await.unwrap();

    // a publishes envelopes signed by fresh identities that are not its own libp2p key.
    let stranger = Keypair::generate_ed25519();
    let mut presence = offer(&stranger, b.peer_id(), "lobby");
    presence.body = Body::Presence;
    let foreign = sign(&presence, &stranger);
    eventually(Duration::from_secs(10), || {
        let (a, topic, data) = (a.clone(), room.topic(), foreign.clone());
        async move { a.publish(topic, data).await.ok() }
    })
    .await
    .expect("a can publish once b subscribed");
    for _ in 0..3 {
        let other = Keypair::generate_ed25519();
        let mut presence = offer(&other, b.peer_id(), "lobby");
        presence.body = Body::Presence;
        a.publish(room.topic(), sign(&presence, &other))
            .await
            .unwrap();
    }

    // b refuses every one of them and its score of a falls below the graylist threshold
    // (gossipsub's default, −80), after which b drops a's messages unread.
    let score = eventually(Duration::from_secs(10), || {
        let (b, a) = (b.clone(), a.peer_id());
        async move { b.peer_score(a).await.unwrap().filter(|s| *s <= -80.0) }
    })
    .await;
    assert!(score.is_some(), "a is graylisted at b");
    assert!(
        !matches!(b_sub.try_recv(), Ok(TopicEvent::Message { .. })),
        "no foreign envelope is delivered"
    );
}

#[tokio::test]
async fn storing_node_refuses_records_over_the_publisher_rate() {
    let storer = node(None).await;
    let writer_key = Keypair::generate_ed25519();
    let writer = node_with_key(writer_key.clone(), Some(&storer)).await;
    // One valid record per mailbox, so that only the rate can refuse one. The storer answers
    // every PUT_VALUE (Kademlia acknowledges before validation), so storage is read back.
    let total = MAX_RECORDS_PER_PUBLISHER_PER_MINUTE as usize + 40;
    let mut keys = Vec::with_capacity(total);
    let started = Instant::now();
    for _ in 0..total {
        let envelope = offer(&writer_key, PeerId::random(), "lobby");
        let key = envelope
            .room_id
            .mailbox_key(&envelope.from, &envelope.to.unwrap());
        let _ = writer
            .put_record(key.clone(), sign(&envelope, &writer_key), TTL)
            .await;
        keys.push(key);
    }
    let elapsed = started.elapsed();
    drop(writer);

    let reader = node(Some(&storer)).await;
    let mut stored = 0;
    for key in keys {
        if !reader.get_record(key).await.unwrap_or_default().is_empty() {
            stored += 1;
        }
    }
    // The quota is a burst of the limit that refills at limit/60 per second (GCRA).
    let limit = MAX_RECORDS_PER_PUBLISHER_PER_MINUTE as usize;
    let refilled = (elapsed.as_secs_f64() * limit as f64 / 60.0).ceil() as usize;
    assert!(
        stored <= limit + refilled,
        "{stored} of {total} records were stored in {elapsed:?}"
    );
    assert!(stored >= limit - 5, "an honest rate is stored: {stored}");
}

#[tokio::test]
async fn stun_responder_answers_a_binding_request_over_udp_with_the_senders_address() {
    use rtc_stun::message::{Getter as _, Message, Setter, TransactionId, BINDING_REQUEST};
    use rtc_stun::xoraddr::XorMappedAddress;

    let server = kadrtc_dht::StunServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut request = Message::new();
    let setters: [Box<dyn Setter>; 2] = [Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)];
    request.build(&setters).unwrap();
    client
        .send_to(&request.raw, server.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (len, from) = timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("an answer within the deadline")
        .unwrap();
    assert_eq!(from, server.local_addr());
    let mut response = Message::new();
    response.unmarshal_binary(&buf[..len]).unwrap();
    assert_eq!(response.transaction_id, request.transaction_id);
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&response).unwrap();
    assert_eq!(
        std::net::SocketAddr::new(mapped.ip, mapped.port),
        client.local_addr().unwrap()
    );
}

/// A TURN client on a fresh loopback socket, authenticating with `username`/`password`.
async fn turn_client(
    server: std::net::SocketAddr,
    username: &str,
    password: &str,
) -> turn::client::Client {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: kadrtc_dht::TURN_REALM.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: std::sync::Arc::new(socket),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

#[tokio::test]
async fn connected_peer_learns_stun_and_relay_and_its_credentials_allocate_on_the_relay() {
    use kadrtc_dht::{IceService, RelayConfig, StunServer, TurnRelay};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::num::NonZeroU32;
    use webrtc_util::Conn as _;

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let stun = StunServer::bind(SocketAddr::new(loopback, 0))
        .await
        .unwrap();
    let mut relay_config = RelayConfig::new(SocketAddr::new(loopback, 0), loopback);
    relay_config.max_allocations = 1;
    relay_config.bytes_per_second = NonZeroU32::new(1 << 20).unwrap();
    let relay = std::sync::Arc::new(TurnRelay::start(relay_config).await.unwrap());
    let mut config = DhtConfig::new(Keypair::generate_ed25519())
        .with_listen("/ip4/127.0.0.1/tcp/0".parse().unwrap());
    config.ice = IceService {
        stun_port: Some(stun.local_addr().port()),
        relay: Some(relay.clone()),
    };
    let server = DhtHandle::spawn(config).await.unwrap();
    let peer = node(Some(&server)).await;

    let servers = peer.ice_servers(server.peer_id()).await.unwrap();
    assert_eq!(servers.stun, Some(stun.local_addr()));
    let (turn_addr, credentials) = servers.turn.expect("the relay is offered");
    assert_eq!(turn_addr, relay.local_addr());
    assert!(credentials.expires > SystemTime::now());

    // A node that serves nothing says so.
    let plain = peer.ice_servers(peer.peer_id()).await;
    assert!(
        matches!(plain, Err(DhtError::Ice(_))),
        "not connected to itself"
    );
    let nothing = server.ice_servers(peer.peer_id()).await.unwrap();
    assert_eq!((nothing.stun, nothing.turn), (None, None));

    // The credentials allocate, and the relay forwards both ways.
    let client = turn_client(turn_addr, &credentials.username, &credentials.password).await;
    let relayed = client.allocate().await.unwrap();
    assert_eq!(relay.allocations(), 1);
    let outside = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relayed
        .send_to(b"through the relay", outside.local_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = timeout(Duration::from_secs(5), outside.recv_from(&mut buf))
        .await
        .expect("relayed datagram arrives")
        .unwrap();
    assert_eq!(&buf[..n], b"through the relay");
    assert_eq!(
        from,
        relayed.local_addr().unwrap(),
        "sent from the relayed address"
    );
    outside.send_to(b"back", from).await.unwrap();
    let (n, _) = timeout(Duration::from_secs(5), relayed.recv_from(&mut buf))
        .await
        .expect("reply arrives through the relay")
        .unwrap();
    assert_eq!(&buf[..n], b"back");

    // Bounded: a second allocation is refused while the first is held.
    let second = turn_client(turn_addr, &credentials.username, &credentials.password).await;
    assert!(second.allocate().await.is_err(), "over max_allocations");
    second.close().await.unwrap();

    // A guessed password does not allocate.
    let forged = turn_client(turn_addr, &credentials.username, "guessed").await;
    assert!(forged.allocate().await.is_err(), "wrong password");
    forged.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn get_record_with_stats_counts_the_requests_of_a_network_lookup() {
    let storer = node(None).await;
    let writer_key = Keypair::generate_ed25519();
    let writer = node_with_key(writer_key.clone(), Some(&storer)).await;
    let (key, value) = put_offer(&writer, &writer_key).await;

    // A reader that holds nothing must ask the network: at least one request, answered.
    let reader = node(Some(&storer)).await;
    let (values, stats) = eventually(Duration::from_secs(10), || {
        let reader = reader.clone();
        let key = key.clone();
        async move {
            reader
                .get_record_with_stats(key)
                .await
                .ok()
                .filter(|(values, _)| !values.is_empty())
        }
    })
    .await
    .expect("the reader finds the record");
    assert_eq!(values, vec![value]);
    assert!(stats.requests >= 1, "{stats:?}");
    assert!(stats.successes >= 1, "{stats:?}");
    assert!(
        stats.successes + stats.failures <= stats.requests,
        "{stats:?}"
    );
    assert!(stats.duration > Duration::ZERO, "{stats:?}");

    // A key nobody stored: the query still asks, and finds nothing.
    let (values, stats) = reader
        .get_record_with_stats(b"/kadrtc/mailbox/none".to_vec())
        .await
        .unwrap();
    assert!(values.is_empty());
    assert!(stats.requests >= 1, "{stats:?}");
}

/// A TCP proxy on 127.0.0.1 to `target`. Once `true` is sent on the returned sender it
/// passes no byte on, either way, and keeps the connections open: a peer that stopped
/// answering.
async fn freezable_proxy(target: std::net::SocketAddr) -> (u16, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (inbound_read, inbound_write) = inbound.into_split();
            let (outbound_read, outbound_write) = outbound.into_split();
            tokio::spawn(pass_on(inbound_read, outbound_write, frozen.clone()));
            tokio::spawn(pass_on(outbound_read, inbound_write, frozen.clone()));
        }
    });
    (port, freeze)
}

/// Copies `from` to `to` until either closes; holds every byte once `frozen` is true.
async fn pass_on(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if *frozen.borrow_and_update() {
            // Held for good: the connection stays open and silent.
            let _ = frozen.wait_for(|frozen| !frozen).await;
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// What a lookup beside a silent node returns within 5 s: `None` when it was still running.
struct BesideSilent {
    value: Vec<u8>,
    values: Option<Vec<Vec<u8>>>,
    writer: PeerId,
    providers: Option<Vec<PeerId>>,
}

/// A reader that knows the writer directly and a second node only through a proxy that
/// then stops passing bytes: what its get of the writer's record and its lookup of the
/// writer as provider return within 5 s, with `grace` as its [`DhtConfig::lookup_grace`].
async fn lookups_beside_a_silent_node(grace: Duration) -> BesideSilent {
    let silent = node(None).await;
    let writer_key = Keypair::generate_ed25519();
    let writer = node_with_key(writer_key.clone(), Some(&silent)).await;
    let (key, value) = put_offer(&writer, &writer_key).await;
    let presence = RoomName::new("lobby").unwrap().id().presence_key();
    writer.start_providing(presence.clone()).await.unwrap();

    let silent_addr = silent.listen_addrs()[0].clone();
    let silent_port = silent_addr
        .iter()
        .find_map(|protocol| match protocol {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let (proxy_port, freeze) = freezable_proxy(([127, 0, 0, 1], silent_port).into()).await;
    let through_proxy = format!("/ip4/127.0.0.1/tcp/{proxy_port}/p2p/{}", silent.peer_id());
    let mut reader_config = config(Keypair::generate_ed25519(), Some(&writer))
        .with_bootstrap(through_proxy.parse().unwrap());
    reader_config.lookup_grace = grace;
    reader_config.query_timeout = Duration::from_secs(30);
    let reader = DhtHandle::spawn(reader_config).await.unwrap();
    // Both nodes answer the reader's gets while the proxy passes bytes.
    eventually(Duration::from_secs(10), || {
        let (reader, key) = (reader.clone(), key.clone());
        async move {
            let (_, stats) = reader.get_record_with_stats(key).await.ok()?;
            (stats.successes >= 2).then_some(())
        }
    })
    .await
    .expect("the reader asks both nodes");

    freeze.send(true).unwrap();
    let (values, providers) = tokio::join!(
        timeout(Duration::from_secs(5), reader.get_record(key)),
        timeout(Duration::from_secs(5), reader.get_providers(presence)),
    );
    BesideSilent {
        value,
        values: values.ok().map(Result::unwrap),
        writer: writer.peer_id(),
        providers: providers.ok().map(Result::unwrap),
    }
}

#[tokio::test]
async fn lookups_end_a_grace_after_their_first_result_when_another_node_never_answers() {
    let graced = lookups_beside_a_silent_node(Duration::from_millis(500)).await;
    assert_eq!(
        graced.values,
        Some(vec![graced.value]),
        "the writer's copy within 5 s"
    );
    assert_eq!(
        graced.providers,
        Some(vec![graced.writer]),
        "the writer as provider within 5 s"
    );
    // Control: without the grace, each lookup waits for the silent node (up to its 10 s
    // request timeout) and is still running after 5 s.
    let waited = lookups_beside_a_silent_node(Duration::from_secs(60)).await;
    assert_eq!(waited.values, None, "the get waited for the silent node");
    assert_eq!(
        waited.providers, None,
        "the provider lookup waited for the silent node"
    );
}
