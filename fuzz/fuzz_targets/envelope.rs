//! Proves that no byte string makes a panic in what every node runs on envelope bytes from the
//! network (`Envelope::decode`, its mailbox and addressing checks, `open` with the room key) or
//! in channel-binding verification, and that whatever `decode` accepts has its checks' results.

#![no_main]

use kadrtc_fuzz::{peer, room_key, ALICE, BINDING, BOB, NOW, ROOM};
use kadrtc_proto::{
    Body, Envelope, EnvelopeError, ENVELOPE_VERSION, MAX_BINDING_SIZE, MAX_CANDIDATES,
    MAX_CANDIDATE_LEN, MAX_CLOCK_SKEW_MS, MAX_ENVELOPE_LIFETIME_MS, MAX_ENVELOPE_SIZE,
    SEAL_NONCE_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_envelope(data);
    // The same bytes as a channel-binding proof of Alice (the offerer of the seeds).
    if BINDING.verify(data, &peer(&ALICE)).is_ok() {
        assert!(data.len() <= MAX_BINDING_SIZE);
    }
});

fn check_envelope(data: &[u8]) {
    let sealed = match Envelope::decode(data, NOW) {
        Ok(sealed) => sealed,
        Err(EnvelopeError::TooLarge { size }) => {
            assert_eq!(size, data.len());
            assert!(size > MAX_ENVELOPE_SIZE);
            return;
        }
        Err(_) => return,
    };
    assert!(data.len() <= MAX_ENVELOPE_SIZE);
    assert_eq!(sealed.version, ENVELOPE_VERSION);
    assert!(sealed.body.len() >= SEAL_NONCE_LEN);
    assert!(sealed.created_at <= sealed.expires_at);
    assert!(sealed.expires_at - sealed.created_at <= MAX_ENVELOPE_LIFETIME_MS);
    assert!(sealed.created_at <= NOW + MAX_CLOCK_SKEW_MS);
    assert!(NOW < sealed.expires_at);

    // Mailbox: accepted exactly under its own key, which needs a recipient.
    match sealed.to {
        Some(to) => {
            let own = sealed.room_id.mailbox_key(&sealed.from, &to);
            assert!(sealed.check_mailbox_key(&own).is_ok());
            let swapped = sealed.room_id.mailbox_key(&to, &sealed.from);
            assert_eq!(
                sealed.check_mailbox_key(&swapped).is_ok(),
                to == sealed.from
            );
        }
        None => assert!(sealed.check_mailbox_key(&[]).is_err()),
    }
    let fixture = ROOM.mailbox_key(&peer(&ALICE), &peer(&BOB));
    let _ = sealed.check_mailbox_key(&fixture);

    for me in [peer(&ALICE), peer(&BOB)] {
        if sealed.check_addressed(&ROOM, &me).is_ok() {
            assert_eq!(sealed.room_id, *ROOM);
            assert!(sealed.to.is_none_or(|to| to == me));
        }
    }

    let header = (
        sealed.room_id,
        sealed.from,
        sealed.to,
        sealed.session,
        sealed.seq,
        sealed.created_at,
        sealed.expires_at,
    );
    let Ok(opened) = sealed.open(&room_key()) else {
        return;
    };
    // Opening changes the body only.
    assert_eq!(
        header,
        (
            opened.room_id,
            opened.from,
            opened.to,
            opened.session,
            opened.seq,
            opened.created_at,
            opened.expires_at,
        )
    );
    if let Body::Offer(signal) | Body::Answer(signal) = &opened.body {
        assert!(signal.candidates.len() <= MAX_CANDIDATES);
        assert!(signal
            .candidates
            .iter()
            .all(|candidate| candidate.len() <= MAX_CANDIDATE_LEN));
    }
}
