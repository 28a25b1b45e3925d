//! Whole-process tests of copy-paste signaling: `kadrtc offer` and `kadrtc answer` on
//! 127.0.0.1, their description lines carried from one to the other by the test, with
//! deadlines on every wait.

mod support;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::Proc;

fn offer_proc(name: &str) -> Proc {
    Proc::spawn(name, &["offer", "--bind", "127.0.0.1", "--json"])
}

fn is_message(event: &Value, text: &str) -> bool {
    event["event"] == "message" && event["peer_id"].is_null() && event["text"] == text
}

/// Waits for the description line of type `kind` and checks that it came first on stdout.
fn description_line(proc: &mut Proc, kind: &str) -> Value {
    let line = proc.wait_for(&format!("the {kind} line"), |e| e["type"] == kind);
    assert_eq!(proc.events_so_far()[0], line, "the {kind} line comes first");
    let sdp = line["sdp"].as_str().expect("sdp is a string");
    assert!(sdp.starts_with("v=0\r\n"), "{sdp}");
    assert!(
        sdp.contains("a=candidate:") && sdp.contains(" 127.0.0.1 "),
        "every gathered candidate is in the SDP: {sdp}"
    );
    assert!(sdp.contains("a=end-of-candidates"), "{sdp}");
    line
}

#[test]
fn offer_and_answer_processes_connect_through_pasted_lines_and_chat_both_ways() {
    let mut offer = offer_proc("offer");
    let offer_line = description_line(&mut offer, "offer");

    let mut answer = Proc::spawn("answer", &["answer", "--bind", "127.0.0.1", "--json"]);
    answer.say(&format!("  {offer_line}  "));
    let answer_line = description_line(&mut answer, "answer");
    offer.say(&answer_line.to_string());

    for side in [&mut offer, &mut answer] {
        let open = side.wait_event("channel_open");
        assert!(open["peer_id"].is_null(), "{open}");
        assert!(open["elapsed_ms"].as_u64().is_some(), "{open}");
        assert_eq!(open["local"], "host", "{open}");
    }

    offer.say("hello from the offer side");
    answer.wait_for("the offer side's message", |e| {
        is_message(e, "hello from the offer side")
    });
    answer.say("hello from the answer side, ünïcode too");
    offer.wait_for("the answer side's message", |e| {
        is_message(e, "hello from the answer side, ünïcode too")
    });

    // End of stdin closes the connection and exits 0; the other side sees the remote leave
    // and exits 0 too.
    offer.finish();
    answer.wait_event("peer_left");
    answer.finish();
}

#[test]
fn garbage_answer_lines_are_clear_errors_and_failed_exits() {
    let mut own = offer_proc("own-offer");
    let own_offer = description_line(&mut own, "offer").to_string();
    let cases = [
        ("not JSON", "this is not an answer".to_string()),
        ("this line is an offer", own_offer),
        (
            "SDP is not valid",
            r#"{"type":"answer","sdp":"hello"}"#.to_string(),
        ),
        ("no \"sdp\"", r#"{"type":"answer"}"#.to_string()),
    ];
    for (i, (expected, line)) in cases.into_iter().enumerate() {
        let mut offer = offer_proc(&format!("garbage-{i}"));
        description_line(&mut offer, "offer");
        offer.say("");
        offer.say(&line);
        let error = offer.wait_event("error");
        let message = error["message"].as_str().expect("error message");
        assert!(message.contains(expected), "{line:?}: {message}");
        let status = offer.wait_exit("a garbage answer line");
        assert!(!status.success(), "{line:?}: exit {status}");
    }
}

#[test]
fn an_answer_side_whose_stdin_ends_before_the_offer_line_fails_clearly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kadrtc"))
        .args(["answer", "--bind", "127.0.0.1", "--json"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kadrtc binary starts");
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "no exit after the end of stdin");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "exit {status}");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let error: Value = serde_json::from_str(stdout.lines().next().expect("one line")).unwrap();
    assert_eq!(error["event"], "error", "{stdout}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("stdin ended before the offer line"),
        "{stdout}"
    );
}
