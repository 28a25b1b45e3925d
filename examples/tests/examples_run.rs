//! The examples run against a local testnet as examples/README.md says: a `kadrtc node` on
//! 127.0.0.1, the example processes bootstrapped from it. `cargo test` builds the examples
//! and, in a workspace run, the `kadrtc` binary next to them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// target/debug (or the profile this test was built in).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/examples_run-HASH
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn binary(relative: &str) -> PathBuf {
    let path = profile_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --all-targets` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// A child process whose stdout lines arrive on a channel; killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(program: PathBuf, args: &[&str]) -> Self {
        let mut child = Command::new(&program)
            .args(args)
            .env("RUST_LOG", "warn")
            .env("XDG_CONFIG_HOME", "/nonexistent/kadrtc-test-config")
            .env_remove("KADRTC_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The first line for which `pick` returns something, within [`DEADLINE`].
    fn wait_for<T>(&self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        let end = std::time::Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = pick(&line) {
                        return found;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no line with {what} within {DEADLINE:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the process closed its stdout before a line with {what} (its stderr is above)")
                }
            }
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn wait_success(&mut self, what: &str) {
        let end = std::time::Instant::now() + DEADLINE;
        while std::time::Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{what} exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{what} did not exit within {DEADLINE:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str(line).ok()
}

/// One `kadrtc node` on 127.0.0.1; returns it and its address.
fn testnet_node() -> (Running, String) {
    let node = Running::start(
        binary("kadrtc"),
        &[
            "node",
            "--ephemeral",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-stun",
            "--no-mdns",
            "--json",
        ],
    );
    let addr = node.wait_for("the ready event", |line| {
        let event = json(line)?;
        Some(event["listen"][0].as_str()?.to_string())
    });
    (node, addr)
}

/// `kadrtc join ROOM --json` on loopback, bootstrapped from `addr`.
fn kadrtc_join(room: &str, addr: &str) -> Running {
    Running::start(
        binary("kadrtc"),
        &[
            "join",
            room,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            addr,
            "--json",
        ],
    )
}

fn unique(label: &str) -> String {
    format!("{label}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn echo_example_sends_every_message_back() {
    let (_node, addr) = testnet_node();
    let room = unique("echo");
    let echo = Running::start(binary("examples/echo"), &[&room, &addr]);
    let echo_id = echo.wait_for("echo's ready line", |line| {
        let rest = line.strip_prefix("echo ")?;
        Some(rest.strip_suffix(" ready")?.to_string())
    });
    let mut join = kadrtc_join(&room, &addr);
    join.wait_for("the channel to echo", |line| {
        let event = json(line)?;
        (event["event"] == "channel_open" && event["peer_id"] == echo_id.as_str()).then_some(())
    });
    join.say("hello, echo");
    join.wait_for("the echo", |line| {
        let event = json(line)?;
        (event["event"] == "message"
            && event["peer_id"] == echo_id.as_str()
            && event["text"] == "hello, echo")
            .then_some(())
    });
}

#[test]
fn file_transfer_example_moves_a_file_and_both_sides_agree_on_its_sha256() {
    let (_node, addr) = testnet_node();
    let room = unique("files");
    let dir = std::env::temp_dir().join(unique("kadrtc-example-files"));
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let source = dir.join("example.bin");
    let content: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&source, &content).unwrap();

    let out_arg = out.to_str().unwrap();
    let mut recv = Running::start(
        binary("examples/file_transfer"),
        &["recv", &room, &addr, out_arg],
    );
    let mut send = Running::start(
        binary("examples/file_transfer"),
        &["send", &room, &addr, source.to_str().unwrap()],
    );
    let sha = |line: &str| Some(line.split("sha256 ").nth(1)?.split(')').next()?.to_string());
    let sent = send.wait_for("the sender's receipt", |line| {
        line.starts_with("send: done").then(|| sha(line)).flatten()
    });
    let received = recv.wait_for("the receiver's receipt", |line| {
        line.starts_with("recv: done").then(|| sha(line)).flatten()
    });
    assert_eq!(sent, received);
    send.wait_success("the sender");
    recv.wait_success("the receiver");
    assert_eq!(std::fs::read(out.join("example.bin")).unwrap(), content);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_example_prints_what_members_send_and_sends_its_stdin_lines() {
    let (_node, addr) = testnet_node();
    let room = unique("chat");
    let mut chat = Running::start(binary("examples/chat"), &[&room, &addr]);
    let mut join = kadrtc_join(&room, &addr);
    let join_id = join.wait_for("the joiner's ready event", |line| {
        let event = json(line)?;
        (event["event"] == "ready").then(|| event["peer_id"].as_str().map(str::to_string))?
    });
    chat.wait_for("the chat's connection", |line| {
        line.starts_with(&format!("* connected to {join_id}"))
            .then_some(())
    });
    // Both ends must have the channel open: each reports it once the other's proof arrived.
    join.wait_for("the joiner's channel", |line| {
        let event = json(line)?;
        (event["event"] == "channel_open").then_some(())
    });
    join.say("hi from join");
    chat.wait_for("the joiner's line", |line| {
        (line == format!("<{join_id}> hi from join")).then_some(())
    });
    chat.say("hi from chat");
    join.wait_for("the chat's line", |line| {
        let event = json(line)?;
        (event["event"] == "message" && event["text"] == "hi from chat").then_some(())
    });
}
