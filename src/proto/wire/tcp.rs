//! RFC 8323 §3.2 message framing for CoAP over TCP and TLS.
//!
//! ```text
//!  0   1   2   3   4   5   6   7
//! +---------------+---------------+
//! |      Len      |      TKL      |   Len: 0-12 direct, 13/14/15: 1/2/4 extended bytes
//! +---------------+---------------+
//! |  Extended Length (0-4 bytes)  |   value minus 13 / 269 / 65805
//! +-------------------------------+
//! |             Code              |
//! +-------------------------------+
//! | Token (TKL bytes) | Options | 0xFF | Payload |
//! ```
//!
//! Len counts the options and the payload (marker included), not the code or the token.
//! There is no message type and no Message ID.

use coap_lite::{CoapOption, MessageClass, Packet};

use super::{encode_options, options_len, walk_options, Reader, MAX_TOKEN_LEN, PAYLOAD_MARKER};

/// Largest length a Len nibble holds directly.
const LEN_DIRECT_MAX: u64 = 12;
/// Offset of a Len 13 (one extended byte).
const LEN_13_OFFSET: u64 = 13;
/// Offset of a Len 14 (two extended bytes).
const LEN_14_OFFSET: u64 = 269;
/// Offset of a Len 15 (four extended bytes).
const LEN_15_OFFSET: u64 = 65_805;

/// One RFC 8323 message: no type, no message ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message code, `class << 5 | detail` (e.g. `0x02` POST, `0x45` 2.05, `0xE2` 7.02 Ping).
    pub code: u8,
    /// Token, 0 to 8 bytes. Longer tokens are not representable and are truncated to 8 bytes
    /// by [`Frame::encode`] (and when the session reads the frame).
    pub token: Vec<u8>,
    /// Options as (number, value), sorted by number; a number may repeat. [`Frame::encode`]
    /// sorts (stably) if they are not.
    pub options: Vec<(u16, Vec<u8>)>,
    /// Payload; the `0xFF` marker is sent only when it is non-empty.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame with `code` and no token, options or payload.
    pub fn new(code: u8) -> Self {
        Frame {
            code,
            token: Vec::new(),
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Encodes the frame with the shortest Len encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let token = self.wire_token();
        let tkl = token.len() as u8;
        let len = self.body_len();
        if len <= LEN_DIRECT_MAX {
            out.push(((len as u8) << 4) | tkl);
        } else if len < LEN_14_OFFSET {
            out.push(0xD0 | tkl);
            out.push((len - LEN_13_OFFSET) as u8);
        } else if len < LEN_15_OFFSET {
            out.push(0xE0 | tkl);
            out.extend_from_slice(&((len - LEN_14_OFFSET) as u16).to_be_bytes());
        } else {
            // Bodies past 4 GiB cannot be framed at all; saturating beats wrapping.
            let extended = u32::try_from(len - LEN_15_OFFSET).unwrap_or(u32::MAX);
            out.push(0xF0 | tkl);
            out.extend_from_slice(&extended.to_be_bytes());
        }
        out.push(self.code);
        out.extend_from_slice(token);
        encode_options(self.sorted_options(), out);
        if !self.payload.is_empty() {
            out.push(PAYLOAD_MARKER);
            out.extend_from_slice(&self.payload);
        }
    }

    /// Total encoded size in bytes, framing header included. Compare this with the peer's
    /// Max-Message-Size when sending: it is the strictest reading of that limit.
    pub fn encoded_len(&self) -> usize {
        let body = usize::try_from(self.body_len()).unwrap_or(usize::MAX);
        let extended = match self.body_len() {
            0..=LEN_DIRECT_MAX => 0,
            13..=268 => 1,
            269..=65_804 => 2,
            _ => 4,
        };
        (2 + extended + self.wire_token().len()).saturating_add(body)
    }

    /// The first value of option `number`, if present.
    pub fn option(&self, number: u16) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, value)| value.as_slice())
    }

    /// Whether this is a signalling message (code class 7, RFC 8323 §5).
    pub fn is_signal(&self) -> bool {
        self.code >> 5 == 7
    }

    /// Converts a request/response frame to a [`coap_lite::Packet`]: code, token (at most 8
    /// bytes), options by number and payload are copied; the type is Confirmable and the
    /// Message ID 0, neither of which means anything over TCP.
    pub(crate) fn to_packet(&self) -> Packet {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::from(self.code);
        packet.header.message_id = 0;
        // Packet::set_token asserts on tokens of 16 bytes or more: never hand it one.
        packet.set_token(self.wire_token().to_vec());
        for (number, value) in &self.options {
            packet.add_option(CoapOption::from(*number), value.clone());
        }
        packet.payload = self.payload.clone();
        packet
    }

    /// Converts a [`coap_lite::Packet`] to a frame, dropping its type and Message ID.
    pub(crate) fn from_packet(packet: &Packet) -> Self {
        Frame {
            code: u8::from(packet.header.code),
            token: packet.get_token().to_vec(),
            options: packet
                .options()
                .flat_map(|(number, values)| values.iter().map(|value| (*number, value.clone())))
                .collect(),
            payload: packet.payload.clone(),
        }
    }

    fn wire_token(&self) -> &[u8] {
        self.token.get(..MAX_TOKEN_LEN).unwrap_or(&self.token)
    }

    fn sorted_options(&self) -> impl Iterator<Item = (u16, &[u8])> {
        let mut sorted: Vec<(u16, &[u8])> = self
            .options
            .iter()
            .map(|(number, value)| (*number, value.as_slice()))
            .collect();
        if !sorted.is_sorted_by_key(|(number, _)| *number) {
            sorted.sort_by_key(|(number, _)| *number);
        }
        sorted.into_iter()
    }

    /// The value of Len: options plus marker plus payload.
    fn body_len(&self) -> u64 {
        let options = options_len(self.sorted_options()) as u64;
        let payload = match self.payload.len() {
            0 => 0,
            n => 1 + n as u64,
        };
        options + payload
    }
}

/// Why a byte stream could not be framed. Every variant is a connection error (RFC 8323 §5.6:
/// answer with Abort and close).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length header declares more token+options+payload bytes than the limit; detected
    /// from the header alone, before any of the body is buffered.
    #[error("frame declares {declared} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Token + options + payload bytes the header declares.
        declared: u64,
        /// The decoder's limit at the time.
        limit: u32,
    },
    /// TKL 9..=15 (reserved).
    #[error("reserved token length {tkl}")]
    BadTokenLength {
        /// The TKL nibble.
        tkl: u8,
    },
    /// The options/payload section is malformed.
    #[error("bad option: {reason}")]
    BadOption {
        /// What was wrong.
        reason: String,
    },
}

/// Where the body of a frame starts and how long it is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    /// Len/TKL byte, extended length and code.
    header_len: usize,
    tkl: u8,
    code: u8,
    /// Options + payload (the Len value).
    body_len: u64,
}

impl FrameHeader {
    /// Reads a frame header. `Ok(None)` means more bytes are needed; the limit is enforced as
    /// soon as the length is known, even before the code byte arrives.
    fn parse(bytes: &[u8], limit: u32) -> Result<Option<FrameHeader>, FrameError> {
        let mut reader = Reader::new(bytes);
        let Some(first) = reader.u8() else {
            return Ok(None);
        };
        let (len_nibble, tkl) = (first >> 4, first & 0x0F);
        if usize::from(tkl) > MAX_TOKEN_LEN {
            return Err(FrameError::BadTokenLength { tkl });
        }
        let extended = match len_nibble {
            13 => reader.u8().map(|b| u64::from(b) + LEN_13_OFFSET),
            14 => reader.u16().map(|v| u64::from(v) + LEN_14_OFFSET),
            15 => reader.u32().map(|v| u64::from(v) + LEN_15_OFFSET),
            n => Some(u64::from(n)),
        };
        let Some(body_len) = extended else {
            return Ok(None);
        };
        let declared = body_len + u64::from(tkl);
        if declared > u64::from(limit) {
            return Err(FrameError::TooLarge { declared, limit });
        }
        let Some(code) = reader.u8() else {
            return Ok(None);
        };
        Ok(Some(FrameHeader {
            header_len: bytes.len() - reader.remaining().len(),
            tkl,
            code,
            body_len,
        }))
    }
}

/// Incremental decoder: push bytes as they arrive (partial frames across reads, several frames
/// in one read) and pull frames out.
///
/// The size limit counts the token, options and payload of a frame (TKL + Len), not the 2 to 6
/// bytes of Len/TKL, extended length and code. RFC 8323 §5.3.1 counts the whole message, but the
/// size of the framing header depends on the length it encodes, so peers disagree on it by a few
/// bytes; being lenient by those bytes costs nothing. Senders should use the strict reading
/// ([`Frame::encoded_len`]).
///
/// Memory held is bounded by the limit plus whatever one `push` hands in: a declared length is
/// never allocated up front, only the bytes that actually arrived are buffered.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Start of the first unconsumed byte in `buffer`; consumed bytes are dropped on `push`,
    /// once per batch, so coalesced frames cost no re-copying.
    read: usize,
    max_message_size: u32,
    failed: Option<FrameError>,
}

/// The capacity a decoder keeps once it holds no partial frame: enough for a read of a few
/// small frames (pings, pongs), so that a keepalive exchange does not allocate each time.
const IDLE_CAPACITY: usize = 64;

impl FrameDecoder {
    /// A decoder accepting frames whose token + options + payload take at most
    /// `max_message_size` bytes: the Max-Message-Size this side advertises in its CSM
    /// (at least [`BASE_MAX_MESSAGE_SIZE`](super::signal::BASE_MAX_MESSAGE_SIZE)).
    pub fn new(max_message_size: u32) -> Self {
        FrameDecoder {
            buffer: Vec::new(),
            read: 0,
            max_message_size,
            failed: None,
        }
    }

    /// Changes the limit for frames not yet returned.
    pub fn set_max_message_size(&mut self, limit: u32) {
        self.max_message_size = limit;
    }

    /// The current limit (token + options + payload bytes).
    pub fn max_message_size(&self) -> u32 {
        self.max_message_size
    }

    /// Appends received bytes. Ignored once the decoder has failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.read > 0 {
            let consumed = self.read.min(self.buffer.len());
            self.buffer.drain(..consumed);
            self.read = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame; `Ok(None)` if more bytes are needed. After an error the
    /// decoder stays failed and returns the same error again.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        match self.decode() {
            Err(error) => {
                self.failed = Some(error.clone());
                self.buffer = Vec::new();
                self.read = 0;
                Err(error)
            }
            Ok(None) if self.buffered() == 0 && self.buffer.capacity() > IDLE_CAPACITY => {
                // Everything pushed was a whole frame: a large read's buffer is not kept for
                // a connection that may stay idle for hours.
                self.buffer = Vec::new();
                self.read = 0;
                Ok(None)
            }
            ok => ok,
        }
    }

    /// Bytes held of a frame not yet complete (0 after a failure). A peer that keeps this
    /// non-zero for long is trickling a frame (slow loris).
    pub fn buffered(&self) -> usize {
        self.buffer.len().saturating_sub(self.read)
    }

    /// Whether the decoder has failed.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        let pending = self.buffer.get(self.read..).unwrap_or_default();
        let Some(header) = FrameHeader::parse(pending, self.max_message_size)? else {
            return Ok(None);
        };
        // Checked against the limit (a u32) already, so this fits comfortably.
        let rest = usize::try_from(header.body_len).unwrap_or(usize::MAX);
        let total = header
            .header_len
            .saturating_add(usize::from(header.tkl))
            .saturating_add(rest);
        let Some(frame_bytes) = pending.get(header.header_len..total) else {
            return Ok(None);
        };
        let Some((token, body)) = frame_bytes.split_at_checked(usize::from(header.tkl)) else {
            // Unreachable: `frame_bytes` holds the token and the body.
            return Ok(None);
        };
        let mut options = Vec::new();
        let payload = walk_options(body, |number, value| options.push((number, value.to_vec())))
            .map_err(|error| FrameError::BadOption {
                reason: error.to_string(),
            })?;
        self.read += total;
        Ok(Some(Frame {
            code: header.code,
            token: token.to_vec(),
            options,
            payload: payload.to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Frame> {
        let mut decoder = FrameDecoder::new(u32::MAX);
        decoder.push(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            frames.push(frame);
        }
        assert_eq!(decoder.buffered(), 0);
        frames
    }

    fn body_of(len: usize) -> Frame {
        let mut frame = Frame::new(0x02);
        frame.payload = (0..len.saturating_sub(1)).map(|i| i as u8).collect();
        frame
    }

    #[test]
    fn empty_message() {
        assert_eq!(Frame::new(0x00).encode(), vec![0x00, 0x00]);
        assert_eq!(decode_all(&[0x00, 0x00]), vec![Frame::new(0x00)]);
    }

    #[test]
    fn post_with_303_byte_body() {
        // Len 14, TKL 1: extended 0x0022 = 303 - 269; code 0.02.
        let mut frame = body_of(303);
        frame.token = vec![0x7A];
        let bytes = frame.encode();
        assert_eq!(&bytes[..5], &[0xE1, 0x00, 0x22, 0x02, 0x7A]);
        assert_eq!(bytes[5], 0xFF);
        assert_eq!(bytes.len(), 1 + 2 + 1 + 1 + 303);
        assert_eq!(frame.encoded_len(), bytes.len());
        assert_eq!(decode_all(&bytes), vec![frame]);
    }

    #[test]
    fn len_boundaries() {
        let cases: [(usize, &[u8]); 9] = [
            (0, &[0x00]),
            (12, &[0xC0]),
            (13, &[0xD0, 0x00]),
            (268, &[0xD0, 0xFF]),
            (269, &[0xE0, 0x00, 0x00]),
            (270, &[0xE0, 0x00, 0x01]),
            (65_804, &[0xE0, 0xFF, 0xFF]),
            (65_805, &[0xF0, 0x00, 0x00, 0x00, 0x00]),
            (65_806, &[0xF0, 0x00, 0x00, 0x00, 0x01]),
        ];
        for (len, head) in cases {
            let frame = body_of(len);
            let bytes = frame.encode();
            assert_eq!(&bytes[..head.len()], head, "len {len}");
            assert_eq!(bytes[head.len()], 0x02, "len {len}");
            assert_eq!(bytes.len(), head.len() + 1 + len, "len {len}");
            assert_eq!(frame.encoded_len(), bytes.len(), "len {len}");
            assert_eq!(decode_all(&bytes), vec![frame], "len {len}");
        }
    }

    #[test]
    fn split_at_every_byte() {
        let mut frame = Frame::new(0x45);
        frame.token = vec![0x12, 0x34];
        frame.options = vec![
            (11, b"a".to_vec()),
            (11, b"bc".to_vec()),
            (300, vec![0x01; 20]),
        ];
        frame.payload = vec![0x68; 40];
        let bytes = frame.encode();
        for split in 0..=bytes.len() {
            let mut decoder = FrameDecoder::new(1152);
            decoder.push(&bytes[..split]);
            if split < bytes.len() {
                assert_eq!(decoder.next_frame(), Ok(None), "split {split}");
                assert_eq!(decoder.buffered(), split);
            }
            decoder.push(&bytes[split..]);
            assert_eq!(
                decoder.next_frame(),
                Ok(Some(frame.clone())),
                "split {split}"
            );
            assert_eq!(decoder.next_frame(), Ok(None));
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn byte_at_a_time() {
        let frame = body_of(400);
        let bytes = frame.encode();
        let mut decoder = FrameDecoder::new(1152);
        for (i, byte) in bytes.iter().enumerate() {
            assert_eq!(decoder.next_frame(), Ok(None));
            decoder.push(&[*byte]);
            assert_eq!(decoder.buffered(), i + 1);
        }
        assert_eq!(decoder.next_frame(), Ok(Some(frame)));
    }

    #[test]
    fn coalesced_frames() {
        let frames: Vec<Frame> = (0..50u8)
            .map(|i| {
                let mut frame = Frame::new(0x01 + i % 4);
                frame.token = vec![i];
                frame.payload = vec![i; usize::from(i) * 7];
                frame
            })
            .collect();
        let mut bytes = Vec::new();
        for frame in &frames {
            frame.encode_into(&mut bytes);
        }
        // Plus half of one more frame, which must stay buffered.
        let tail = body_of(30).encode();
        bytes.extend_from_slice(&tail[..10]);
        let mut decoder = FrameDecoder::new(1152);
        decoder.push(&bytes);
        for frame in &frames {
            assert_eq!(decoder.next_frame().as_ref(), Ok(&Some(frame.clone())));
        }
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered(), 10);
        decoder.push(&tail[10..]);
        assert_eq!(decoder.next_frame(), Ok(Some(body_of(30))));
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn four_gib_is_too_large_before_the_body() {
        let mut decoder = FrameDecoder::new(1152);
        decoder.push(&[0xF0, 0xFF, 0xFF, 0xFF, 0xFF]);
        let expected = FrameError::TooLarge {
            declared: 0xFFFF_FFFF + 65_805,
            limit: 1152,
        };
        assert_eq!(decoder.next_frame(), Err(expected.clone()));
        assert_eq!(decoder.buffered(), 0);
        // Stays failed, and buffers nothing more.
        decoder.push(&[0x00; 100]);
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(decoder.next_frame(), Err(expected));
        assert!(decoder.is_failed());
    }

    #[test]
    fn limit_counts_token_options_payload() {
        let mut frame = body_of(1144);
        frame.token = vec![0x01; 8];
        let bytes = frame.encode();
        let mut decoder = FrameDecoder::new(1152);
        decoder.push(&bytes);
        assert_eq!(decoder.next_frame(), Ok(Some(frame.clone())));

        frame.payload.push(0x00);
        let mut decoder = FrameDecoder::new(1152);
        // Three bytes (Len 14 + extended length) are enough to refuse it.
        decoder.push(&frame.encode()[..3]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                declared: 1153,
                limit: 1152
            })
        );
    }

    #[test]
    fn raising_the_limit_mid_stream() {
        let frame = body_of(2000);
        let mut decoder = FrameDecoder::new(u32::MAX);
        decoder.set_max_message_size(2000);
        assert_eq!(decoder.max_message_size(), 2000);
        decoder.push(&frame.encode());
        assert_eq!(decoder.next_frame(), Ok(Some(frame)));
    }

    #[test]
    fn bad_token_length() {
        let mut decoder = FrameDecoder::new(1152);
        decoder.push(&[0x09]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::BadTokenLength { tkl: 9 })
        );
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::BadTokenLength { tkl: 9 })
        );
    }

    #[test]
    fn bad_options() {
        for bytes in [
            &[0x10, 0x02, 0xFF][..],       // marker, no payload
            &[0x10, 0x02, 0xF0][..],       // delta 15
            &[0x10, 0x02, 0x0F][..],       // length 15
            &[0x20, 0x02, 0x03, 0x00][..], // value truncated by Len
            &[0x10, 0x02, 0xD0][..],       // extended delta missing
        ] {
            let mut decoder = FrameDecoder::new(1152);
            decoder.push(bytes);
            assert!(
                matches!(decoder.next_frame(), Err(FrameError::BadOption { .. })),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn unsorted_options_are_sorted_on_encode() {
        let mut frame = Frame::new(0x01);
        frame.options = vec![(11, b"b".to_vec()), (3, b"h".to_vec()), (11, b"c".to_vec())];
        let decoded = decode_all(&frame.encode());
        assert_eq!(
            decoded[0].options,
            vec![(3, b"h".to_vec()), (11, b"b".to_vec()), (11, b"c".to_vec())]
        );
        assert_eq!(frame.option(11), Some(&b"b"[..]));
        assert_eq!(frame.option(12), None);
    }

    #[test]
    fn long_tokens_are_truncated() {
        let mut frame = Frame::new(0x01);
        frame.token = (0..20).collect();
        let decoded = decode_all(&frame.encode());
        assert_eq!(decoded[0].token, (0..8).collect::<Vec<u8>>());
        assert_eq!(frame.to_packet().get_token(), &decoded[0].token[..]);
    }

    #[test]
    fn packet_round_trip() {
        let mut frame = Frame::new(0x02);
        frame.token = vec![0xCA, 0xFE];
        frame.options = vec![
            (4, vec![0x01]),
            (11, b"sensors".to_vec()),
            (11, b"temp".to_vec()),
            (2048, vec![0x05]),
        ];
        frame.payload = b"22.5".to_vec();
        let packet = frame.to_packet();
        assert_eq!(
            packet.header.code,
            MessageClass::Request(coap_lite::RequestType::Post)
        );
        assert_eq!(packet.get_token(), &[0xCA, 0xFE]);
        assert_eq!(Frame::from_packet(&packet), frame);
    }

    #[test]
    fn every_code_survives_coap_lite() {
        for code in 0..=u8::MAX {
            let frame = Frame::new(code);
            assert_eq!(
                Frame::from_packet(&frame.to_packet()),
                frame,
                "code {code:#04x}"
            );
        }
    }

    #[test]
    fn signal_class() {
        assert!(Frame::new(0xE2).is_signal());
        assert!(Frame::new(0xFF).is_signal());
        assert!(!Frame::new(0x45).is_signal());
    }

    /// Pseudo-random bytes from a seed: cheaper for proptest than one strategy per byte.
    fn filler(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let number = prop_oneof![0u16..16, 0u16..600, any::<u16>()];
        let value = prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..16),
            1 => (any::<u64>(), 13usize..700).prop_map(|(seed, len)| filler(seed, len)),
        ];
        let payload = prop_oneof![
            6 => prop::collection::vec(any::<u8>(), 0..64),
            3 => (any::<u64>(), 0usize..3000).prop_map(|(seed, len)| filler(seed, len)),
            1 => (any::<u64>(), 65_000usize..70_000).prop_map(|(seed, len)| filler(seed, len)),
        ];
        (
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..=8),
            prop::collection::vec((number, value), 0..6),
            payload,
        )
            .prop_map(|(code, token, mut options, payload)| {
                options.sort_by_key(|(number, _)| *number);
                Frame {
                    code,
                    token,
                    options,
                    payload,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn prop_round_trip(frame in arb_frame()) {
            let bytes = frame.encode();
            prop_assert_eq!(bytes.len(), frame.encoded_len());
            let mut decoder = FrameDecoder::new(u32::MAX);
            decoder.push(&bytes);
            prop_assert_eq!(decoder.next_frame(), Ok(Some(frame)));
            prop_assert_eq!(decoder.next_frame(), Ok(None));
            prop_assert_eq!(decoder.buffered(), 0);
        }

        #[test]
        fn prop_round_trip_split(
            frame in arb_frame(),
            next in arb_frame(),
            split in any::<prop::sample::Index>(),
        ) {
            let mut bytes = frame.encode();
            next.encode_into(&mut bytes);
            let split = split.index(bytes.len() + 1);
            let mut decoder = FrameDecoder::new(u32::MAX);
            let mut got = Vec::new();
            for chunk in [&bytes[..split], &bytes[split..]] {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            prop_assert_eq!(got, vec![frame, next]);
            prop_assert_eq!(decoder.buffered(), 0);
        }

        #[test]
        fn prop_packet_round_trip(frame in arb_frame()) {
            prop_assert_eq!(Frame::from_packet(&frame.to_packet()), frame);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn prop_arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..400),
            chunk in 1usize..50,
            limit in prop_oneof![Just(0u32), 0u32..300, Just(u32::MAX)],
        ) {
            let mut decoder = FrameDecoder::new(limit);
            for piece in bytes.chunks(chunk) {
                decoder.push(piece);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => {
                            // Whatever decodes re-encodes to something that decodes the same.
                            let again = decode_all(&frame.encode());
                            prop_assert_eq!(again, vec![frame]);
                        }
                        Ok(None) => break,
                        Err(error) => {
                            prop_assert_eq!(decoder.next_frame(), Err(error));
                            break;
                        }
                    }
                }
                prop_assert!(decoder.buffered() <= bytes.len());
            }
        }
    }
}
