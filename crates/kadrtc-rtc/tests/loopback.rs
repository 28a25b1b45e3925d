//! Two peer connections in one process, on 127.0.0.1 only, open the data channel and carry a
//! message each way.

use std::time::Duration;

use kadrtc_rtc::{
    CandidateType, PeerConnection, RtcConfig, RtcError, RtcEvent, SideChannel, MAX_SIDE_CHANNELS,
};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_pair_opens_a_channel_and_carries_messages_both_ways() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let offerer = PeerConnection::new(&RtcConfig::loopback(), 'a', tx.clone())
        .await
        .unwrap();
    let answerer = PeerConnection::new(&RtcConfig::loopback(), 'b', tx)
        .await
        .unwrap();
    let offer = offerer.create_offer().await.unwrap();
    let answer = answerer.accept_offer(offer, &[]).await.unwrap();
    offerer.apply_answer(answer, &[]).await.unwrap();

    let mut received = Vec::new();
    let mut candidates = 0;
    let deadline = Duration::from_secs(20);
    timeout(deadline, async {
        while received.len() < 2 {
            let (tag, event) = rx.recv().await.expect("events until both messages");
            match (tag, event) {
                ('a', RtcEvent::LocalCandidate(c)) => {
                    assert!(c.contains("127.0.0.1"), "loopback only: {c}");
                    candidates += 1;
                    answerer.add_candidate(c).await.unwrap();
                }
                ('b', RtcEvent::LocalCandidate(c)) => {
                    assert!(c.contains("127.0.0.1"), "loopback only: {c}");
                    candidates += 1;
                    offerer.add_candidate(c).await.unwrap();
                }
                (tag, RtcEvent::ChannelOpen(channel)) => {
                    channel
                        .send(format!("hello from {tag}").as_bytes())
                        .await
                        .unwrap();
                }
                (tag, RtcEvent::Message(data)) => received.push((tag, data)),
                _ => {}
            }
        }
    })
    .await
    .expect("channel opens and messages arrive within the deadline");
    received.sort();
    assert_eq!(
        received,
        vec![
            ('a', b"hello from b".to_vec()),
            ('b', b"hello from a".to_vec())
        ]
    );
    assert!(candidates >= 2);
    // Loopback host candidates on both sides: a direct path. The remote side may be
    // peer-reflexive: candidates trickle here, so the remote's check can arrive before its
    // candidate does (RFC 8445 §7.3.1.3), on a loaded machine in about one run of four.
    for pc in [&offerer, &answerer] {
        let pair = pc.selected_candidate_pair().await.expect("a selected pair");
        assert_eq!(pair.local, CandidateType::Host);
        assert!(
            matches!(
                pair.remote,
                CandidateType::Host | CandidateType::PeerReflexive
            ),
            "{pair:?}"
        );
        assert!(!pair.is_relayed());
    }
    offerer.close().await;
    answerer.close().await;
}

/// Connects two peer connections on loopback and returns them once both main channels are
/// open, with the event receiver.
async fn connected_pair() -> (
    PeerConnection,
    PeerConnection,
    tokio::sync::mpsc::Receiver<(char, RtcEvent)>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let offerer = PeerConnection::new(&RtcConfig::loopback(), 'a', tx.clone())
        .await
        .unwrap();
    let answerer = PeerConnection::new(&RtcConfig::loopback(), 'b', tx)
        .await
        .unwrap();
    let offer = offerer.create_offer().await.unwrap();
    let answer = answerer.accept_offer(offer, &[]).await.unwrap();
    offerer.apply_answer(answer, &[]).await.unwrap();
    let mut open = 0;
    timeout(Duration::from_secs(20), async {
        while open < 2 {
            match rx.recv().await.expect("events until both channels open") {
                ('a', RtcEvent::LocalCandidate(c)) => answerer.add_candidate(c).await.unwrap(),
                ('b', RtcEvent::LocalCandidate(c)) => offerer.add_candidate(c).await.unwrap(),
                (_, RtcEvent::ChannelOpen(_)) => open += 1,
                _ => {}
            }
        }
    })
    .await
    .expect("main channels open within the deadline");
    (offerer, answerer, rx)
}

/// The next message on `side`, which must come within 10 s.
async fn recv(side: &mut SideChannel) -> Vec<u8> {
    timeout(Duration::from_secs(10), side.recv())
        .await
        .expect("a message within the deadline")
        .expect("a message, not the channel's close")
}

/// The next side channel the remote opened.
async fn next_side_channel(
    rx: &mut tokio::sync::mpsc::Receiver<(char, RtcEvent)>,
    on: char,
) -> SideChannel {
    timeout(Duration::from_secs(10), async {
        loop {
            if let (tag, RtcEvent::SideChannelOpen(side)) = rx.recv().await.expect("events") {
                assert_eq!(tag, on);
                return side;
            }
        }
    })
    .await
    .expect("side channel reported within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_side_opens_side_channels_with_their_own_messages_up_to_the_limit() {
    let (offerer, answerer, mut rx) = connected_pair().await;

    // The answerer opens one: the offerer is told, and messages flow both ways on it.
    let mut mine = answerer.open_side_channel("kadrtc-file").await.unwrap();
    let mut theirs = next_side_channel(&mut rx, 'a').await;
    assert_eq!(theirs.label(), "kadrtc-file");
    mine.send(b"chunk").await.unwrap();
    assert_eq!(recv(&mut theirs).await, b"chunk");
    theirs.send(b"ack").await.unwrap();
    assert_eq!(recv(&mut mine).await, b"ack");

    // Dropping one end closes the other.
    drop(mine);
    let closed = timeout(Duration::from_secs(10), theirs.recv()).await;
    assert_eq!(closed.expect("close seen within the deadline"), None);

    // The offerer may hold MAX_SIDE_CHANNELS at once, not one more; a freed slot is reusable.
    let mut held = Vec::new();
    for _ in 0..MAX_SIDE_CHANNELS {
        held.push(offerer.open_side_channel("kadrtc-file").await.unwrap());
        held.push(next_side_channel(&mut rx, 'b').await);
    }
    assert!(matches!(
        offerer.open_side_channel("kadrtc-file").await,
        Err(RtcError::TooManySideChannels)
    ));
    held.truncate(held.len() - 2);
    // The slot frees once the pump sees the close; wait for it with a deadline.
    timeout(Duration::from_secs(10), async {
        loop {
            match offerer.open_side_channel("kadrtc-file").await {
                Ok(side) => return side,
                Err(RtcError::TooManySideChannels) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    })
    .await
    .expect("a closed side channel frees its slot");

    // Labels outside the side prefix are refused.
    assert!(offerer.open_side_channel("chat").await.is_err());
    offerer.close().await;
    answerer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_side_channel_is_used_again_and_the_remote_keeps_reading_it() {
    let (offerer, answerer, mut rx) = connected_pair().await;

    let mine = offerer.open_side_channel("kadrtc-file").await.unwrap();
    let mut theirs = next_side_channel(&mut rx, 'b').await;
    // Only channels marked in use count as busy (the room's liveness check reads this),
    // on either side; open idle ones do not.
    assert_eq!(offerer.side_channels_in_use(), 0);
    let (sending, receiving) = (mine.in_use(), theirs.in_use());
    assert_eq!(offerer.side_channels_in_use(), 1);
    assert_eq!(answerer.side_channels_in_use(), 1);
    mine.send(b"first").await.unwrap();
    assert_eq!(recv(&mut theirs).await, b"first");
    drop((sending, receiving));
    mine.release();
    assert_eq!(offerer.side_channels_open(), 1, "released, still open");
    assert_eq!(offerer.side_channels_in_use(), 0, "released, not in use");
    assert_eq!(answerer.side_channels_in_use(), 0);

    // Several rounds of release and open: each is the same channel, never a new one (a
    // new one would be reported to the answerer as SideChannelOpen).
    for round in 0..20u8 {
        let mut again = offerer.open_side_channel("kadrtc-file").await.unwrap();
        again.send(&[round]).await.unwrap();
        assert_eq!(recv(&mut theirs).await, [round]);
        theirs.send(&[round]).await.unwrap();
        assert_eq!(recv(&mut again).await, [round]);
        again.release();
    }
    assert_eq!(offerer.side_channels_open(), 1);
    while let Ok((_, event)) = rx.try_recv() {
        assert!(
            !matches!(event, RtcEvent::SideChannelOpen(_)),
            "no new side channel was opened"
        );
    }

    // A released channel the remote closed is not handed out again: a new one opens.
    drop(theirs);
    timeout(Duration::from_secs(10), async {
        while offerer.side_channels_open() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the remote's close is seen within the deadline");
    let fresh = offerer.open_side_channel("kadrtc-file").await.unwrap();
    let mut fresh_theirs = next_side_channel(&mut rx, 'b').await;
    fresh.send(b"new").await.unwrap();
    assert_eq!(recv(&mut fresh_theirs).await, b"new");

    offerer.close().await;
    answerer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_before_a_flushed_close_all_arrive_before_the_channel_closes() {
    let (offerer, answerer, mut rx) = connected_pair().await;
    let mine = answerer.open_side_channel("kadrtc-file").await.unwrap();
    let mut theirs = next_side_channel(&mut rx, 'a').await;

    // About 1 MiB in 60 KiB messages, then a small last one: the way a file's last reply
    // follows its bytes. The close comes right after, as when an application leaves at once.
    let chunk = vec![7u8; 60 * 1024];
    for _ in 0..16 {
        mine.send(&chunk).await.unwrap();
    }
    mine.send(b"last").await.unwrap();
    assert!(
        answerer.flush(Duration::from_secs(10)).await,
        "the remote acknowledged everything within the limit"
    );
    answerer.close().await;

    for index in 0..16 {
        assert_eq!(
            recv(&mut theirs).await.len(),
            chunk.len(),
            "message {index}"
        );
    }
    assert_eq!(recv(&mut theirs).await, b"last");
    let closed = timeout(Duration::from_secs(10), theirs.recv()).await;
    assert_eq!(closed.expect("close seen within the deadline"), None);
    offerer.close().await;
}
