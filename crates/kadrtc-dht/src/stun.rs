//! The STUN responder every node runs: it answers Binding requests (RFC 8489 §6.3.1) with the
//! source transport address it saw, so that peers behind NATs learn their server-reflexive
//! candidates from the network itself rather than from a public STUN server.
//!
//! Stateless and bounded: one UDP socket, one datagram buffer, and a response of at most 52
//! bytes (header, XOR-MAPPED-ADDRESS, FINGERPRINT) to a request of at least 20, so a spoofed
//! request is reflected with little amplification; anything that is not a well-formed Binding
//! request is dropped.

use std::io;
use std::net::SocketAddr;

use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::message::{Message, Setter, BINDING_REQUEST, BINDING_SUCCESS};
use rtc_stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The default STUN port (RFC 8489 §18.6: "stun" on UDP 3478).
pub const DEFAULT_STUN_PORT: u16 = 3478;

/// Largest datagram read; a Binding request is 20 bytes plus a few attributes.
const MAX_DATAGRAM: usize = 1500;

/// A running STUN responder; stops when dropped.
#[derive(Debug)]
pub struct StunServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl StunServer {
    /// Binds `addr` (port 0 picks one) and answers Binding requests until dropped.
    ///
    /// # Errors
    ///
    /// The socket error when `addr` cannot be bound (for instance in use).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        let local_addr = socket.local_addr()?;
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let (len, source) = match socket.recv_from(&mut buf).await {
                    Ok(received) => received,
                    Err(error) => {
                        // ICMP errors of earlier sends surface here on some systems; a short
                        // pause keeps a persistent error from spinning the loop.
                        tracing::debug!(%error, "STUN socket receive");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if let Some(response) = binding_response(&buf[..len], source) {
                    if let Err(error) = socket.send_to(&response, source).await {
                        tracing::debug!(%source, %error, "STUN response not sent");
                    }
                }
            }
        });
        Ok(Self { local_addr, task })
    }

    /// The address the responder listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for StunServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Binding success response (RFC 8489 §6.3.1.1) to `request` from `source`: its
/// transaction id, `XOR-MAPPED-ADDRESS` = `source`, and a `FINGERPRINT`. `None` for anything
/// that is not a Binding request.
pub fn binding_response(request: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    if !rtc_stun::message::is_stun_message(request) {
        return None;
    }
    let mut message = Message::new();
    message.unmarshal_binary(request).ok()?;
    if message.typ != BINDING_REQUEST {
        return None;
    }
    let mut response = Message::new();
    let setters: [Box<dyn Setter>; 4] = [
        Box::new(message.transaction_id),
        Box::new(BINDING_SUCCESS),
        Box::new(XorMappedAddress {
            ip: source.ip(),
            port: source.port(),
        }),
        Box::new(FINGERPRINT),
    ];
    response.build(&setters).ok()?;
    Some(response.raw)
}

#[cfg(test)]
mod tests {
    use rtc_stun::message::{Getter as _, TransactionId};

    use super::*;

    fn binding_request() -> Message {
        let mut request = Message::new();
        let setters: [Box<dyn Setter>; 2] =
            [Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)];
        request.build(&setters).unwrap();
        request
    }

    #[test]
    fn binding_request_is_answered_with_the_source_address() {
        let request = binding_request();
        let source: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let bytes = binding_response(&request.raw, source).expect("a response");
        let mut response = Message::new();
        response.unmarshal_binary(&bytes).unwrap();
        assert_eq!(response.typ, BINDING_SUCCESS);
        assert_eq!(response.transaction_id, request.transaction_id);
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&response).unwrap();
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), source);
    }

    #[test]
    fn anything_but_a_binding_request_gets_no_answer() {
        let source: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut success = Message::new();
        let setters: [Box<dyn Setter>; 2] =
            [Box::new(TransactionId::new()), Box::new(BINDING_SUCCESS)];
        success.build(&setters).unwrap();
        for input in [&b""[..], b"hello", &[0u8; 20], &success.raw] {
            assert_eq!(binding_response(input, source), None);
        }
    }
}
