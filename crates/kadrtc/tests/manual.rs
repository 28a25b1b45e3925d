//! Copy-paste signaling in one process on 127.0.0.1: the offering and the answering
//! [`ManualConnection`] swap their description lines as strings, open the channel and
//! exchange a message each way, with a deadline on every wait.

use std::time::Duration;

use kadrtc::manual::{
    Description, DescriptionKind, ManualConfig, ManualConnection, ManualError, ManualEvent,
};
use kadrtc::CandidateType;
use tokio::time::timeout;

/// Longest wait for one step; a loopback connection opens in well under a second.
const DEADLINE: Duration = Duration::from_secs(20);

/// Waits for the channel to open and returns its candidate pair's local type.
/// Any other event first is a failure: nothing else can happen before the channel opens.
async fn wait_open(connection: &mut ManualConnection) -> Option<CandidateType> {
    match connection.next_event().await.expect("connection is live") {
        ManualEvent::ChannelOpen { candidate_pair, .. } => candidate_pair.map(|pair| pair.local),
        ManualEvent::Failed(reason) => panic!("connection failed: {reason}"),
        other => panic!("unexpected event before the channel opened: {other:?}"),
    }
}

/// The next event, which must be a message.
async fn wait_message(connection: &mut ManualConnection) -> Vec<u8> {
    match connection.next_event().await.expect("connection is live") {
        ManualEvent::Message(data) => data,
        other => panic!("unexpected event while waiting for a message: {other:?}"),
    }
}

/// The lines as a person would carry them: through text, parsed back on the other side.
fn carry(description: &Description) -> Description {
    let line = description.to_line();
    assert!(!line.contains('\n'), "one line: {line}");
    Description::parse_line(&format!("{line}\r\n")).expect("the line parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_and_answer_in_one_process_open_a_channel_and_talk_both_ways() {
    let config = ManualConfig::loopback();
    let (mut offerer, offer) = timeout(DEADLINE, ManualConnection::offer(&config))
        .await
        .expect("offer within the deadline")
        .expect("offer");
    assert_eq!(offer.kind, DescriptionKind::Offer);
    assert!(
        offer.sdp.contains("a=candidate:") && offer.sdp.contains(" 127.0.0.1 "),
        "every gathered candidate is in the offer: {}",
        offer.sdp
    );
    assert!(offer.sdp.contains("a=end-of-candidates"), "{}", offer.sdp);

    let (mut answerer, answer) =
        timeout(DEADLINE, ManualConnection::answer(&config, &carry(&offer)))
            .await
            .expect("answer within the deadline")
            .expect("answer");
    assert_eq!(answer.kind, DescriptionKind::Answer);
    assert!(
        matches!(answerer.send(b"too early").await, Err(ManualError::NotOpen)),
        "no channel before it opens"
    );
    timeout(DEADLINE, offerer.accept_answer(&carry(&answer)))
        .await
        .expect("accept_answer within the deadline")
        .expect("the answer applies");

    let (offer_local, answer_local) = timeout(DEADLINE, async {
        tokio::join!(wait_open(&mut offerer), wait_open(&mut answerer))
    })
    .await
    .expect("both channels open within the deadline");
    assert_eq!(offer_local, Some(CandidateType::Host));
    assert_eq!(answer_local, Some(CandidateType::Host));

    offerer
        .send_text("hello from the offer side")
        .await
        .unwrap();
    let got = timeout(DEADLINE, wait_message(&mut answerer))
        .await
        .expect("message within the deadline");
    assert_eq!(got, b"hello from the offer side");

    answerer.send(&[0, 1, 2, 255]).await.unwrap();
    let got = timeout(DEADLINE, wait_message(&mut offerer))
        .await
        .expect("message within the deadline");
    assert_eq!(got, [0, 1, 2, 255], "no framing: the bytes as sent");

    // Closing one side ends the other's events.
    offerer.close().await;
    let last = timeout(DEADLINE, answerer.next_event())
        .await
        .expect("the close is seen within the deadline");
    assert!(
        matches!(last, Some(ManualEvent::Closed | ManualEvent::Failed(_))),
        "{last:?}"
    );
    assert_eq!(answerer.next_event().await, None, "nothing after the end");
    answerer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offering_side_refuses_an_offer_as_answer_and_a_second_answer() {
    let config = ManualConfig::loopback();
    let (mut offerer, offer) = timeout(DEADLINE, ManualConnection::offer(&config))
        .await
        .expect("offer within the deadline")
        .expect("offer");
    let error = offerer.accept_answer(&offer).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("expected an answer but this line is an offer"),
        "{error}"
    );

    let (answerer, answer) = timeout(DEADLINE, ManualConnection::answer(&config, &offer))
        .await
        .expect("answer within the deadline")
        .expect("answer");
    offerer.accept_answer(&answer).await.unwrap();
    assert!(
        matches!(
            offerer.accept_answer(&answer).await,
            Err(ManualError::NotAwaitingAnswer)
        ),
        "an answer is applied once"
    );
    offerer.close().await;
    answerer.close().await;
}
