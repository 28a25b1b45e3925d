//! Identity files: a libp2p keypair in its protobuf encoding, created when missing, and the
//! lock (`FILE.lock`, an advisory `flock`) that keeps two processes from being the same peer.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use kadrtc::Identity;

/// Name of the node's identity file in the data directory.
const DEFAULT_FILE_NAME: &str = "node.key";

/// Locks taken by [`lock_for_process`]: never dropped, so each is released by the kernel when
/// the process exits (however it exits).
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// An identity read from or written to a file.
pub struct Loaded {
    pub identity: Identity,
    /// Whether the file did not exist and was written now.
    pub created: bool,
}

/// The node's identity file when neither `--identity` nor the config file names one:
/// `node.key` in the platform's data directory (`$XDG_DATA_HOME/kadrtc`, by default
/// `~/.local/share/kadrtc`, on Linux). Creates that directory (mode 0700) when missing.
pub fn default_path() -> anyhow::Result<PathBuf> {
    let dirs = crate::config::project_dirs().context(
        "cannot find a home directory for the default identity file; give --identity FILE or --ephemeral",
    )?;
    let dir = dirs.data_dir();
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    Ok(dir.join(DEFAULT_FILE_NAME))
}

/// Locks the identity in `path` for the rest of this process and loads it (creating it when
/// missing). Fails, naming the process, when another `kadrtc` process holds the lock: two
/// processes with one identity would be one PeerId in two places.
pub fn lock_and_load(path: &Path) -> anyhow::Result<Identity> {
    lock_for_process(path)?;
    Ok(load_or_create(path)?.identity)
}

/// Reads the identity in `path`, or creates the file with a fresh ed25519 identity (mode 0600)
/// when it does not exist. Takes no lock: another process may be using the identity.
pub fn load_or_create(path: &Path) -> anyhow::Result<Loaded> {
    match read(path)? {
        Some(identity) => Ok(Loaded {
            identity,
            created: false,
        }),
        None => {
            let identity = Identity::generate();
            if create(path, &identity.to_bytes())
                .with_context(|| format!("cannot create identity file {}", path.display()))?
            {
                tracing::info!(path = %path.display(), "created a new identity");
                return Ok(Loaded {
                    identity,
                    created: true,
                });
            }
            // Another process created it first: use theirs.
            let identity = read(path)?.with_context(|| {
                format!(
                    "identity file {} vanished while it was created",
                    path.display()
                )
            })?;
            Ok(Loaded {
                identity,
                created: false,
            })
        }
    }
}

/// The lock file of the identity in `path`: the key's real path (symbolic links resolved, so
/// that two names of one key share one lock) with `.lock` appended.
fn lock_path(path: &Path) -> PathBuf {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut name = real.into_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes an exclusive `flock` on `FILE.lock` and writes this process's id into it, for the
/// message another process gets; or, where no lock file can be made next to an existing key
/// (a read-only directory), on the key file itself. A lock file left by a killed process
/// does not count: the kernel released its lock.
fn lock_for_process(path: &Path) -> anyhow::Result<()> {
    let lock_path = lock_path(path);
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path);
    let (mut file, locked_path) = match opened {
        Ok(file) => (file, lock_path.as_path()),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) && path.exists() =>
        {
            tracing::debug!(%error, path = %lock_path.display(), "no lock file; locking the key file");
            let file = File::open(path)
                .with_context(|| format!("cannot read identity file {}", path.display()))?;
            (file, path)
        }
        Err(error) => {
            return Err(error).with_context(|| {
                format!("cannot open the identity lock file {}", lock_path.display())
            })
        }
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            if locked_path == lock_path {
                let _ = file.read_to_string(&mut pid);
            }
            let holder = match pid.trim() {
                "" => "another kadrtc process".to_string(),
                pid => format!("another kadrtc process (pid {pid})"),
            };
            anyhow::bail!(
                "identity {} is in use by {holder}; give another --identity FILE, or none (join, send, recv) or --ephemeral (node) for a fresh identity",
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("cannot lock {}", locked_path.display()));
        }
    }
    if locked_path == lock_path {
        // The pid is only for the message above; failing to write it is not worth failing
        // for.
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()));
        if let Err(error) = written {
            tracing::debug!(%error, path = %lock_path.display(), "cannot write the pid into the lock file");
        }
    }
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(file);
    Ok(())
}

/// The identity in `path`, or `None` when there is no such file.
fn read(path: &Path) -> anyhow::Result<Option<Identity>> {
    match std::fs::read(path) {
        Ok(bytes) => Identity::from_bytes(&bytes).map(Some).with_context(|| {
            format!(
                "identity file {} is not a libp2p key (protobuf encoding); remove it to create a new identity",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => {
            Err(error).with_context(|| format!("cannot read identity file {}", path.display()))
        }
    }
}

/// Writes `bytes` to a new file at `path` (mode 0600) so that no reader ever sees it half
/// written: into a temporary file first, then hard-linked into place, which fails when `path`
/// exists. Returns false when another process created `path` first.
fn create(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".new.{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let written = options
        .open(&temp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()));
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) if error.kind() == std::io::ErrorKind::Unsupported => {
            // A file system without hard links: create in place.
            options.create_new(true);
            match options.open(path) {
                Ok(mut file) => file.write_all(bytes).map(|()| true),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kadrtc-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_created_identity_is_read_back_the_same() {
        let path = temp_dir("identity-roundtrip").join("id.key");
        let first = load_or_create(&path).unwrap();
        assert!(first.created);
        let second = load_or_create(&path).unwrap();
        assert!(!second.created);
        assert_eq!(first.identity.peer_id(), second.identity.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_locked_identity_cannot_be_locked_again_and_names_the_holder() {
        let path = temp_dir("identity-lock").join("id.key");
        lock_and_load(&path).unwrap();
        // flock conflicts between two open files even within one process.
        let error = format!("{:#}", lock_and_load(&path).unwrap_err());
        assert!(error.contains("is in use by"), "{error}");
        assert!(
            error.contains(&format!("pid {}", std::process::id())),
            "{error}"
        );
    }

    #[test]
    fn a_stale_lock_file_does_not_block() {
        let path = temp_dir("identity-stale").join("id.key");
        std::fs::write(lock_path(&path), "999999999").unwrap();
        lock_and_load(&path).unwrap();
    }
}
