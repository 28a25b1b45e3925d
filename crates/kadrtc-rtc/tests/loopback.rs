//! Two peer connections in one process, on 127.0.0.1 only, open the data channel and carry a
//! message each way.

use std::time::Duration;

use kadrtc_rtc::{CandidatePair, CandidateType, PeerConnection, RtcConfig, RtcEvent};
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
    // Loopback host candidates on both sides: a direct path.
    let direct = Some(CandidatePair {
        local: CandidateType::Host,
        remote: CandidateType::Host,
    });
    assert_eq!(offerer.selected_candidate_pair().await, direct);
    assert_eq!(answerer.selected_candidate_pair().await, direct);
    offerer.close().await;
    answerer.close().await;
}
