//! The `--identity FILE`: a libp2p keypair in its protobuf encoding, created when missing.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use kadrtc::Identity;

/// Reads the identity in `path`, or creates the file with a fresh ed25519 identity (mode 0600)
/// when it does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<Identity> {
    match std::fs::read(path) {
        Ok(bytes) => Identity::from_bytes(&bytes).with_context(|| {
            format!(
                "identity file {} is not a libp2p key (protobuf encoding); remove it to create a new identity",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let identity = Identity::generate();
            write_private(path, &identity.to_bytes())
                .with_context(|| format!("cannot create identity file {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new identity");
            Ok(identity)
        }
        Err(error) => Err(error)
            .with_context(|| format!("cannot read identity file {}", path.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}
