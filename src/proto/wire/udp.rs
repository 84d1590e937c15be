//! RFC 7252 datagram classification for CoAP over UDP and DTLS.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Ver| T |  TKL  |      Code     |          Message ID           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Token (TKL bytes) | Options | 0xFF | Payload                   |
//! ```
//!
//! [`classify`] checks the header, the token and the options itself, so every outcome is defined
//! here rather than by what the message parser behind [`Message`] happens to accept, and only
//! then hands non-empty messages to it.

use coap_lite::Packet;

use super::{walk_options, MAX_TOKEN_LEN};

/// Protocol version 1, the only one defined.
const VERSION: u8 = 1;
/// Message type Confirmable.
const CON: u8 = 0;
/// Message type Non-confirmable.
const NON: u8 = 1;
/// Message type Acknowledgement.
const ACK: u8 = 2;
/// Message type Reset.
const RST: u8 = 3;

/// A datagram that passed the RFC 7252 format checks.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Datagram {
    /// Empty CON 0.00: a CoAP ping, answered with [`reset`] (RFC 7252 §4.3).
    Ping {
        /// Message ID to echo.
        message_id: u16,
    },
    /// Empty NON 0.00. RFC 7252 §4.1 says a NON must not be empty; we still answer it with
    /// [`reset`], as libcoap does.
    EmptyNon {
        /// Message ID to echo.
        message_id: u16,
    },
    /// Empty ACK. Never answered.
    EmptyAck {
        /// Message ID being acknowledged.
        message_id: u16,
    },
    /// RST (always empty). Never answered.
    Reset {
        /// Message ID being rejected.
        message_id: u16,
    },
    /// Any message with a non-zero code, parsed.
    Message(Message),
}

impl Datagram {
    /// The Message ID of the datagram.
    pub fn message_id(&self) -> u16 {
        match self {
            Datagram::Ping { message_id }
            | Datagram::EmptyNon { message_id }
            | Datagram::EmptyAck { message_id }
            | Datagram::Reset { message_id } => *message_id,
            Datagram::Message(message) => message.message_id(),
        }
    }

    /// The RST that answers an empty CON (ping) or empty NON; `None` for everything else,
    /// whose answer (if any) is up to the request/response layer.
    pub fn empty_reply(&self) -> Option<[u8; 4]> {
        match self {
            Datagram::Ping { message_id } | Datagram::EmptyNon { message_id } => {
                Some(reset(*message_id))
            }
            _ => None,
        }
    }
}

/// A message with a non-zero code (a request, a response, or a code with no meaning over
/// UDP) that passed the checks of [`classify`], parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    packet: Packet,
}

impl Message {
    /// The Message ID.
    pub fn message_id(&self) -> u16 {
        self.packet.header.message_id
    }

    /// The code, `class << 5 | detail` (never 0: a 0.00 message is an empty one).
    pub fn code(&self) -> u8 {
        u8::from(self.packet.header.code)
    }

    /// The token, 0 to 8 bytes.
    pub fn token(&self) -> &[u8] {
        self.packet.get_token()
    }

    /// The options as (number, value), in ascending number order and, for one number, in the
    /// order they arrived.
    pub fn options(&self) -> impl Iterator<Item = (u16, &[u8])> {
        super::options::packet_options(&self.packet)
    }

    /// The payload (empty when there is none).
    pub fn payload(&self) -> &[u8] {
        &self.packet.payload
    }

    /// The parsed message, for the session.
    pub(crate) fn packet(&self) -> &Packet {
        &self.packet
    }

    /// The parsed message, for the session, by value.
    pub(crate) fn into_packet(self) -> Packet {
        self.packet
    }
}

/// Why a datagram was not accepted. [`DatagramError::rejection`] says what, if anything, to
/// send back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// Fewer than 4 bytes: no header to answer; silently ignored.
    #[error("datagram of {len} bytes is shorter than a CoAP header")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// Version other than 1: silently ignored (RFC 7252 §3).
    #[error("unknown CoAP version {version}")]
    BadVersion {
        /// The version field.
        version: u8,
    },
    /// TKL 9..=15 (reserved): a message format error.
    #[error("reserved token length {tkl}")]
    BadTokenLength {
        /// The TKL nibble.
        tkl: u8,
        /// Message ID of the datagram.
        message_id: u16,
        /// Whether it was a CON.
        confirmable: bool,
    },
    /// Code 0.00 with a token, options or payload after the header (RFC 7252 §4.1): a message
    /// format error.
    #[error("empty message with content")]
    EmptyWithContent {
        /// Message ID of the datagram.
        message_id: u16,
        /// Whether it was a CON.
        confirmable: bool,
    },
    /// An RST with a code, token or anything after the header: ignored.
    #[error("reset message with content")]
    ResetWithContent {
        /// Message ID of the datagram.
        message_id: u16,
    },
    /// Token truncated, bad option, payload marker without payload, or refused by the parser.
    #[error("malformed message: {reason}")]
    Malformed {
        /// Message ID of the datagram.
        message_id: u16,
        /// Whether it was a CON.
        confirmable: bool,
        /// What was wrong.
        reason: String,
    },
}

impl DatagramError {
    /// The 4-byte RST to send, if any.
    ///
    /// RFC 7252 §4.2: a CON with a message format error is rejected with an RST carrying its
    /// Message ID. §4.3 lets a NON with a format error be rejected or ignored: we ignore it (an
    /// *empty* NON is not an error here but [`Datagram::EmptyNon`], which is answered). An ACK
    /// or RST is never answered, and neither is a datagram whose header cannot be read or whose
    /// version is unknown.
    pub fn rejection(&self) -> Option<[u8; 4]> {
        match self {
            DatagramError::BadTokenLength {
                message_id,
                confirmable: true,
                ..
            }
            | DatagramError::EmptyWithContent {
                message_id,
                confirmable: true,
            }
            | DatagramError::Malformed {
                message_id,
                confirmable: true,
                ..
            } => Some(reset(*message_id)),
            _ => None,
        }
    }
}

/// Classifies one received datagram.
///
/// Checks, in order: length ≥ 4, version 1, an RST is empty, TKL ≤ 8, an empty (0.00) message
/// has nothing after its header, then (non-empty messages) the token and options are
/// well-formed and a payload marker is followed by a payload. Datagrams of any size (up to
/// 64 KiB and beyond) are handled without panicking.
pub fn classify(bytes: &[u8]) -> Result<Datagram, DatagramError> {
    let [first, code, mid_high, mid_low, rest @ ..] = bytes else {
        return Err(DatagramError::TooShort { len: bytes.len() });
    };
    let version = first >> 6;
    if version != VERSION {
        return Err(DatagramError::BadVersion { version });
    }
    let message_type = (first >> 4) & 0x03;
    let tkl = first & 0x0F;
    let message_id = u16::from_be_bytes([*mid_high, *mid_low]);
    let confirmable = message_type == CON;

    if message_type == RST {
        if *code != 0x00 || tkl != 0 || !rest.is_empty() {
            return Err(DatagramError::ResetWithContent { message_id });
        }
        return Ok(Datagram::Reset { message_id });
    }
    if usize::from(tkl) > MAX_TOKEN_LEN {
        return Err(DatagramError::BadTokenLength {
            tkl,
            message_id,
            confirmable,
        });
    }
    if *code == 0x00 {
        if tkl != 0 || !rest.is_empty() {
            return Err(DatagramError::EmptyWithContent {
                message_id,
                confirmable,
            });
        }
        return Ok(match message_type {
            CON => Datagram::Ping { message_id },
            NON => Datagram::EmptyNon { message_id },
            // Only ACK is left: RST returned above and the type is two bits.
            _ => Datagram::EmptyAck { message_id },
        });
    }

    let malformed = |reason: String| DatagramError::Malformed {
        message_id,
        confirmable,
        reason,
    };
    let options = rest
        .get(usize::from(tkl)..)
        .ok_or_else(|| malformed("token truncated".to_owned()))?;
    walk_options(options, |_, _| {}).map_err(|error| malformed(error.to_string()))?;
    Packet::from_bytes(bytes)
        .map(|packet| Datagram::Message(Message { packet }))
        .map_err(|error| malformed(error.to_string()))
}

/// An empty CON (a ping): `40 00 MM MM`.
pub fn ping(message_id: u16) -> [u8; 4] {
    empty(CON, message_id)
}

/// An RST: `70 00 MM MM`. The answer to a ping.
pub fn reset(message_id: u16) -> [u8; 4] {
    empty(RST, message_id)
}

/// An empty ACK: `60 00 MM MM`.
pub fn empty_ack(message_id: u16) -> [u8; 4] {
    empty(ACK, message_id)
}

fn empty(message_type: u8, message_id: u16) -> [u8; 4] {
    let [high, low] = message_id.to_be_bytes();
    [(VERSION << 6) | (message_type << 4), 0x00, high, low]
}

#[cfg(test)]
mod tests {
    use coap_lite::{CoapOption, MessageClass, MessageType, RequestType};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn empty_messages() {
        assert_eq!(ping(0x1234), [0x40, 0x00, 0x12, 0x34]);
        assert_eq!(reset(0x1234), [0x70, 0x00, 0x12, 0x34]);
        assert_eq!(empty_ack(0x1234), [0x60, 0x00, 0x12, 0x34]);
        assert_eq!(
            classify(&[0x40, 0x00, 0x12, 0x34]),
            Ok(Datagram::Ping { message_id: 0x1234 })
        );
        assert_eq!(
            classify(&[0x50, 0x00, 0x12, 0x34]),
            Ok(Datagram::EmptyNon { message_id: 0x1234 })
        );
        assert_eq!(
            classify(&[0x60, 0x00, 0xAB, 0xCD]),
            Ok(Datagram::EmptyAck { message_id: 0xABCD })
        );
        assert_eq!(
            classify(&[0x70, 0x00, 0xAB, 0xCD]),
            Ok(Datagram::Reset { message_id: 0xABCD })
        );
        for id in [0x0000, 0x1234, 0xFFFF] {
            assert_eq!(classify(&ping(id)), Ok(Datagram::Ping { message_id: id }));
            assert_eq!(classify(&reset(id)), Ok(Datagram::Reset { message_id: id }));
            assert_eq!(
                classify(&empty_ack(id)),
                Ok(Datagram::EmptyAck { message_id: id })
            );
        }
    }

    #[test]
    fn pings_are_answered_with_reset() {
        let ping = classify(&[0x40, 0x00, 0x12, 0x34]).unwrap();
        assert_eq!(ping.empty_reply(), Some([0x70, 0x00, 0x12, 0x34]));
        let non = classify(&[0x50, 0x00, 0x12, 0x34]).unwrap();
        assert_eq!(non.empty_reply(), Some([0x70, 0x00, 0x12, 0x34]));
        assert_eq!(
            classify(&[0x60, 0x00, 0x12, 0x34]).unwrap().empty_reply(),
            None
        );
        assert_eq!(
            classify(&[0x70, 0x00, 0x12, 0x34]).unwrap().empty_reply(),
            None
        );
        assert_eq!(ping.message_id(), 0x1234);
    }

    #[test]
    fn too_short() {
        for len in 0..4 {
            let error = classify(&[0x40, 0x00, 0x12][..len.min(3)]).unwrap_err();
            assert_eq!(error, DatagramError::TooShort { len: len.min(3) });
            assert_eq!(error.rejection(), None);
        }
    }

    #[test]
    fn bad_version_is_ignored() {
        for first in [0x00, 0x80, 0xC0] {
            let error = classify(&[first, 0x00, 0x12, 0x34]).unwrap_err();
            assert_eq!(
                error,
                DatagramError::BadVersion {
                    version: first >> 6
                }
            );
            assert_eq!(error.rejection(), None);
        }
    }

    #[test]
    fn token_length_nine() {
        let error = classify(&[0x49, 0x01, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(
            error,
            DatagramError::BadTokenLength {
                tkl: 9,
                message_id: 0x1234,
                confirmable: true
            }
        );
        assert_eq!(error.rejection(), Some([0x70, 0x00, 0x12, 0x34]));
        let non = classify(&[0x5F, 0x01, 0x12, 0x34]).unwrap_err();
        assert_eq!(non.rejection(), None);
    }

    #[test]
    fn empty_con_with_token_is_rejected() {
        let error = classify(&[0x41, 0x00, 0x12, 0x34, 0x99]).unwrap_err();
        assert_eq!(
            error,
            DatagramError::EmptyWithContent {
                message_id: 0x1234,
                confirmable: true
            }
        );
        assert_eq!(error.rejection(), Some([0x70, 0x00, 0x12, 0x34]));
        // TKL 0 but bytes after the header.
        let error = classify(&[0x40, 0x00, 0x12, 0x34, 0xFF, 0x61]).unwrap_err();
        assert_eq!(error.rejection(), Some([0x70, 0x00, 0x12, 0x34]));
        // TKL 1 with the token missing is still an empty message with content.
        let error = classify(&[0x41, 0x00, 0x12, 0x34]).unwrap_err();
        assert!(matches!(error, DatagramError::EmptyWithContent { .. }));
    }

    #[test]
    fn ack_and_reset_with_content_are_never_answered() {
        let error = classify(&[0x60, 0x00, 0x12, 0x34, 0xFF, 0x61]).unwrap_err();
        assert_eq!(
            error,
            DatagramError::EmptyWithContent {
                message_id: 0x1234,
                confirmable: false
            }
        );
        assert_eq!(error.rejection(), None);
        for bytes in [
            &[0x71, 0x00, 0x12, 0x34, 0x01][..],
            &[0x70, 0x45, 0x12, 0x34][..],
            &[0x70, 0x00, 0x12, 0x34, 0x00][..],
            &[0x7F, 0x00, 0x12, 0x34][..],
        ] {
            let error = classify(bytes).unwrap_err();
            assert_eq!(
                error,
                DatagramError::ResetWithContent { message_id: 0x1234 }
            );
            assert_eq!(error.rejection(), None);
        }
        // An ACK with a broken option: malformed, still not answered.
        let error = classify(&[0x60, 0x45, 0x12, 0x34, 0xF0]).unwrap_err();
        assert!(matches!(error, DatagramError::Malformed { .. }));
        assert_eq!(error.rejection(), None);
    }

    #[test]
    fn empty_non_with_content_is_ignored() {
        let error = classify(&[0x51, 0x00, 0x12, 0x34, 0x01]).unwrap_err();
        assert_eq!(error.rejection(), None);
    }

    #[test]
    fn malformed_con_is_rejected_non_is_ignored() {
        for (tail, reason) in [
            (&[0xFF][..], "payload marker"),
            (&[0xF1, 0x00][..], "delta 15"),
            (&[0x1F][..], "length 15"),
            (&[0xB4, b'a'][..], "truncated"),
            (&[0xD0][..], "truncated"),
        ] {
            let mut con = vec![0x42, 0x01, 0x12, 0x34, 0xAA, 0xBB];
            con.extend_from_slice(tail);
            let error = classify(&con).unwrap_err();
            let DatagramError::Malformed {
                reason: got,
                confirmable: true,
                message_id: 0x1234,
            } = &error
            else {
                panic!("{error:?}");
            };
            assert!(got.contains(reason), "{got} / {reason}");
            assert_eq!(error.rejection(), Some([0x70, 0x00, 0x12, 0x34]));

            con[0] = 0x52;
            assert_eq!(classify(&con).unwrap_err().rejection(), None);
        }
        // Token shorter than TKL.
        let error = classify(&[0x44, 0x01, 0x12, 0x34, 0xAA]).unwrap_err();
        assert!(matches!(
            error,
            DatagramError::Malformed {
                confirmable: true,
                ..
            }
        ));
    }

    #[test]
    fn message_is_parsed() {
        // CON GET, token 0xAA 0xBB, Uri-Path "temp", payload "hi".
        let bytes = [
            0x42, 0x01, 0x12, 0x34, 0xAA, 0xBB, 0xB4, b't', b'e', b'm', b'p', 0xFF, b'h', b'i',
        ];
        let Ok(Datagram::Message(message)) = classify(&bytes) else {
            panic!("not a message");
        };
        let packet = message.packet();
        assert_eq!(packet.header.get_type(), MessageType::Confirmable);
        assert_eq!(packet.header.code, MessageClass::Request(RequestType::Get));
        assert_eq!(packet.header.message_id, 0x1234);
        assert_eq!(packet.get_token(), &[0xAA, 0xBB]);
        assert_eq!(
            packet.get_first_option(CoapOption::UriPath),
            Some(&b"temp".to_vec())
        );
        assert_eq!(packet.payload, b"hi");
        assert_eq!((message.code(), message.token()), (0x01, &[0xAA, 0xBB][..]));
        assert_eq!(
            message.options().collect::<Vec<_>>(),
            vec![(11, &b"temp"[..])]
        );
        assert_eq!(message.payload(), b"hi");
        assert_eq!(Datagram::Message(message).message_id(), 0x1234);
    }

    #[test]
    fn sixty_four_kib_datagram() {
        let mut bytes = vec![0x40, 0x02, 0x12, 0x34, 0xFF];
        bytes.resize(65_535, 0x61);
        let Ok(Datagram::Message(message)) = classify(&bytes) else {
            panic!("not a message");
        };
        assert_eq!(message.payload().len(), 65_530);
        let garbage: Vec<u8> = (0..65_536u32).map(|i| (i * 7 + 3) as u8).collect();
        let _ = classify(&garbage);
    }

    /// What `coap_lite::Packet::from_bytes` lets through on its own, and why `classify` checks
    /// first. If one of these starts failing, coap-lite changed.
    #[test]
    fn coap_lite_is_lenient() {
        // No version check.
        assert!(Packet::from_bytes(&[0x80, 0x01, 0x12, 0x34]).is_ok());
        // Payload marker with nothing after it (RFC 7252 §3: format error).
        let packet = Packet::from_bytes(&[0x40, 0x01, 0x12, 0x34, 0xFF]).unwrap();
        assert!(packet.payload.is_empty());
        // Empty code with a token and payload; RST with content.
        assert!(Packet::from_bytes(&[0x41, 0x00, 0x12, 0x34, 0x01, 0xFF, 0x61]).is_ok());
        assert!(Packet::from_bytes(&[0x70, 0x45, 0x12, 0x34, 0xFF, 0x61]).is_ok());
        // What it does reject: TKL > 8, truncated token/options, nibble 15.
        assert!(Packet::from_bytes(&[0x49, 0x01, 0x12, 0x34]).is_err());
        assert!(Packet::from_bytes(&[0x42, 0x01, 0x12, 0x34, 0xAA]).is_err());
        assert!(Packet::from_bytes(&[0x40, 0x01, 0x12, 0x34, 0xB4, b'a']).is_err());
        assert!(Packet::from_bytes(&[0x40, 0x01, 0x12, 0x34, 0xF1, 0x00]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn prop_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            match classify(&bytes) {
                Ok(datagram) => prop_assert!(bytes.len() >= 4 && datagram.message_id()
                    == u16::from_be_bytes([bytes[2], bytes[3]])),
                Err(error) => {
                    if let Some(rst) = error.rejection() {
                        // Only a CON gets an RST, and it echoes its Message ID.
                        prop_assert_eq!(bytes[0] & 0xF0, 0x40);
                        prop_assert_eq!(&rst[2..], &bytes[2..4]);
                    }
                }
            }
        }

        #[test]
        fn prop_valid_header_never_panics(
            first in 0x40u8..0x80,
            code in any::<u8>(),
            rest in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = vec![first, code, 0x12, 0x34];
            bytes.extend_from_slice(&rest);
            let _ = classify(&bytes);
        }

        #[test]
        fn prop_coap_lite_encodings_classify(
            code in 0x01u8..0xFF,
            non in any::<bool>(),
            message_id in any::<u16>(),
            token in prop::collection::vec(any::<u8>(), 0..=8),
            path in "[a-z]{0,20}",
            payload in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut packet = Packet::new();
            packet.header.set_type(if non { MessageType::NonConfirmable } else { MessageType::Confirmable });
            packet.header.code = MessageClass::from(code);
            packet.header.message_id = message_id;
            packet.set_token(token);
            packet.add_option(CoapOption::UriPath, path.into_bytes());
            packet.payload = payload;
            let bytes = packet.to_bytes().unwrap();
            prop_assert_eq!(classify(&bytes), Ok(Datagram::Message(Message { packet })));
        }
    }
}
