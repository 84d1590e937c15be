//! One UDP or DTLS session: RFC 7252 messages in, answers and pings out.

use std::collections::VecDeque;
use std::time::Instant;

use coap_lite::{MessageClass, MessageType, Packet};

use crate::config::KeepaliveConfig;
use crate::error::NackReason;
use crate::handler::PeerPing;
use crate::keepalive::{Keepalive, PingStyle};
use crate::protocol::ProtocolEvent;
use crate::rng::Rng;
use crate::wire::udp::{self, Datagram};

/// The sans-IO protocol state of one datagram session.
#[derive(Debug)]
pub struct DatagramSession {
    keepalive: Keepalive,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<ProtocolEvent>,
}

impl DatagramSession {
    /// A session that starts at `now` (datagram sessions are established at once).
    pub fn new(config: KeepaliveConfig, rng: Rng, now: Instant) -> Self {
        DatagramSession {
            keepalive: Keepalive::new(PingStyle::Datagram, config, rng, now),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The keepalive machine (read-only).
    pub fn keepalive(&self) -> &Keepalive {
        &self.keepalive
    }

    /// The keepalive machine, for commands (interval, `mark_active`, `ping_now`).
    pub fn keepalive_mut(&mut self) -> &mut Keepalive {
        &mut self.keepalive
    }

    /// One datagram from the peer.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        if self.keepalive.is_finished() {
            return;
        }
        match udp::classify(bytes) {
            Err(error) => {
                if let Some(rst) = error.rejection() {
                    // A well-formed header from the peer still shows it is there.
                    self.keepalive.handle_activity(now);
                    self.transmits.push_back(rst.to_vec());
                }
                self.events
                    .push_back(ProtocolEvent::Rejected(format!("datagram: {error}")));
            }
            Ok(Datagram::Ping { message_id }) | Ok(Datagram::EmptyNon { message_id }) => {
                self.keepalive.note_peer_ping(now);
                self.events.push_back(ProtocolEvent::PeerPing {
                    ping: PeerPing::Datagram { message_id },
                    answer: udp::reset(message_id).to_vec(),
                });
            }
            Ok(Datagram::Reset { message_id }) | Ok(Datagram::EmptyAck { message_id }) => {
                // Never answered (RFC 7252 §4.2 / §4.3).
                self.keepalive.handle_datagram_answer(now, message_id);
            }
            Ok(Datagram::Message(packet)) => {
                self.keepalive.handle_activity(now);
                self.handle_message(packet);
            }
        }
        self.pump();
    }

    fn handle_message(&mut self, packet: Packet) {
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        let message_id = packet.header.message_id;
        match packet.header.code {
            MessageClass::Request(_) => match packet.header.get_type() {
                MessageType::Confirmable | MessageType::NonConfirmable => {
                    self.events.push_back(ProtocolEvent::Request(packet));
                }
                // A request in an ACK or RST is malformed; ignore it.
                _ => {}
            },
            MessageClass::Response(_) => {
                // We have no request outstanding that it could answer: reject a Confirmable
                // one with RST (RFC 7252 §4.2), drop the rest.
                if confirmable {
                    self.transmits.push_back(udp::reset(message_id).to_vec());
                }
                self.events.push_back(ProtocolEvent::Rejected(
                    "response matches no request".into(),
                ));
            }
            _ => {
                if confirmable {
                    self.transmits.push_back(udp::reset(message_id).to_vec());
                }
                self.events.push_back(ProtocolEvent::Rejected(format!(
                    "unexpected code {} over UDP",
                    packet.header.code
                )));
            }
        }
    }

    /// Answers `request` with `response`: piggybacked on the ACK for a Confirmable request, as a
    /// Non-confirmable message with a fresh Message ID for a Non-confirmable one.
    pub fn respond(&mut self, request: &Packet, mut response: Packet) {
        if self.keepalive.is_finished() {
            return;
        }
        if request.header.get_type() == MessageType::Confirmable {
            response.header.set_type(MessageType::Acknowledgement);
            response.header.message_id = request.header.message_id;
        } else {
            response.header.set_type(MessageType::NonConfirmable);
            response.header.message_id = self.keepalive.allocate_message_id();
        }
        response.set_token(request.get_token().to_vec());
        match response.to_bytes() {
            Ok(bytes) => self.transmits.push_back(bytes),
            Err(error) => self.events.push_back(ProtocolEvent::Rejected(format!(
                "response not encodable: {error:?}"
            ))),
        }
    }

    /// Advances timers: due pings, retransmissions, failure.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.keepalive.handle_timeout(now);
        self.pump();
    }

    /// Sends a ping now if none is outstanding.
    pub fn ping_now(&mut self, now: Instant) {
        self.keepalive.ping_now(now);
        self.pump();
    }

    /// Fails the session (send error, handshake failure…).
    pub fn fail(&mut self, reason: NackReason) {
        self.keepalive.fail(reason);
        self.pump();
    }

    /// Ends the session gracefully.
    pub fn close(&mut self) {
        if !self.keepalive.is_finished() {
            self.keepalive.close();
            self.transmits.clear();
            self.events.push_back(ProtocolEvent::Closed);
        }
    }

    /// True once the session failed or was closed.
    pub fn is_finished(&self) -> bool {
        self.keepalive.is_finished()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ProtocolEvent> {
        self.events.pop_front()
    }

    /// When [`DatagramSession::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.keepalive.poll_timeout()
    }

    fn pump(&mut self) {
        while let Some(ping) = self.keepalive.poll_transmit() {
            self.transmits.push_back(ping.encode());
        }
        while let Some(event) = self.keepalive.poll_event() {
            self.events.push_back(ProtocolEvent::from_keepalive(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn session() -> (DatagramSession, Instant) {
        let t0 = Instant::now();
        let config = KeepaliveConfig::default().with_interval_secs(10);
        (DatagramSession::new(config, Rng::seeded(5), t0), t0)
    }

    #[test]
    fn empty_con_gets_rst_with_its_message_id() {
        let (mut s, t0) = session();
        s.handle_datagram(t0, &[0x40, 0x00, 0x12, 0x34]);
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::PeerPing {
                ping: PeerPing::Datagram { message_id: 0x1234 },
                answer: vec![0x70, 0x00, 0x12, 0x34],
            })
        );
        assert_eq!(s.poll_transmit(), None, "the driver sends the answer");
        assert_eq!(s.keepalive().stats().pings_received, 1);
    }

    #[test]
    fn ack_and_rst_are_never_answered() {
        let (mut s, t0) = session();
        s.handle_datagram(t0, &[0x60, 0x00, 0x00, 0x01]);
        s.handle_datagram(t0, &[0x70, 0x00, 0x00, 0x02]);
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.poll_event(), None);
    }

    #[test]
    fn empty_con_with_a_token_is_rejected_with_rst() {
        let (mut s, t0) = session();
        s.handle_datagram(t0, &[0x41, 0x00, 0xab, 0xcd, 0x99]);
        assert_eq!(s.poll_transmit(), Some(vec![0x70, 0x00, 0xab, 0xcd]));
    }

    #[test]
    fn confirmable_get_is_handed_up_and_answered_piggybacked() {
        let (mut s, t0) = session();
        // CON GET, MID 0x0102, token 0xaa, Uri-Path "x"
        let req = [0x41, 0x01, 0x01, 0x02, 0xaa, 0xb1, b'x'];
        s.handle_datagram(t0, &req);
        let Some(ProtocolEvent::Request(packet)) = s.poll_event() else {
            panic!("no request")
        };
        let mut response = Packet::new();
        response.header.code = MessageClass::Response(coap_lite::ResponseType::NotFound);
        s.respond(&packet, response);
        // ACK 4.04, same MID, same token
        assert_eq!(s.poll_transmit(), Some(vec![0x61, 0x84, 0x01, 0x02, 0xaa]));
    }

    #[test]
    fn our_ping_answered_by_rst_yields_pong() {
        let (mut s, t0) = session();
        s.handle_timeout(t0 + Duration::from_secs(10));
        let ping = s.poll_transmit().unwrap();
        assert_eq!(&ping[..2], &[0x40, 0x00]);
        let rst = [0x70, 0x00, ping[2], ping[3]];
        s.handle_datagram(t0 + Duration::from_millis(10_030), &rst);
        assert_eq!(
            s.poll_event(),
            Some(ProtocolEvent::Pong {
                rtt: Duration::from_millis(30)
            })
        );
    }
}
