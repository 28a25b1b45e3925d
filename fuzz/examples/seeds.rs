//! Writes the corpus seeds, named `seed-*`: real signed envelopes and a channel-binding proof
//! into `<dir>/envelope/`, real SDP offers and answers with their candidates into `<dir>/sdp/`.
//! The SDPs come from two webrtc-rs peer connections on 127.0.0.1.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- /tmp/seeds` (see README.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kadrtc_fuzz::{
    join_sdp_input, peer, room_key, split_sdp_input, ALICE, BINDING, BOB, NOW, ROOM, SESSION,
};
use kadrtc_proto::{
    offer_hash, Body, Envelope, Keypair, PeerId, RoomKey, SessionId, Signal, ENVELOPE_VERSION,
};
use kadrtc_rtc::{PeerConnection, RtcConfig, RtcEvent};
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error>;

/// Candidate forms loopback gathering does not produce (RFC 8839 §5.1, RFC 6544 §4.5).
const OTHER_CANDIDATES: [&str; 5] = [
    "candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx raddr 192.168.1.20 rport 50702",
    "candidate:3745012345 1 udp 16777215 198.51.100.9 3478 typ relay raddr 203.0.113.7 rport 61665",
    "candidate:1 1 tcp 1518280447 192.168.1.20 9 typ host tcptype active",
    "candidate:2 1 udp 2122262783 2001:db8::1 50703 typ host",
    "candidate:3 1 udp 2122194687 4f2c9a0e-7b1d-4e4b-9c1a-2f5d8e6a1b3c.local 50704 typ host",
];

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: seeds <corpus dir>")?);
    let (offer, offer_candidates, answer, answer_candidates) = negotiate().await?;

    let sdp_dir = dir.join("sdp");
    std::fs::create_dir_all(&sdp_dir)?;
    let others: Vec<String> = OTHER_CANDIDATES.iter().map(|c| c.to_string()).collect();
    let sdp_seeds = [
        ("offer", join_sdp_input(&offer, &offer_candidates)),
        ("answer", join_sdp_input(&answer, &answer_candidates)),
        ("offer-alone", offer.clone()),
        ("offer-other-candidates", join_sdp_input(&offer, &others)),
    ];
    for (name, text) in &sdp_seeds {
        let (sdp, candidates) = split_sdp_input(text);
        let checked = kadrtc_rtc::check_remote_description(sdp, &candidates);
        write(&sdp_dir, name, text.as_bytes(), &format!("{checked:?}"))?;
    }

    let envelope_dir = dir.join("envelope");
    std::fs::create_dir_all(&envelope_dir)?;
    let (alice, bob) = (peer(&ALICE), peer(&BOB));
    let offer_signal = Signal {
        sdp: offer.clone(),
        candidates: offer_candidates,
        end_of_candidates: true,
        offer_hash: None,
    };
    let answer_signal = Signal {
        sdp: answer,
        candidates: answer_candidates,
        end_of_candidates: true,
        offer_hash: Some(offer_hash(&offer)),
    };
    let first_offer = Signal {
        candidates: Vec::new(),
        end_of_candidates: false,
        ..offer_signal.clone()
    };
    let key = room_key();
    let other_key = RoomKey::from_bytes([8; 32]);
    let seeds = [
        EnvelopeSeed {
            name: "offer",
            signer: &ALICE,
            envelope: envelope(&ALICE, Some(bob), Body::Offer(offer_signal)),
            seal_key: &key,
        },
        EnvelopeSeed {
            name: "offer-first",
            signer: &ALICE,
            envelope: envelope(&ALICE, Some(bob), Body::Offer(first_offer)),
            seal_key: &key,
        },
        EnvelopeSeed {
            name: "answer",
            signer: &BOB,
            envelope: envelope(&BOB, Some(alice), Body::Answer(answer_signal)),
            seal_key: &key,
        },
        EnvelopeSeed {
            name: "presence",
            signer: &ALICE,
            envelope: envelope(&ALICE, None, Body::Presence),
            seal_key: &key,
        },
        EnvelopeSeed {
            name: "leave",
            signer: &BOB,
            envelope: envelope(&BOB, None, Body::Leave),
            seal_key: &key,
        },
        EnvelopeSeed {
            name: "presence-expired",
            signer: &BOB,
            envelope: Envelope {
                created_at: NOW - 120_000,
                expires_at: NOW - 60_000,
                ..envelope(&BOB, None, Body::Presence)
            },
            seal_key: &key,
        },
        EnvelopeSeed {
            name: "presence-other-key",
            signer: &BOB,
            envelope: envelope(&BOB, None, Body::Presence),
            seal_key: &other_key,
        },
    ];
    for seed in seeds {
        let bytes = seed.envelope.sign(seed.signer, seed.seal_key)?;
        // How far the target gets with this seed (the expired and other-key ones stop early
        // on purpose).
        let opened = Envelope::decode(&bytes, NOW).and_then(|sealed| sealed.open(&key));
        let checks = format!("{:?}", opened.map(|_| ()));
        write(&envelope_dir, seed.name, &bytes, &checks)?;
    }
    let proof = BINDING.prove(&ALICE)?;
    let verified = BINDING.verify(&proof, &alice);
    write(&envelope_dir, "binding", &proof, &format!("{verified:?}"))?;
    Ok(())
}

/// One envelope seed: what it says, who signs it and the key its body is sealed with.
struct EnvelopeSeed<'a> {
    name: &'static str,
    signer: &'a Keypair,
    envelope: Envelope,
    seal_key: &'a RoomKey,
}

/// An envelope in the fixture room from `signer`, valid at [`NOW`] for five minutes; offers
/// and answers are in the fixture session, the rest in the all-zero one.
fn envelope(signer: &Keypair, to: Option<PeerId>, body: Body) -> Envelope {
    let session = match body {
        Body::Offer(_) | Body::Answer(_) => *SESSION,
        _ => SessionId::from_bytes([0; 16]),
    };
    Envelope {
        version: ENVELOPE_VERSION,
        room_id: *ROOM,
        from: peer(signer),
        to,
        session,
        seq: 1,
        created_at: NOW - 1_000,
        expires_at: NOW + 5 * 60_000,
        body,
    }
}

/// Offer and answer between two loopback peer connections, each with the candidates its side
/// gathered.
async fn negotiate() -> Result<(String, Vec<String>, String, Vec<String>), Error> {
    let (tx, mut rx) = mpsc::channel(64);
    let offerer = PeerConnection::new(&RtcConfig::loopback(), 'a', tx.clone()).await?;
    let answerer = PeerConnection::new(&RtcConfig::loopback(), 'b', tx).await?;
    let offer = offerer.create_offer().await?;
    let offer_candidates = gather(&mut rx, 'a').await?;
    let answer = answerer
        .accept_offer(offer.clone(), &offer_candidates)
        .await?;
    let answer_candidates = gather(&mut rx, 'b').await?;
    offerer.close().await;
    answerer.close().await;
    Ok((offer, offer_candidates, answer, answer_candidates))
}

/// The candidates `side` gathers until it reports gathering complete.
async fn gather(
    events: &mut mpsc::Receiver<(char, RtcEvent)>,
    side: char,
) -> Result<Vec<String>, Error> {
    let mut candidates = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some((tag, event)) = events.recv().await {
            match event {
                RtcEvent::LocalCandidate(candidate) if tag == side => candidates.push(candidate),
                RtcEvent::GatheringComplete if tag == side => return Ok(()),
                _ => {}
            }
        }
        Err("peer connection events ended")
    })
    .await??;
    Ok(candidates)
}

/// Writes one seed and prints its path, size and what the checks say about it.
fn write(dir: &Path, name: &str, bytes: &[u8], checks: &str) -> Result<(), Error> {
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, bytes)?;
    println!("{} ({} bytes): {checks}", path.display(), bytes.len());
    Ok(())
}
