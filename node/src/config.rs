//! The config file (defaults for `--bootstrap`, `--listen` and `--identity`), `kadrtc id` and
//! `kadrtc completions`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _};
use directories::{BaseDirs, ProjectDirs};
use kadrtc::Multiaddr;
use serde::Deserialize;

use crate::{identity, Cli, Command, CommonArgs, CompletionsArgs, IdArgs};

/// Name of the config file in the platform's config directory.
const FILE_NAME: &str = "config.toml";

/// Environment variable naming the config file, like `--config`.
const ENV_VAR: &str = "KADRTC_CONFIG";

/// `kadrtc -h`: where more is said.
pub const SHORT_HELP: &str =
    "Logs go to stderr; set RUST_LOG (for example RUST_LOG=debug) for more.\n\
     Defaults can be kept in a config file: see `kadrtc --help`.";

/// `kadrtc --help`: logs, identities and the config file format.
pub const LONG_HELP: &str = "\
Logs go to stderr; set RUST_LOG (for example RUST_LOG=debug) for more.

Identities: `kadrtc node` keeps its identity in node.key in the data directory
($XDG_DATA_HOME/kadrtc, by default ~/.local/share/kadrtc, on Linux) unless given
--identity FILE or --ephemeral; `kadrtc id` prints its PeerId. `join`, `send` and `recv`
use a fresh identity for each run unless given --identity FILE (or `identity` below). One
identity file can be used by one process at a time.

Config file: --config FILE, or the KADRTC_CONFIG variable, or by default config.toml in the
config directory ($XDG_CONFIG_HOME/kadrtc, by default ~/.config/kadrtc, on Linux; a missing
default file is fine). TOML, every key optional, no other keys allowed:

    # used when the command line gives no --bootstrap
    bootstrap = [\"/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW...\"]
    # used when the command line gives no --listen
    listen = [\"/ip4/0.0.0.0/tcp/4001\"]
    # the identity of join, send and recv when no --identity is given
    identity = \"~/.local/share/kadrtc/me.key\"
    # the identity of `kadrtc node` (and `kadrtc id`) instead of the data directory's
    node_identity = \"/var/lib/kadrtc/node.key\"

Values on the command line replace the file's. Relative paths are relative to the config
file's directory; ~/ is the home directory. `node`, `join`, `send`, `recv` and `id` read the
file; `offer`, `answer` and `completions` do not.";

/// The config file's values, checked; empty when there is no file.
#[derive(Debug, Default)]
pub struct Config {
    /// Bootstrap nodes, each ending in `/p2p/<PeerId>`.
    pub bootstrap: Vec<Multiaddr>,
    pub listen: Vec<Multiaddr>,
    /// Identity file of `join`, `send` and `recv`.
    pub identity: Option<PathBuf>,
    /// Identity file of `kadrtc node` and `kadrtc id`.
    pub node_identity: Option<PathBuf>,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    bootstrap: Vec<String>,
    #[serde(default)]
    listen: Vec<String>,
    identity: Option<PathBuf>,
    node_identity: Option<PathBuf>,
}

impl Config {
    /// Reads `explicit` (`--config`, else `KADRTC_CONFIG`), which must exist, or else the default
    /// file, which may be missing.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let (path, required) = match explicit {
            Some(path) => (path.to_path_buf(), true),
            None => match project_dirs() {
                Some(dirs) => (dirs.config_dir().join(FILE_NAME), false),
                None => return Ok(Self::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot read the config file {}", path.display()))
            }
        };
        Self::parse(&path, &text)
    }

    /// Parses the text of the config file at `path` (named in every error).
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<Self> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| {
            anyhow::anyhow!(
                "invalid config file {}: {}",
                path.display(),
                error.to_string().trim_end()
            )
        })?;
        let bootstrap = multiaddrs(path, "bootstrap", &file.bootstrap)?;
        for (i, addr) in bootstrap.iter().enumerate() {
            anyhow::ensure!(
                addr.iter().last().is_some_and(|p| p.tag() == "p2p"),
                "config file {}: bootstrap[{i}] {:?} does not end in /p2p/<PeerId>",
                path.display(),
                addr.to_string()
            );
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        Ok(Self {
            bootstrap,
            listen: multiaddrs(path, "listen", &file.listen)?,
            identity: file
                .identity
                .map(|p| resolve(path, dir, "identity", &p))
                .transpose()?,
            node_identity: file
                .node_identity
                .map(|p| resolve(path, dir, "node_identity", &p))
                .transpose()?,
        })
    }
}

/// The platform's directories for kadrtc, or `None` without a home directory.
pub fn project_dirs() -> Option<ProjectDirs> {
    ProjectDirs::from("", "", "kadrtc")
}

/// Reads the config file for the commands that use it and folds its values into their
/// arguments: bootstrap and listen addresses where the command line gave none, and the
/// identity file. `matches` are the parsed command line `cli` came from.
pub fn apply(cli: &mut Cli, matches: &ArgMatches) -> anyhow::Result<Config> {
    if matches!(
        cli.command,
        Command::Offer(_) | Command::Answer(_) | Command::Completions(_)
    ) {
        return Ok(Config::default());
    }
    // An empty KADRTC_CONFIG counts as unset.
    let explicit = cli.config.clone().or_else(|| {
        std::env::var_os(ENV_VAR)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    });
    let config = Config::load(explicit.as_deref())?;
    let sub = matches.subcommand().map(|(_, sub)| sub);
    match &mut cli.command {
        Command::Node(args) => {
            fold(&mut args.common, sub, &config);
            if !args.ephemeral && args.common.identity.is_none() {
                args.common.identity = Some(match &config.node_identity {
                    Some(path) => path.clone(),
                    None => identity::default_path()?,
                });
            }
        }
        Command::Join(args) => fold_room(&mut args.common, sub, &config),
        Command::Send(args) => fold_room(&mut args.common, sub, &config),
        Command::Recv(args) => fold_room(&mut args.common, sub, &config),
        Command::Id(_) | Command::Offer(_) | Command::Answer(_) | Command::Completions(_) => {}
    }
    Ok(config)
}

/// `kadrtc id`: the PeerId of an identity file, by default the node's (created if missing).
/// Takes no lock, so it also works while the node runs.
pub fn run_id(args: IdArgs, config: &Config) -> anyhow::Result<()> {
    let path = match args.identity.or_else(|| config.node_identity.clone()) {
        Some(path) => path,
        None => identity::default_path()?,
    };
    let loaded = identity::load_or_create(&path)?;
    let path = std::path::absolute(&path).unwrap_or(path);
    let peer_id = loaded.identity.peer_id().to_string();
    let text = if args.json {
        serde_json::json!({
            "peer_id": peer_id,
            "identity": path.display().to_string(),
            "created": loaded.created,
        })
        .to_string()
    } else {
        let created = if loaded.created { " (created now)" } else { "" };
        format!(
            "peer id {peer_id}\nidentity file {}{created}",
            path.display()
        )
    };
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (the reader went away) is not worth an error.
    let _ = writeln!(stdout, "{text}");
    Ok(())
}

/// `kadrtc completions SHELL`: the completion script on stdout.
pub fn run_completions(args: CompletionsArgs) {
    let mut command = Cli::command();
    // Into a buffer first: clap_complete panics when it cannot write (`… | head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "kadrtc", &mut script);
    // A closed stdout (the reader went away) is not worth an error.
    let _ = std::io::stdout().lock().write_all(&script);
}

/// Bootstrap and listen addresses from the config where the command line gave none.
fn fold(common: &mut CommonArgs, sub: Option<&ArgMatches>, config: &Config) {
    if common.bootstrap.is_empty() {
        common.bootstrap = config.bootstrap.clone();
    }
    let listen_given =
        sub.and_then(|sub| sub.value_source("listen")) == Some(ValueSource::CommandLine);
    if !listen_given && !config.listen.is_empty() {
        common.listen = config.listen.clone();
    }
}

/// [`fold`], plus the config's identity for `join`, `send` and `recv`.
fn fold_room(common: &mut CommonArgs, sub: Option<&ArgMatches>, config: &Config) {
    fold(common, sub, config);
    if common.identity.is_none() {
        common.identity = config.identity.clone();
    }
}

fn multiaddrs(path: &Path, key: &str, values: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    values
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse().map_err(|error| {
                anyhow::anyhow!(
                    "config file {}: {key}[{i}] {text:?} is not a multiaddr ({error}); expected for example /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...",
                    path.display()
                )
            })
        })
        .collect()
}

/// A path from the config file: `~/` is the home directory, relative paths are relative to
/// the config file's directory `dir`.
fn resolve(path: &Path, dir: &Path, key: &str, value: &Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        !value.as_os_str().is_empty(),
        "config file {}: {key} is empty",
        path.display()
    );
    if let Ok(rest) = value.strip_prefix("~") {
        let home = BaseDirs::new().with_context(|| {
            format!(
                "config file {}: {key} starts with ~ but there is no home directory",
                path.display()
            )
        })?;
        return Ok(home.home_dir().join(rest));
    }
    Ok(dir.join(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(Path::new("/etc/kadrtc/config.toml"), text)
    }

    #[test]
    fn every_key_is_read_and_paths_are_relative_to_the_file() {
        let config = parse(
            r#"
            bootstrap = ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
            listen = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"]
            identity = "me.key"
            node_identity = "/var/lib/kadrtc/node.key"
            "#,
        )
        .unwrap();
        assert_eq!(config.bootstrap.len(), 1);
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.identity.unwrap(), Path::new("/etc/kadrtc/me.key"));
        assert_eq!(
            config.node_identity.unwrap(),
            Path::new("/var/lib/kadrtc/node.key")
        );
    }

    #[test]
    fn an_empty_file_is_an_empty_config() {
        let config = parse("").unwrap();
        assert!(config.bootstrap.is_empty() && config.listen.is_empty());
        assert!(config.identity.is_none() && config.node_identity.is_none());
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let error = |text: &str| format!("{:#}", parse(text).unwrap_err());
        let unknown = error("bootstrapp = []");
        assert!(
            unknown.contains("/etc/kadrtc/config.toml") && unknown.contains("bootstrapp"),
            "{unknown}"
        );
        let malformed = error("bootstrap = [\n\"/ip4/1.2.3.4/tcp/1\"");
        assert!(
            malformed.contains("/etc/kadrtc/config.toml") && malformed.contains("line"),
            "{malformed}"
        );
        let bad_addr = error(r#"listen = ["/ip4/0.0.0.0/tcp/1", "127.0.0.1:4001"]"#);
        assert!(
            bad_addr.contains("/etc/kadrtc/config.toml") && bad_addr.contains("listen[1]"),
            "{bad_addr}"
        );
        let no_peer = error(r#"bootstrap = ["/ip4/127.0.0.1/tcp/4001"]"#);
        assert!(
            no_peer.contains("bootstrap[0]") && no_peer.contains("/p2p/<PeerId>"),
            "{no_peer}"
        );
        let wrong_type = error(r#"identity = 3"#);
        assert!(wrong_type.contains("identity"), "{wrong_type}");
    }
}
