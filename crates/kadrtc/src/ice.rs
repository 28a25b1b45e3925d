//! The STUN and TURN servers a node's peer connections use: the ones the application gave,
//! then the ones the kadrtc nodes it is connected to serve (DESIGN.md, "Serving the
//! network's users"). Never a hard-coded public server.

use std::time::{Duration, Instant, SystemTime};

use futures::future::join_all;
use kadrtc_dht::DhtHandle;
use kadrtc_rtc::IceServer;
use tokio::sync::Mutex;

/// Connected nodes asked at once.
const MAX_NODES_ASKED: usize = 8;
/// STUN servers given to a peer connection: enough for a second opinion on the NAT mapping,
/// few enough that gathering stays short.
const MAX_STUN_SERVERS: usize = 3;
/// TURN relays given to a peer connection (each one allocation per connection).
const MAX_TURN_SERVERS: usize = 2;
/// How long the nodes' answers are used before they are asked again.
const REFRESH_AFTER: Duration = Duration::from_secs(60);
/// How soon to ask again after an attempt that found nothing (a node may connect later).
const RETRY_EMPTY_AFTER: Duration = Duration::from_secs(5);
/// Relay credentials closer than this to expiry are renewed first.
const CREDENTIAL_MARGIN: Duration = Duration::from_secs(120);
/// How long one round of asking may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The servers a node uses, learnt lazily and cached.
pub(crate) struct NetworkIce {
    /// Given by the application ([`crate::NodeBuilder::ice_server`]).
    fixed: Vec<IceServer>,
    learned: Mutex<Learned>,
}

#[derive(Default)]
struct Learned {
    servers: Vec<IceServer>,
    asked_at: Option<Instant>,
    /// The earliest expiry of the relay credentials held.
    credentials_expire: Option<SystemTime>,
}

impl NetworkIce {
    pub(crate) fn new(fixed: Vec<IceServer>) -> Self {
        Self {
            fixed,
            learned: Mutex::new(Learned::default()),
        }
    }

    /// The servers to use now; asks the connected nodes first when what is known is stale.
    pub(crate) async fn servers(&self, dht: &DhtHandle) -> Vec<IceServer> {
        let mut learned = self.learned.lock().await;
        if learned.is_stale(Instant::now(), SystemTime::now()) {
            *learned = ask_connected_nodes(dht).await;
        }
        let mut servers = self.fixed.clone();
        servers.extend(learned.servers.iter().cloned());
        servers
    }

    /// Whether the servers known now include a TURN relay.
    pub(crate) async fn relay_known(&self) -> bool {
        self.fixed.iter().any(IceServer::is_turn)
            || self
                .learned
                .lock()
                .await
                .servers
                .iter()
                .any(IceServer::is_turn)
    }
}

impl Learned {
    fn is_stale(&self, now: Instant, wall: SystemTime) -> bool {
        let Some(asked_at) = self.asked_at else {
            return true;
        };
        let age = now.saturating_duration_since(asked_at);
        let max_age = if self.servers.is_empty() {
            RETRY_EMPTY_AFTER
        } else {
            REFRESH_AFTER
        };
        let expiring = self
            .credentials_expire
            .is_some_and(|expires| expires <= wall + CREDENTIAL_MARGIN);
        age >= max_age || expiring
    }
}

/// Asks up to [`MAX_NODES_ASKED`] connected peers what they serve, for at most
/// [`ASK_TIMEOUT`]; peers that serve nothing, fail or do not answer in time are skipped.
async fn ask_connected_nodes(dht: &DhtHandle) -> Learned {
    let asked_at = Some(Instant::now());
    let peers = dht.connected_peers().await.unwrap_or_default();
    // Each request has its own deadline, so that one silent peer does not lose the
    // others' answers.
    let asks = peers
        .into_iter()
        .take(MAX_NODES_ASKED)
        .map(|peer| async move {
            tokio::time::timeout(ASK_TIMEOUT, dht.ice_servers(peer))
                .await
                .map_err(|_| {
                    kadrtc_dht::DhtError::Ice(format!("{peer}: no answer in {ASK_TIMEOUT:?}"))
                })?
        });
    let answers = join_all(asks).await;
    let mut stun = Vec::new();
    let mut turn = Vec::new();
    let mut credentials_expire: Option<SystemTime> = None;
    for answer in answers {
        let servers = match answer {
            Ok(servers) => servers,
            Err(error) => {
                tracing::debug!(%error, "no ICE servers from a connected peer");
                continue;
            }
        };
        if let Some(addr) = servers.stun {
            let server = IceServer::stun(addr);
            if stun.len() < MAX_STUN_SERVERS && !stun.contains(&server) {
                stun.push(server);
            }
        }
        if let Some((addr, credentials)) = servers.turn {
            if turn.len() < MAX_TURN_SERVERS {
                credentials_expire = Some(match credentials_expire {
                    Some(earliest) => earliest.min(credentials.expires),
                    None => credentials.expires,
                });
                turn.push(IceServer::turn(
                    addr,
                    credentials.username,
                    credentials.password,
                ));
            }
        }
    }
    tracing::debug!(
        stun = stun.len(),
        turn = turn.len(),
        "ICE servers learnt from connected nodes"
    );
    stun.extend(turn);
    Learned {
        servers: stun,
        asked_at,
        credentials_expire,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_asked_again_when_old_empty_or_expiring() {
        let now = Instant::now();
        let wall = SystemTime::now();
        assert!(Learned::default().is_stale(now, wall), "never asked");
        let fresh = Learned {
            servers: vec![IceServer::url("stun:127.0.0.1:3478")],
            asked_at: Some(now),
            credentials_expire: Some(wall + Duration::from_secs(600)),
        };
        assert!(!fresh.is_stale(now, wall));
        assert!(fresh.is_stale(now + REFRESH_AFTER, wall), "a minute old");
        assert!(
            fresh.is_stale(now, wall + Duration::from_secs(500)),
            "credentials about to expire"
        );
        let empty = Learned {
            asked_at: Some(now),
            ..Learned::default()
        };
        assert!(!empty.is_stale(now, wall));
        assert!(
            empty.is_stale(now + RETRY_EMPTY_AFTER, wall),
            "found nothing"
        );
    }
}
