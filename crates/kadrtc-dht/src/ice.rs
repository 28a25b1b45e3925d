//! `/kadrtc/ice/1.0.0`: how a peer learns the STUN and TURN servers of the nodes it is
//! connected to. A request-response protocol (JSON bodies, at most [`MAX_ICE_MESSAGE_SIZE`]
//! bytes) over the libp2p connection, which noise has authenticated: the node knows which
//! `PeerId` it hands relay credentials to, and the peer knows which node answered.
//!
//! The answer carries ports, not addresses: the asking peer pairs them with the IP it reached
//! the node on, which is the one address it knows works from where it sits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::turn::{TurnCredentials, TurnRelay};

/// The protocol name (DESIGN.md: other libp2p protocols are `/kadrtc/<name>/<version>`).
pub const ICE_PROTOCOL: &str = "/kadrtc/ice/1.0.0";
/// Largest request or response, in bytes; a real one is under 300.
pub const MAX_ICE_MESSAGE_SIZE: u64 = 4096;
/// How long a peer waits for a node's answer.
pub const ICE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest username or password accepted in an answer, in bytes.
const MAX_CREDENTIAL_LEN: usize = 256;
/// Credentials that claim to live longer than this are refused as malformed (twice
/// [`crate::TURN_CREDENTIAL_LIFETIME`], for clock skew).
const MAX_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(2 * 24 * 60 * 60);

/// What this node serves to the peers connected to it.
#[derive(Debug, Clone, Default)]
pub struct IceService {
    /// The UDP port of this node's STUN responder, if it runs one.
    pub stun_port: Option<u16>,
    /// This node's TURN relay, if it volunteers one.
    pub relay: Option<Arc<TurnRelay>>,
}

/// The STUN and TURN servers a connected node offers, as reached from this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIceServers {
    /// Its STUN responder.
    pub stun: Option<SocketAddr>,
    /// Its TURN relay, with credentials issued to this peer.
    pub turn: Option<(SocketAddr, TurnCredentials)>,
}

/// A request: nothing to say yet beyond "what do you serve?".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct IceRequest {}

/// An answer, as sent on the wire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct IceResponse {
    stun_port: Option<u16>,
    turn: Option<TurnOffer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TurnOffer {
    port: u16,
    username: String,
    password: String,
    /// Unix seconds.
    expires: u64,
}

/// Why a node's answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceAnswerError {
    /// A port of 0.
    #[error("port 0")]
    ZeroPort,
    /// A username or password over 256 bytes.
    #[error("credential over {MAX_CREDENTIAL_LEN} bytes")]
    CredentialTooLong,
    /// Credentials that expired already or claim to live over two days.
    #[error("credential expiry out of range")]
    Expiry,
}

impl IceService {
    /// The answer to a request from a connected peer: fresh relay credentials each time.
    pub(crate) fn answer(&self) -> IceResponse {
        let turn = self.relay.as_ref().and_then(|relay| {
            let credentials = relay
                .credentials()
                .inspect_err(|error| tracing::warn!(%error, "cannot issue TURN credentials"))
                .ok()?;
            Some(TurnOffer {
                port: relay.local_addr().port(),
                username: credentials.username,
                password: credentials.password,
                expires: unix_seconds(credentials.expires),
            })
        });
        IceResponse {
            stun_port: self.stun_port,
            turn,
        }
    }
}

impl IceResponse {
    /// The servers of a node reached at `ip`, after checking the answer's fields.
    pub(crate) fn servers_at(
        self,
        ip: IpAddr,
        now: SystemTime,
    ) -> Result<NodeIceServers, IceAnswerError> {
        let stun = match self.stun_port {
            Some(0) => return Err(IceAnswerError::ZeroPort),
            Some(port) => Some(SocketAddr::new(ip, port)),
            None => None,
        };
        let turn = match self.turn {
            None => None,
            Some(offer) => {
                if offer.port == 0 {
                    return Err(IceAnswerError::ZeroPort);
                }
                if offer.username.len() > MAX_CREDENTIAL_LEN
                    || offer.password.len() > MAX_CREDENTIAL_LEN
                {
                    return Err(IceAnswerError::CredentialTooLong);
                }
                // Checked arithmetic: the expiry comes from the network.
                let expires = UNIX_EPOCH
                    .checked_add(Duration::from_secs(offer.expires))
                    .ok_or(IceAnswerError::Expiry)?;
                let latest = now
                    .checked_add(MAX_CREDENTIAL_LIFETIME)
                    .ok_or(IceAnswerError::Expiry)?;
                if expires <= now || expires > latest {
                    return Err(IceAnswerError::Expiry);
                }
                let credentials = TurnCredentials {
                    username: offer.username,
                    password: offer.password,
                    expires,
                };
                Some((SocketAddr::new(ip, offer.port), credentials))
            }
        };
        Ok(NodeIceServers { stun, turn })
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn offer(port: u16, expires: SystemTime) -> IceResponse {
        IceResponse {
            stun_port: Some(3478),
            turn: Some(TurnOffer {
                port,
                username: "1700000000".into(),
                password: "secret".into(),
                expires: unix_seconds(expires),
            }),
        }
    }

    #[test]
    fn answers_are_paired_with_the_ip_the_node_was_reached_on() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10));
        let now = SystemTime::now();
        let servers = offer(3479, now + Duration::from_secs(600))
            .servers_at(ip, now)
            .unwrap();
        assert_eq!(servers.stun, Some(SocketAddr::new(ip, 3478)));
        let (addr, credentials) = servers.turn.unwrap();
        assert_eq!(addr, SocketAddr::new(ip, 3479));
        assert_eq!(credentials.password, "secret");
    }

    #[test]
    fn malformed_answers_are_refused() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let now = SystemTime::now();
        let soon = now + Duration::from_secs(600);
        assert_eq!(
            offer(0, soon).servers_at(ip, now),
            Err(IceAnswerError::ZeroPort)
        );
        assert_eq!(
            offer(3479, now - Duration::from_secs(1)).servers_at(ip, now),
            Err(IceAnswerError::Expiry)
        );
        assert_eq!(
            offer(3479, now + Duration::from_secs(3 * 24 * 3600)).servers_at(ip, now),
            Err(IceAnswerError::Expiry)
        );
        let mut far = offer(3479, soon);
        if let Some(turn) = far.turn.as_mut() {
            turn.expires = u64::MAX;
        }
        assert_eq!(
            far.servers_at(ip, now),
            Err(IceAnswerError::Expiry),
            "an expiry past the end of time is an error, not a panic"
        );
        let mut long = offer(3479, soon);
        if let Some(turn) = long.turn.as_mut() {
            turn.password = "x".repeat(MAX_CREDENTIAL_LEN + 1);
        }
        assert_eq!(
            long.servers_at(ip, now),
            Err(IceAnswerError::CredentialTooLong)
        );
        let zero_stun = IceResponse {
            stun_port: Some(0),
            turn: None,
        };
        assert_eq!(zero_stun.servers_at(ip, now), Err(IceAnswerError::ZeroPort));
    }
}
