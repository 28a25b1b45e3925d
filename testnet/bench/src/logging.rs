//! Logging of the bench binaries (`kadrtc-bench`, `kadrtc-scale`), on stderr.

use std::io::IsTerminal as _;

/// Log filter when `RUST_LOG` is unset: warnings, but not the routine ones of webrtc-rs and
/// gossipsub (peers joining and leaving rooms every run).
const DEFAULT_LOG_FILTER: &str =
    "warn,rtc=error,rtc_dtls=error,rtc_ice=error,rtc_sctp=error,webrtc=error,libp2p_gossipsub=error";

/// Logs to stderr, filtered by `RUST_LOG` or else [`DEFAULT_LOG_FILTER`]; colours only on a
/// terminal.
pub fn init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
}
