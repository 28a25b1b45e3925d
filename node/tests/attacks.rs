//! Tests that attack: real `kadrtc` processes on 127.0.0.1 against a hostile peer played by
//! the test process (its own libp2p node, and its own WebRTC endpoint where needed). Each test
//! checks that the attack is refused with a typed error and a log line, and that honest peers
//! still connect. SECURITY.md maps each line of the threat model to one of these tests.
//!
//! Figures (time to connect under attack, peak memory) are printed; run with `--nocapture`
//! to see them.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kadrtc_dht::{DhtHandle, TopicEvent};
use kadrtc_proto::{
    is_offerer, offer_hash, Body, ChannelBinding, Envelope, Fingerprint, Keypair, PeerId, RoomKey,
    RoomName, Sealed, SessionId, Signal, ENVELOPE_VERSION, MAX_ENVELOPE_SIZE,
};
use kadrtc_rtc::{PeerConnection, RtcConfig, RtcEvent};
use serde_json::Value;

use support::{
    client, network, now_ms, raw_gossip_publish, raw_put_record, room_name, Proc, DEADLINE,
};

/// Log filter of joiners under attack: the default, plus kadrtc's own debug lines (stale
/// envelopes are logged at debug).
const ATTACK_LOG: &str = "warn,kadrtc=debug";

/// Room state shared by the attacker's envelopes.
struct RoomKeys {
    name: RoomName,
    key: RoomKey,
}

impl RoomKeys {
    fn new(room: &str) -> Self {
        let name = RoomName::new(room).unwrap();
        Self {
            key: RoomKey::derive(&name),
            name,
        }
    }

    fn envelope(&self, from: &Keypair, to: Option<PeerId>, body: Body) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            room_id: self.name.id(),
            from: from.public().to_peer_id(),
            to,
            session: SessionId::random(),
            seq: 1,
            created_at: now_ms(),
            expires_at: now_ms() + 60_000,
            body,
        }
    }

    fn sign(&self, envelope: &Envelope, key: &Keypair) -> Vec<u8> {
        envelope.sign(key, &self.key).unwrap()
    }

    fn mailbox(&self, from: &Keypair, to: PeerId) -> Vec<u8> {
        self.name.id().mailbox_key(&from.public().to_peer_id(), &to)
    }
}

fn offer_signal(sdp: &str) -> Body {
    Body::Offer(Signal {
        sdp: sdp.into(),
        candidates: vec!["candidate:1 1 udp 2130706431 127.0.0.1 9 typ host".into()],
        end_of_candidates: true,
        offer_hash: None,
    })
}

/// Subscribes `dht` to the room topic, waits until `target` is known to be on it (dialled
/// through a provider lookup of the room's presence key; its subscription has arrived, so
/// publications from `dht` go to it directly rather than only to other subscribers, which
/// drop an attacker's forgeries instead of relaying them) and publishes a presence signed by
/// `from`. Returns the subscription.
async fn reach_topic(
    dht: &DhtHandle,
    room: &RoomKeys,
    from: &Keypair,
    target: PeerId,
) -> tokio::sync::mpsc::Receiver<TopicEvent> {
    let topic = room.name.id().topic();
    let mut subscription = dht.subscribe(topic.clone()).await.unwrap();
    let end = Instant::now() + DEADLINE;
    let mut subscribed = false;
    loop {
        let _ = dht.get_providers(room.name.id().presence_key()).await;
        while let Ok(event) = subscription.try_recv() {
            subscribed |= matches!(event,
                TopicEvent::PeerSubscribed { peer } | TopicEvent::AlreadySubscribed { peer }
                    if peer == target);
        }
        if subscribed {
            break;
        }
        assert!(Instant::now() < end, "never reached {target} on the topic");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let presence = room.sign(&room.envelope(from, None, Body::Presence), from);
    dht.publish(topic, presence).await.unwrap();
    subscription
}

/// A storing node and a victim that joined a fresh room, logging kadrtc's debug lines.
struct Arena {
    node: Proc,
    node_addr: String,
    room_text: String,
    room: RoomKeys,
    victim: Proc,
    victim_peer: PeerId,
}

impl Arena {
    fn new(test: &str) -> Self {
        let mut node = Proc::node("storer", None);
        let (_, node_addr) = node.ready();
        let room_text = room_name(test);
        let mut victim = Proc::join_with(
            "victim",
            &room_text,
            &node_addr,
            &[],
            &[("RUST_LOG", ATTACK_LOG)],
        );
        let victim_peer = victim.ready().0.parse().unwrap();
        Self {
            node,
            node_addr,
            room: RoomKeys::new(&room_text),
            room_text,
            victim,
            victim_peer,
        }
    }
}

/// One kind of bad envelope: its bytes, and the typed error's text that storing nodes and
/// receivers must log.
struct BadEnvelope {
    what: &'static str,
    bytes: Vec<u8>,
    error_text: &'static str,
}

fn bad_envelopes(room: &RoomKeys, attacker: &Keypair, victim: PeerId) -> Vec<BadEnvelope> {
    let offer = room.envelope(attacker, Some(victim), offer_signal("v=0\r\n"));

    let mut forged = room.sign(&offer, attacker);
    let last = forged.len() - 1;
    forged[last] ^= 1; // the signature is the last field

    let mut elsewhere = offer.clone();
    elsewhere.room_id = RoomName::new("another room").unwrap().id();

    let mut expired = offer.clone();
    expired.created_at = now_ms() - 200_000;
    expired.expires_at = now_ms() - 100_000;

    vec![
        BadEnvelope {
            what: "forged signature",
            bytes: forged,
            error_text: "does not verify",
        },
        BadEnvelope {
            what: "wrong room id",
            bytes: room.sign(&elsewhere, attacker),
            // Storing nodes: the key is not this envelope's mailbox; receivers: another room.
            error_text: "envelope is for another room",
        },
        BadEnvelope {
            what: "expired",
            bytes: room.sign(&expired, attacker),
            error_text: "expired at",
        },
        BadEnvelope {
            what: "oversized",
            bytes: vec![0x5a; MAX_ENVELOPE_SIZE + 2048],
            error_text: "at most 8192 are accepted",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_wrong_room_expired_and_oversized_envelopes_are_refused_by_storing_node_and_receiver(
) {
    const TTL: Duration = Duration::from_secs(60);
    let Arena {
        node,
        node_addr,
        room_text,
        room,
        mut victim,
        victim_peer,
    } = Arena::new("bad");

    // One attacker identity (and libp2p node) per kind, so that peer scoring of the first
    // rejections does not hide the later ones.
    let mut attackers = Vec::new();
    for bad in bad_envelopes(&room, &Keypair::generate_ed25519(), victim_peer) {
        let key = Keypair::generate_ed25519();
        let dht = client(&node_addr, key.clone()).await;
        // The victim discovers the attacker (a valid presence) and so reads its mailbox.
        reach_topic(&dht, &room, &key, victim_peer).await;
        let mut bad = bad_envelopes(&room, &key, victim_peer)
            .into_iter()
            .find(|b| b.what == bad.what)
            .unwrap();
        // Storing nodes are asked to keep it (the attacker keeps its own copy and serves it
        // to the victim's mailbox lookups, like a hostile storing node). kadrtc's own store
        // refuses to hold an oversized value, so that one goes through a bare Kademlia client.
        let mailbox = room.mailbox(&key, victim_peer);
        if bad.what == "oversized" {
            // The put itself can miss the node on a loaded machine (seen once in CI: the
            // storing node never logged the refusal); that is the attacker's delivery, not
            // the defence under test, so it is tried again.
            for attempt in 1..=3 {
                match raw_put_record(&node_addr, mailbox.clone(), bad.bytes.clone()).await {
                    Ok(()) => break,
                    Err(error) => eprintln!("oversized put, attempt {attempt}: {error}"),
                }
            }
        } else {
            let _ = dht.put_record(mailbox, bad.bytes.clone(), TTL).await;
        }
        // And the victim gets it on the topic, straight from the attacker.
        dht.publish(room.name.id().topic(), std::mem::take(&mut bad.bytes))
            .await
            .unwrap();
        attackers.push((bad, dht));
    }

    for (bad, _) in &attackers {
        let text = if bad.what == "wrong room id" {
            "does not belong under this mailbox key"
        } else {
            bad.error_text
        };
        node.wait_log(text);
        victim.wait_log(bad.error_text);
        println!(
            "{}: refused by the storing node and by the receiver",
            bad.what
        );
    }
    // Every one of them with a "rejected" line naming the typed error: records at the storing
    // node, topic messages at the victim; and the victim's room refused the copies that the
    // attackers' own stores served to its mailbox lookups (the oversized one no store kept).
    // (An expired topic message is ignored rather than rejected: whether it expired depends
    // on the clock of whoever checks it, so its forwarder is not penalised.)
    node.wait_log_count("rejected record", attackers.len());
    victim.wait_log_count("rejected topic message", attackers.len() - 1);
    victim.wait_log_line(&["ignored topic message", "expired at"]);
    for text in [
        "does not verify",
        "does not belong under this mailbox key",
        "expired at",
    ] {
        victim.wait_log_line(&["kadrtc::room", "ignored", text]);
    }
    drop(attackers);

    // The honest pair still connects.
    let started = Instant::now();
    let mut honest = Proc::join("honest", &room_text, &node_addr);
    let (honest_id, _) = honest.ready();
    victim.wait_for("channel to the honest peer", |e| {
        e["event"] == "channel_open" && e["peer_id"] == honest_id.as_str()
    });
    honest.wait_event("channel_open");
    println!(
        "honest pair connected {} ms after the honest peer started",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_answer_from_an_earlier_session_is_ignored_and_cannot_roll_back_the_mailbox() {
    const TTL: Duration = Duration::from_secs(60);
    let mut node = Proc::node("storer", None);
    let (_, node_addr) = node.ready();
    let room_text = room_name("replay");
    let room = RoomKeys::new(&room_text);
    let dir = std::env::temp_dir().join(format!("kadrtc-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a_file, b_file) = (dir.join("a.key"), dir.join("b.key"));
    let _ = std::fs::remove_file(&a_file);
    let _ = std::fs::remove_file(&b_file);
    let (a_path, b_path) = (a_file.to_str().unwrap(), b_file.to_str().unwrap());
    let (a_args, b_args) = (["--identity", a_path], ["--identity", b_path]);
    let env = [("RUST_LOG", ATTACK_LOG)];

    // Session 1: a and b connect.
    let mut a = Proc::join_with("a1", &room_text, &node_addr, &a_args, &env);
    let mut b = Proc::join_with("b1", &room_text, &node_addr, &b_args, &env);
    let a_peer: PeerId = a.ready().0.parse().unwrap();
    let b_peer: PeerId = b.ready().0.parse().unwrap();
    a.wait_event("channel_open");
    b.wait_event("channel_open");
    let (offerer, answerer) = if is_offerer(&a_peer, &b_peer) {
        (a_peer, b_peer)
    } else {
        (b_peer, a_peer)
    };

    // The attacker records session 1's answer from the network.
    let attacker = client(&node_addr, Keypair::generate_ed25519()).await;
    let answer_key = room.name.id().mailbox_key(&answerer, &offerer);
    let old_answer = attacker
        .get_record(answer_key.clone())
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("session 1's answer is stored");
    let opened = Envelope::decode(&old_answer, now_ms())
        .unwrap()
        .open(&room.key)
        .unwrap();
    assert!(matches!(opened.body, Body::Answer(_)));
    let old_session = opened.session;

    // Both leave; the offerer comes back alone (same identity) and starts session 2. Its
    // first mailbox lookup returns session 1's answer, still stored: it must be ignored.
    a.finish();
    b.finish();
    let (offerer_args, answerer_args) = if offerer == a_peer {
        (&a_args, &b_args)
    } else {
        (&b_args, &a_args)
    };
    let mut offerer_proc = Proc::join_with("offerer2", &room_text, &node_addr, offerer_args, &env);
    offerer_proc.ready();
    offerer_proc.wait_log("ignored stale envelope");
    println!("offerer ignored the answer of the earlier session {old_session}");

    // The answerer comes back: the pair connects in a new session.
    let mut answerer_proc =
        Proc::join_with("answerer2", &room_text, &node_addr, answerer_args, &env);
    answerer_proc.ready();
    offerer_proc.wait_for("channel in the new session", |e| {
        e["event"] == "channel_open" && e["peer_id"] == answerer.to_string().as_str()
    });
    answerer_proc.wait_event("channel_open");

    // The replay reaches the storing node: it must not roll the mailbox back.
    let _ = attacker
        .put_record(answer_key.clone(), old_answer.clone(), TTL)
        .await;
    node.wait_log_line(&[
        "rejected record: envelope is older than the one already stored",
        &attacker.peer_id().to_string(),
    ]);
    // The newer answer is still what the network serves (a fresh reader: the attacker's own
    // store keeps what it put). A node that never held the newer record may keep the replay
    // until it expires; receivers ignore it by session (SECURITY.md).
    let reader = client(&node_addr, Keypair::generate_ed25519()).await;
    let stored = reader.get_record(answer_key).await.unwrap();
    assert!(
        stored.iter().any(|value| {
            Envelope::decode(value, now_ms()).is_ok_and(|e| e.session != old_session)
        }),
        "the answer of the new session is still served"
    );

    // The replay on the topic, straight to the offerer: not published by its signer.
    let attacker_key = Keypair::generate_ed25519();
    let attacker = client(&node_addr, attacker_key.clone()).await;
    reach_topic(&attacker, &room, &attacker_key, offerer).await;
    attacker
        .publish(room.name.id().topic(), old_answer)
        .await
        .unwrap();
    offerer_proc.wait_log("carries an envelope signed by");
    let events = offerer_proc.events_so_far().to_vec();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "channel_open")
            .count(),
        1,
        "the replay opened nothing: {events:?}"
    );
}

/// A fresh identity that publishes, through the attacker's `relay` (its only connection, by
/// a bare gossipsub client that nobody can dial back), a presence and an offer to `victim`
/// that it authored and signed itself: what a custom client can do for any number of keys.
/// It never provides the room's presence key. Returns once the relay has received both.
async fn relayed_sybil(
    relay: &mut (DhtHandle, tokio::sync::mpsc::Receiver<TopicEvent>),
    room: &RoomKeys,
    fake: &Keypair,
    victim: PeerId,
) {
    let (relay, relayed) = relay;
    let presence = room.sign(&room.envelope(fake, None, Body::Presence), fake);
    let offer = room.sign(
        &room.envelope(fake, Some(victim), offer_signal("v=0\r\n")),
        fake,
    );
    let publisher = raw_gossip_publish(
        &relay.listen_addrs()[0].to_string(),
        fake.clone(),
        room.name.id().topic(),
        vec![presence, offer],
    )
    .await;
    let fake_id = fake.public().to_peer_id();
    let end = Instant::now() + DEADLINE;
    let mut seen = 0;
    while seen < 2 {
        let event = tokio::time::timeout_at(end.into(), relayed.recv())
            .await
            .expect("the relay receives the sybil's envelopes")
            .expect("the relay's subscription is open");
        if matches!(&event, TopicEvent::Message { source, .. } if *source == Some(fake_id)) {
            seen += 1;
        }
    }
    publisher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_offers_from_a_thousand_fresh_identities_does_not_stop_an_honest_pair() {
    const TTL: Duration = Duration::from_secs(60);
    const IDENTITIES: usize = 1000;
    const RELAYED: usize = 100;
    const ATTACKER_NODES: usize = 4;
    let (nodes, addrs) = network(3);
    let first_addr = addrs[0].clone();
    let room_text = room_name("flood");
    let room = Arc::new(RoomKeys::new(&room_text));

    // b is in the room first; the attacker's nodes connect to it and join its topic mesh.
    let mut b = Proc::join("b", &room_text, &addrs[2]);
    let b_peer: PeerId = b.ready().0.parse().unwrap();
    let mut relays = Vec::new();
    for _ in 0..ATTACKER_NODES {
        let key = Keypair::generate_ed25519();
        let dht = client(&first_addr, key.clone()).await;
        let relayed = reach_topic(&dht, &room, &key, b_peer).await;
        relays.push((dht, relayed));
    }
    let fakes: Vec<Keypair> = (0..IDENTITIES)
        .map(|_| Keypair::generate_ed25519())
        .collect();
    let fake_ids: std::collections::HashSet<String> = fakes
        .iter()
        .map(|k| k.public().to_peer_id().to_string())
        .collect();

    // 1. Sybils: 100 of the identities author their own presence and offer to b, relayed to
    // b by the attacker's nodes. More than b's 64 peer slots: were they negotiated with, the
    // honest peer arriving next would find b's room full.
    let started = Instant::now();
    let per_relay = RELAYED / ATTACKER_NODES;
    futures::future::join_all(relays.iter_mut().enumerate().map(|(r, relay)| {
        let (room, fakes) = (&room, &fakes[r * per_relay..(r + 1) * per_relay]);
        async move {
            for fake in fakes {
                relayed_sybil(relay, room, fake, b_peer).await;
            }
        }
    }))
    .await;
    let sybils_took = started.elapsed();
    let attackers: Vec<DhtHandle> = relays.into_iter().map(|(dht, _)| dht).collect();

    // 2. All 1,000 identities' presences, then offers to both honest peers, published by the
    // attacker's nodes under their own authorship, and put into the mailbox records, for as
    // long as the test runs.
    let (victims_tx, mut victims_rx) = tokio::sync::watch::channel(Vec::<PeerId>::new());
    let published = Arc::new(AtomicUsize::new(0));
    let stored = Arc::new(AtomicUsize::new(0));
    let flood_room = room.clone();
    let (flood_published, flood_stored) = (published.clone(), stored.clone());
    let flood = tokio::spawn(async move {
        let topic = flood_room.name.id().topic();
        let published = &flood_published;
        // Presence of every fake identity, then offers to each honest peer once it is known:
        // on the topic (fast), then into the mailbox records (slower: one Kademlia put each).
        futures::stream::iter(fakes.iter().enumerate())
            .for_each_concurrent(64, |(i, fake)| {
                let (dht, topic) = (&attackers[i % ATTACKER_NODES], topic.clone());
                let bytes = flood_room.sign(&flood_room.envelope(fake, None, Body::Presence), fake);
                async move {
                    let _ = dht.publish(topic, bytes).await;
                    published.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
        let victims = victims_rx.wait_for(|v| v.len() == 2).await.unwrap().clone();
        let offers: Vec<(usize, Vec<u8>, Vec<u8>)> = fakes
            .iter()
            .enumerate()
            .flat_map(|(i, fake)| victims.iter().map(move |victim| (i, fake, *victim)))
            .map(|(i, fake, victim)| {
                let offer = flood_room.envelope(fake, Some(victim), offer_signal("v=0\r\n"));
                (
                    i,
                    flood_room.mailbox(fake, victim),
                    flood_room.sign(&offer, fake),
                )
            })
            .collect();
        futures::stream::iter(&offers)
            .for_each_concurrent(64, |(i, _, bytes)| {
                let (dht, topic) = (&attackers[i % ATTACKER_NODES], topic.clone());
                async move {
                    let _ = dht.publish(topic, bytes.clone()).await;
                    published.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
        futures::stream::iter(offers)
            .for_each_concurrent(64, |(i, mailbox, bytes)| {
                let dht = &attackers[i % ATTACKER_NODES];
                let stored = &flood_stored;
                async move {
                    let _ = dht.put_record(mailbox, bytes, TTL).await;
                    stored.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
    });

    // 3. The honest peer a joins while the flood runs, and must reach b.
    let started = Instant::now();
    let mut a = Proc::join("a", &room_text, &addrs[1]);
    let a_peer: PeerId = a.ready().0.parse().unwrap();
    victims_tx.send_replace(vec![a_peer, b_peer]);
    let open_a = a.wait_for("channel to b", |e| {
        e["event"] == "channel_open" && e["peer_id"] == b_peer.to_string().as_str()
    });
    b.wait_for("channel to a", |e| {
        e["event"] == "channel_open" && e["peer_id"] == a_peer.to_string().as_str()
    });
    let connected_after = started.elapsed();
    let (published_then, stored_then) = (
        published.load(Ordering::Relaxed),
        stored.load(Ordering::Relaxed),
    );
    // Every topic envelope of the flood has gone out (the mailbox puts may still run).
    let end = Instant::now() + DEADLINE;
    while published.load(Ordering::Relaxed) < 3 * IDENTITIES {
        assert!(Instant::now() < end, "the flood never finished publishing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flood.abort();

    // None of the fake identities became a peer of the joiners (the attacker's own nodes,
    // which connected and subscribed under their real identities, may), not even the sybils
    // that signed and authored their own envelopes.
    for joiner in [&mut a, &mut b] {
        let events: Vec<Value> = joiner.events_so_far().to_vec();
        let fakes_seen: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["peer_id"]
                    .as_str()
                    .is_some_and(|id| fake_ids.contains(id))
            })
            .collect();
        assert!(
            fakes_seen.is_empty(),
            "fake identities became peers: {fakes_seen:?}"
        );
    }
    let node_peak = nodes.iter().map(Proc::peak_rss_kib).max().unwrap();
    let joiner_peak = a.peak_rss_kib().max(b.peak_rss_kib());
    println!(
        "flood: {RELAYED} sybils relayed to b in {} ms; {IDENTITIES} identities through \
         {ATTACKER_NODES} attacker nodes; when the honest pair connected, {published_then} topic envelopes and {stored_then} mailbox \
         puts had been sent; honest pair connected in {} ms (a reports {} ms after joining); \
         {} mailbox puts by the end; peak RSS: nodes {} MiB, joiners {} MiB",
        sybils_took.as_millis(),
        connected_after.as_millis(),
        open_a["elapsed_ms"],
        stored.load(Ordering::Relaxed),
        node_peak / 1024,
        joiner_peak / 1024
    );
    // Bounded: the store holds at most MAX_STORED_RECORDS envelopes of 8 KiB (32 MiB), and
    // every queue is bounded; a node that kept everything would grow with the flood.
    assert!(
        node_peak < 256 * 1024,
        "node peak RSS {node_peak} KiB is not bounded"
    );
}

/// Mallory's side of the channel-binding test: a WebRTC endpoint of its own, negotiated
/// honestly under Mallory's identity with `victim`, that presents `proof` once the channel
/// is open. Returns whether the victim closed the channel within the deadline.
async fn open_channel_and_present(
    dht: &DhtHandle,
    room: &RoomKeys,
    mallory: &Keypair,
    victim: PeerId,
    proof_for: impl FnOnce(SessionId) -> Vec<u8>,
) -> bool {
    let topic = room.name.id().topic();
    let mut topic_rx = dht.subscribe(topic.clone()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let pc = PeerConnection::new(&RtcConfig::loopback(), (), tx)
        .await
        .unwrap();
    let sdp = pc.create_offer().await.unwrap();
    let mut candidates = Vec::new();
    let end = Instant::now() + DEADLINE;
    while let Ok(Some(((), event))) = tokio::time::timeout_at(end.into(), rx.recv()).await {
        match event {
            RtcEvent::LocalCandidate(candidate) => candidates.push(candidate),
            RtcEvent::GatheringComplete => break,
            _ => {}
        }
    }
    let session = SessionId::random();
    let offer = Envelope {
        session,
        ..room.envelope(
            mallory,
            Some(victim),
            Body::Offer(Signal {
                sdp: sdp.clone(),
                candidates,
                end_of_candidates: true,
                offer_hash: None,
            }),
        )
    };
    let bytes = room.sign(&offer, mallory);
    let _ = dht
        .put_record(
            room.mailbox(mallory, victim),
            bytes.clone(),
            Duration::from_secs(60),
        )
        .await;
    let _ = dht.publish(topic, bytes).await;

    // The victim's answer, on the topic or in its mailbox.
    let answer_key = room
        .name
        .id()
        .mailbox_key(&victim, &mallory.public().to_peer_id());
    let answer = loop {
        assert!(Instant::now() < end, "no answer from the victim");
        let mut sealed: Vec<Envelope<Sealed>> = Vec::new();
        while let Ok(event) = topic_rx.try_recv() {
            if let TopicEvent::Message { envelope, .. } = event {
                sealed.push(*envelope);
            }
        }
        for value in dht.get_record(answer_key.clone()).await.unwrap() {
            sealed.extend(Envelope::decode(&value, now_ms()).ok());
        }
        let found = sealed
            .into_iter()
            .filter(|e| e.from == victim && e.session == session)
            .find_map(|e| match e.open(&room.key).ok()?.body {
                Body::Answer(signal) => Some(signal),
                _ => None,
            });
        if let Some(signal) = found {
            break signal;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        answer.offer_hash,
        Some(offer_hash(&sdp)),
        "the victim's answer echoes the hash of Mallory's offer"
    );
    pc.apply_answer(answer.sdp, &answer.candidates)
        .await
        .unwrap();

    // Present the proof once the channel is open; then the victim must close it.
    let mut proof = Some(proof_for(session));
    while let Ok(Some(((), event))) = tokio::time::timeout_at(end.into(), rx.recv()).await {
        match event {
            RtcEvent::ChannelOpen(channel) => {
                if let Some(proof) = proof.take() {
                    channel.send(&proof).await.unwrap();
                }
            }
            RtcEvent::ChannelClosed | RtcEvent::Failed(_) => {
                pc.close().await;
                return true;
            }
            _ => {}
        }
    }
    pc.close().await;
    false
}

/// A Mallory whose `PeerId` sorts before `victim`'s, so that it makes the offer.
fn offering_identity(victim: &PeerId) -> Keypair {
    loop {
        let key = Keypair::generate_ed25519();
        if is_offerer(&key.public().to_peer_id(), victim) {
            return key;
        }
    }
}

/// A proof made by `key` for a channel that is not this one (another session, other DTLS
/// certificates): what a peer captures from an earlier channel of its own with `key`'s owner.
fn captured_proof(key: &Keypair) -> Vec<u8> {
    ChannelBinding::new(
        SessionId::random(),
        Fingerprint::from_bytes([1; 32]),
        Fingerprint::from_bytes([2; 32]),
    )
    .prove(key)
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_identity_proof_fails_the_channel_binding_check_and_the_channel_is_closed() {
    let Arena {
        node: _node,
        node_addr,
        room_text,
        room,
        mut victim,
        victim_peer,
    } = Arena::new("binding");
    let alice = Keypair::generate_ed25519();

    // Mallory knows the room, negotiates under its own identity, and then presents over the
    // channel a proof of Alice's (another identity) instead of its own; a second Mallory
    // presents a proof of its own key captured from another channel.
    // `Some(key)`: the proof is made with that (stolen) key; `None`: with Mallory's own.
    let cases = [
        (
            "a proof of another identity",
            Some(&alice),
            "channel-binding proof is from",
        ),
        (
            "its own proof from another channel",
            None,
            "does not cover this session and DTLS certificates",
        ),
    ];
    for (what, stolen_key, expected) in cases {
        let mallory = offering_identity(&victim_peer);
        let mallory_id = mallory.public().to_peer_id().to_string();
        let dht = client(&node_addr, mallory.clone()).await;
        reach_topic(&dht, &room, &mallory, victim_peer).await;
        let started = Instant::now();
        let closed = open_channel_and_present(&dht, &room, &mallory, victim_peer, |_| {
            captured_proof(stolen_key.unwrap_or(&mallory))
        })
        .await;
        assert!(closed, "{what}: the victim closed the channel");
        let error = victim.wait_for("channel-binding error", |e| {
            e["event"] == "error"
                && e["kind"] == "channel_binding"
                && e["peer_id"] == mallory_id.as_str()
        });
        assert!(
            error["message"].as_str().unwrap().contains(expected),
            "{what}: {error}"
        );
        println!(
            "Mallory presenting {what}: channel closed {} ms after its offer",
            started.elapsed().as_millis()
        );
        assert!(
            !victim
                .events_so_far()
                .iter()
                .any(|e| e["event"] == "channel_open" && e["peer_id"] == mallory_id.as_str()),
            "{what}: channel_open was never reported for Mallory"
        );
    }
    victim.wait_log("channel-binding check failed");

    // Alice herself joins and proves her identity: the honest pair connects.
    let dir = std::env::temp_dir().join(format!("kadrtc-binding-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alice_file = dir.join("alice.key");
    std::fs::write(&alice_file, alice.to_protobuf_encoding().unwrap()).unwrap();
    let mut honest = Proc::join_with(
        "alice",
        &room_text,
        &node_addr,
        &["--identity", alice_file.to_str().unwrap()],
        &[],
    );
    let (alice_id, _) = honest.ready();
    assert_eq!(alice_id, alice.public().to_peer_id().to_string());
    victim.wait_for("channel to Alice", |e| {
        e["event"] == "channel_open" && e["peer_id"] == alice_id.as_str()
    });
    honest.wait_event("channel_open");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn wrong_passphrase_gives_no_channel_a_clear_message_and_no_secret_in_logs() {
    let mut node = Proc::node("storer", None);
    let (_, node_addr) = node.ready();
    let room_text = room_name("passphrase");
    let (right, wrong) = ("correct horse battery staple", "Tr0ub4dor&3");
    let dir = std::env::temp_dir().join(format!("kadrtc-passphrase-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong_file = dir.join("wrong.txt");
    std::fs::write(&wrong_file, format!("{wrong}\n")).unwrap();
    // Debug logs everywhere: nothing secret may appear even there.
    let mut a = Proc::join_with(
        "a",
        &room_text,
        &node_addr,
        &[],
        &[("RUST_LOG", "debug"), ("KADRTC_PASSPHRASE", right)],
    );
    let mut b = Proc::join_with(
        "b",
        &room_text,
        &node_addr,
        &["--passphrase-file", wrong_file.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    );
    let (a_id, _) = a.ready();
    let (b_id, _) = b.ready();
    for (me, other) in [(&mut a, &b_id), (&mut b, &a_id)] {
        let error = me.wait_for("wrong-passphrase error", |e| {
            e["event"] == "error"
                && e["kind"] == "wrong_passphrase"
                && e["peer_id"] == other.as_str()
        });
        assert!(error["message"]
            .as_str()
            .unwrap()
            .contains("wrong passphrase or different room"));
    }

    // A third member with the right passphrase connects to a; b stays out.
    let mut c = Proc::join_with(
        "c",
        &room_text,
        &node_addr,
        &["--passphrase", right],
        &[("RUST_LOG", "debug")],
    );
    let (c_id, _) = c.ready();
    a.wait_for("channel to c", |e| {
        e["event"] == "channel_open" && e["peer_id"] == c_id.as_str()
    });
    c.wait_for("channel to a", |e| {
        e["event"] == "channel_open" && e["peer_id"] == a_id.as_str()
    });
    c.wait_for("wrong-passphrase error about b", |e| {
        e["event"] == "error" && e["kind"] == "wrong_passphrase" && e["peer_id"] == b_id.as_str()
    });

    let name = RoomName::new(room_text.as_str()).unwrap();
    let secrets = [
        right.to_string(),
        wrong.to_string(),
        hex(RoomKey::derive_with_passphrase(&name, right)
            .unwrap()
            .as_bytes()),
        hex(RoomKey::derive_with_passphrase(&name, wrong)
            .unwrap()
            .as_bytes()),
    ];
    let mut outputs = Vec::new();
    for (who, proc) in [("a", a), ("b", b), ("c", c)] {
        let log = proc.log();
        let events = proc.finish();
        if who == "a" {
            let reports = events
                .iter()
                .filter(|e| e["kind"] == "wrong_passphrase" && e["peer_id"] == b_id.as_str())
                .count();
            assert_eq!(
                reports, 1,
                "a reported b's other passphrase once: {events:?}"
            );
        }
        let with_b = |e: &Value| {
            e["event"] == "channel_open" && (who == "b" || e["peer_id"] == b_id.as_str())
        };
        assert!(
            !events.iter().any(with_b),
            "{who}: no channel with the wrong passphrase: {events:?}"
        );
        outputs.push((who, format!("{log}{events:?}")));
    }
    for (who, output) in outputs {
        for secret in &secrets {
            assert!(
                !output.to_lowercase().contains(&secret.to_lowercase()),
                "{who}'s output holds secret material"
            );
        }
    }
}

#[test]
fn room_restricted_with_allow_ignores_everyone_else() {
    let mut node = Proc::node("storer", None);
    let (_, node_addr) = node.ready();
    let room_text = room_name("allow");
    let mut a = Proc::join("a", &room_text, &node_addr);
    let (a_id, _) = a.ready();
    let mut v = Proc::join_with(
        "v",
        &room_text,
        &node_addr,
        &["--allow", &a_id],
        &[("RUST_LOG", ATTACK_LOG)],
    );
    let (v_id, _) = v.ready();
    let mut b = Proc::join("b", &room_text, &node_addr);
    let (b_id, _) = b.ready();

    v.wait_for("channel to a", |e| {
        e["event"] == "channel_open" && e["peer_id"] == a_id.as_str()
    });
    // b tries v (and connects to a): its attempt with v times out, since v ignores it.
    b.wait_for("channel to a", |e| {
        e["event"] == "channel_open" && e["peer_id"] == a_id.as_str()
    });
    b.wait_for("failed attempt with v", |e| {
        e["event"] == "error" && e["kind"] == "attempt_failed" && e["peer_id"] == v_id.as_str()
    });
    let events = v.events_so_far().to_vec();
    assert!(
        !events.iter().any(|e| e["peer_id"] == b_id.as_str()),
        "v never heard of b: {events:?}"
    );
}
