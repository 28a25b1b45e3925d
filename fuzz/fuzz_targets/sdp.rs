//! Proves that no UTF-8 text makes a panic in the SDP and ICE candidate parsing kadrtc applies
//! to a remote's signal: `Fingerprint::from_sdp` and `kadrtc_rtc::check_remote_description`
//! (webrtc-rs's SDP and candidate parsers, on the SDP alone, each candidate, and the SDP with
//! the candidates added as kadrtc hands it to webrtc-rs). Input: the SDP, then optionally
//! `\n--\n` and one candidate per line.

#![no_main]

use kadrtc_fuzz::split_sdp_input;
use kadrtc_proto::Fingerprint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Signals reach kadrtc as Rust strings; other bytes never get this far.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(fingerprint) = Fingerprint::from_sdp(text) {
        // The attribute kadrtc would write for it reads back as the same fingerprint.
        let attribute = format!("a=fingerprint:sha-256 {fingerprint}\r\n");
        assert_eq!(Fingerprint::from_sdp(&attribute), Some(fingerprint));
    }
    let (sdp, candidates) = split_sdp_input(text);
    let _ = kadrtc_rtc::check_remote_description(sdp, &candidates);
});
