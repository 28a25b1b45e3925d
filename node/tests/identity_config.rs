//! Whole-process tests of the persistent identity, its lock, `kadrtc id`, the config file and
//! `kadrtc completions`: the real `kadrtc` binary on 127.0.0.1, each with its config and data
//! directories in a scratch directory of its own.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::Value;

use support::{fresh_home, room_name, Proc};

/// `kadrtc node` on 127.0.0.1 with the persistent identity (no --identity, no --ephemeral),
/// its data directory `data`.
fn persistent_node(name: &str, data: &Path) -> Proc {
    Proc::spawn_with_env(
        name,
        &[
            "node",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--stun-port",
            "0",
            "--no-mdns",
            "--json",
        ],
        &[("XDG_DATA_HOME", data.to_str().unwrap())],
    )
}

/// Runs `kadrtc` to completion in `home` (stdin closed) with extra environment variables.
fn run(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let output = support::command(home)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("kadrtc binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    output
}

/// Runs `kadrtc` expecting failure; returns its stderr.
fn run_to_error(home: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = run(home, args, env);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "{args:?} should fail; stderr:\n{stderr}"
    );
    stderr
}

/// `kadrtc id --json` with the data directory `data`.
fn id_json(home: &Path, data: &Path) -> Value {
    let output = run(
        home,
        &["id", "--json"],
        &[("XDG_DATA_HOME", data.to_str().unwrap())],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn node_keeps_its_identity_in_the_data_directory_across_restarts_and_kadrtc_id_prints_it() {
    let home = fresh_home("persistent");
    let data = home.join("shared-data");
    let key = data.join("kadrtc").join("node.key");

    let mut first = persistent_node("persistent-1", &data);
    let (first_id, _) = first.ready();
    assert!(key.exists(), "the identity is written to {}", key.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    // Killed (SIGKILL): its lock goes with it, the lock file stays behind.
    drop(first);
    assert!(key.with_extension("key.lock").exists());

    let mut second = persistent_node("persistent-2", &data);
    assert_eq!(second.ready().0, first_id, "same identity after a restart");
    drop(second);

    let id = id_json(&home, &data);
    assert_eq!(id["peer_id"], first_id.as_str());
    assert_eq!(id["identity"], key.to_str().unwrap());
    assert_eq!(id["created"], false);

    let text = run(&home, &["id"], &[("XDG_DATA_HOME", data.to_str().unwrap())]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains(&first_id) && text.contains(key.to_str().unwrap()),
        "the text names the PeerId and the file: {text}"
    );
}

#[test]
fn kadrtc_id_creates_the_identity_the_node_then_uses() {
    let home = fresh_home("id-first");
    let data = home.join("data");
    let id = id_json(&home, &data);
    assert_eq!(id["created"], true);
    let mut node = persistent_node("id-first-node", &data);
    assert_eq!(node.ready().0, id["peer_id"].as_str().unwrap());
}

#[test]
fn second_node_on_an_identity_in_use_fails_naming_the_holder_and_starts_once_it_is_gone() {
    let home = fresh_home("in-use");
    let data = home.join("data");
    let data_env = [("XDG_DATA_HOME", data.to_str().unwrap())];
    let mut first = persistent_node("in-use-1", &data);
    let (first_id, _) = first.ready();

    let stderr = run_to_error(
        &home,
        &[
            "node",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--stun-port",
            "0",
            "--no-mdns",
        ],
        &data_env,
    );
    assert!(
        stderr.contains(&format!(
            "is in use by another kadrtc process (pid {})",
            first.child.id()
        )) && stderr.contains("--ephemeral"),
        "{stderr}"
    );

    // The same file given with --identity, to a joiner, is refused the same way.
    let key = data.join("kadrtc").join("node.key");
    let stderr = run_to_error(
        &home,
        &[
            "join",
            "room",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--identity",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(stderr.contains("is in use by"), "{stderr}");

    // `kadrtc id` takes no lock: it reads the identity while the node runs.
    assert_eq!(id_json(&home, &data)["peer_id"], first_id.as_str());

    // --ephemeral runs beside it, as another peer.
    let mut ephemeral = Proc::node_with_env("in-use-ephemeral", None, &data_env);
    assert_ne!(ephemeral.ready().0, first_id);

    drop(first);
    let mut third = persistent_node("in-use-3", &data);
    assert_eq!(third.ready().0, first_id, "the identity is free again");
}

#[test]
fn ephemeral_and_identity_together_are_refused() {
    let home = fresh_home("conflict");
    let stderr = run_to_error(&home, &["node", "--ephemeral", "--identity", "x.key"], &[]);
    assert!(
        stderr.contains("--ephemeral") && stderr.contains("--identity"),
        "{stderr}"
    );
}

#[test]
fn joiners_with_only_a_config_file_reach_each_other_through_its_bootstrap_node() {
    let mut node = Proc::node("config-node", None);
    let (_, node_addr) = node.ready();
    let home = fresh_home("config-join");
    let config = format!(
        "# the test network\nbootstrap = [\"{node_addr}\"]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n"
    );
    // One joiner is given the file with --config, the other finds it in its config directory.
    let explicit = write_config(&home.join("explicit"), &config);
    let config_home = home.join("xdg-config");
    write_config(&config_home.join("kadrtc"), &config);

    let room = room_name("config");
    let mut a = Proc::spawn(
        "config-a",
        &[
            "join",
            &room,
            "--config",
            explicit.to_str().unwrap(),
            "--json",
        ],
    );
    let mut b = Proc::spawn_with_env(
        "config-b",
        &["join", &room, "--json"],
        &[("XDG_CONFIG_HOME", config_home.to_str().unwrap())],
    );
    let (a_id, a_addr) = a.ready();
    let (b_id, b_addr) = b.ready();
    for addr in [&a_addr, &b_addr] {
        assert!(
            addr.starts_with("/ip4/127.0.0.1/tcp/"),
            "the config's listen: {addr}"
        );
    }
    let open_a = a.wait_event("channel_open");
    let open_b = b.wait_event("channel_open");
    assert_eq!(open_a["peer_id"], b_id.as_str());
    assert_eq!(open_b["peer_id"], a_id.as_str());
}

#[test]
fn config_identity_is_the_joiners_default_and_the_command_line_replaces_it() {
    let home = fresh_home("config-identity");
    let config = write_config(&home, "identity = \"joiner.key\"\n");
    let config_arg = config.to_str().unwrap();
    let key = home.join("joiner.key");
    let join = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "join",
            "room",
            "--config",
            config_arg,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--json",
        ];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(name, &args);
        proc.ready().0
    };
    let first = join("config-identity-1", &[]);
    assert!(
        key.exists(),
        "relative to the config file: {}",
        key.display()
    );
    assert_eq!(join("config-identity-2", &[]), first);
    let other = home.join("other.key");
    assert_ne!(
        join(
            "config-identity-3",
            &["--identity", other.to_str().unwrap()]
        ),
        first
    );
}

#[test]
fn malformed_config_files_unknown_keys_and_bad_addresses_are_errors_naming_the_file() {
    let home = fresh_home("config-errors");
    let join = [
        "join",
        "room",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
    ];
    let with_config = |path: &Path| {
        let mut args = join.to_vec();
        args.extend(["--config", path.to_str().unwrap()]);
        run_to_error(&home, &args, &[])
    };

    let malformed = write_config(
        &home.join("malformed"),
        "bootstrap = [\n  \"/ip4/1.2.3.4\"\n",
    );
    let stderr = with_config(&malformed);
    assert!(
        stderr.contains(malformed.to_str().unwrap()) && stderr.contains("line"),
        "{stderr}"
    );

    // Through KADRTC_CONFIG this time.
    let unknown = write_config(&home.join("unknown"), "bootstrap = []\nbootstrapp = []\n");
    let stderr = run_to_error(
        &home,
        &join,
        &[("KADRTC_CONFIG", unknown.to_str().unwrap())],
    );
    assert!(
        stderr.contains(unknown.to_str().unwrap()) && stderr.contains("bootstrapp"),
        "{stderr}"
    );

    let bad_addr = write_config(&home.join("bad-addr"), "bootstrap = [\"127.0.0.1:4001\"]\n");
    let stderr = with_config(&bad_addr);
    assert!(
        stderr.contains(bad_addr.to_str().unwrap())
            && stderr.contains("bootstrap[0]")
            && stderr.contains("not a multiaddr"),
        "{stderr}"
    );

    let no_peer = write_config(
        &home.join("no-peer"),
        "bootstrap = [\"/ip4/127.0.0.1/tcp/4001\"]\n",
    );
    let stderr = with_config(&no_peer);
    assert!(
        stderr.contains(no_peer.to_str().unwrap()) && stderr.contains("/p2p/<PeerId>"),
        "{stderr}"
    );

    // A missing default file is fine (every other test runs without one); a missing file
    // asked for is not.
    let missing = home.join("missing.toml");
    let stderr = with_config(&missing);
    assert!(
        stderr.contains("cannot read the config file")
            && stderr.contains(missing.to_str().unwrap()),
        "{stderr}"
    );

    // The default file is checked too.
    write_config(&home.join("config").join("kadrtc"), "listen = 3\n");
    let stderr = run_to_error(&home, &["id"], &[]);
    assert!(
        stderr.contains("config.toml") && stderr.contains("listen"),
        "{stderr}"
    );
}

#[test]
fn completions_print_a_script_even_with_a_broken_config() {
    let home = fresh_home("completions");
    let broken = write_config(&home, "not toml [");
    for shell in ["bash", "zsh", "fish"] {
        let output = run(
            &home,
            &["completions", shell],
            &[("KADRTC_CONFIG", broken.to_str().unwrap())],
        );
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(
            output.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Fish names long options without their dashes.
        assert!(
            script.contains("kadrtc") && script.contains("config") && script.contains("ephemeral"),
            "{shell}: {script}"
        );
    }
}
