//! Wire codecs: bytes in, typed messages out, and back.
//!
//! - [`udp`]: RFC 7252 datagram classification (pings, resets, empty ACKs, messages).
//! - [`tcp`]: RFC 8323 framing over a byte stream, with an incremental [`tcp::FrameDecoder`].
//! - [`signal`]: RFC 8323 signalling messages 7.01–7.05 (CSM, Ping, Pong, Release, Abort).
//! - [`dtls`]: what the DTLS transport reads of records itself: a ClientHello's cipher suites
//!   and extensions, plaintext alerts (RFC 6347, RFC 5246).
//! - [`options`]: which request / response options the stack recognises, and the RFC 7252
//!   §5.4.1 verdict on a message carrying a critical one it does not.
//!
//! This module holds what the three share: the option format (RFC 7252 §3.1, reused unchanged
//! by RFC 8323) and unsigned-integer option values (RFC 7252 §3.2).
//!
//! Nothing here panics on bytes from the network: every read goes through a bounds-checked
//! cursor, and lengths are checked before anything is allocated for them.

use std::fmt;

pub mod dtls;
pub mod options;
pub mod signal;
pub mod tcp;
pub mod udp;

/// The byte that separates options from a non-empty payload (RFC 7252 §3).
pub const PAYLOAD_MARKER: u8 = 0xFF;

/// The longest option value the option format can express: 269 + 0xFFFF bytes.
pub const MAX_OPTION_VALUE_LEN: usize = 269 + 0xFFFF;

/// The longest token RFC 7252 / RFC 8323 allow; token lengths 9..=15 are reserved.
pub const MAX_TOKEN_LEN: usize = 8;

/// Encodes `value` as a CoAP uint option value: big-endian, shortest form, `0` as no bytes
/// (RFC 7252 §3.2).
pub fn encode_uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0x00).count();
    bytes.iter().skip(skip).copied().collect()
}

/// Decodes a CoAP uint option value. Leading zero bytes are tolerated; `None` if the value is
/// longer than four bytes (it cannot be a `u32`).
pub fn decode_uint(bytes: &[u8]) -> Option<u32> {
    if bytes.len() > 4 {
        return None;
    }
    Some(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

/// A bounds-checked cursor over received bytes: every read returns `None` instead of
/// panicking when the input runs out.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        let mut out = [0u8; 4];
        out.copy_from_slice(bytes);
        Some(u32::from_be_bytes(out))
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(head)
    }
}

/// Why an options-and-payload section could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OptionError {
    /// Option delta nibble 15 in a byte that is not the payload marker.
    ReservedDelta,
    /// Option length nibble 15 in a byte that is not the payload marker.
    ReservedLength,
    /// An extended delta/length or an option value runs past the end of the message.
    Truncated,
    /// The option number went past 65535.
    NumberOverflow,
    /// A payload marker with no payload after it (RFC 7252 §3: a format error).
    EmptyPayload,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptionError::ReservedDelta => "option delta 15 is reserved",
            OptionError::ReservedLength => "option length 15 is reserved",
            OptionError::Truncated => "option truncated",
            OptionError::NumberOverflow => "option number exceeds 65535",
            OptionError::EmptyPayload => "payload marker followed by an empty payload",
        })
    }
}

/// Reads the extended part of an option delta or length whose nibble is `nibble` (< 15).
fn extended(nibble: u8, reader: &mut Reader<'_>) -> Option<u32> {
    match nibble {
        13 => reader.u8().map(|b| u32::from(b) + 13),
        14 => reader.u16().map(|v| u32::from(v) + 269),
        n => Some(u32::from(n)),
    }
}

/// Walks the options of `bytes` (everything after the token), calling `each` with every option
/// number and value in wire order, and returns the payload (empty if there is no marker).
///
/// Checking a message and parsing it are the same walk: pass a no-op closure to only check.
pub(crate) fn walk_options<'a>(
    bytes: &'a [u8],
    mut each: impl FnMut(u16, &'a [u8]),
) -> Result<&'a [u8], OptionError> {
    let mut reader = Reader::new(bytes);
    let mut number: u32 = 0;
    while let Some(byte) = reader.u8() {
        if byte == PAYLOAD_MARKER {
            let payload = reader.remaining();
            if payload.is_empty() {
                return Err(OptionError::EmptyPayload);
            }
            return Ok(payload);
        }
        let (delta_nibble, length_nibble) = (byte >> 4, byte & 0x0F);
        if delta_nibble == 15 {
            return Err(OptionError::ReservedDelta);
        }
        if length_nibble == 15 {
            return Err(OptionError::ReservedLength);
        }
        let delta = extended(delta_nibble, &mut reader).ok_or(OptionError::Truncated)?;
        let length = extended(length_nibble, &mut reader).ok_or(OptionError::Truncated)?;
        number += delta;
        let this = u16::try_from(number).map_err(|_| OptionError::NumberOverflow)?;
        let length = usize::try_from(length).map_err(|_| OptionError::Truncated)?;
        let value = reader.take(length).ok_or(OptionError::Truncated)?;
        each(this, value);
    }
    Ok(&[])
}

/// Bytes taken by the extended field of an option delta or length of `value`.
fn extended_len(value: usize) -> usize {
    match value {
        0..=12 => 0,
        13..=268 => 1,
        _ => 2,
    }
}

/// Nibble and extended bytes for an option delta or length (`value` ≤ [`MAX_OPTION_VALUE_LEN`]).
fn split_extended(value: usize) -> (u8, Option<u8>, Option<u16>) {
    match value {
        0..=12 => (value as u8, None, None),
        13..=268 => (13, Some((value - 13) as u8), None),
        _ => (
            14,
            None,
            Some(u16::try_from(value - 269).unwrap_or(u16::MAX)),
        ),
    }
}

/// Encoded size of `options` (sorted by number), values clamped to [`MAX_OPTION_VALUE_LEN`].
pub(crate) fn options_len<'a>(options: impl Iterator<Item = (u16, &'a [u8])>) -> usize {
    let mut previous = 0u16;
    options
        .map(|(number, value)| {
            let delta = usize::from(number.saturating_sub(previous));
            previous = number;
            let len = value.len().min(MAX_OPTION_VALUE_LEN);
            1 + extended_len(delta) + extended_len(len) + len
        })
        .sum()
}

/// Appends `options` (sorted by number) in the RFC 7252 §3.1 format. Values longer than
/// [`MAX_OPTION_VALUE_LEN`] cannot be expressed and are truncated to it.
pub(crate) fn encode_options<'a>(
    options: impl Iterator<Item = (u16, &'a [u8])>,
    out: &mut Vec<u8>,
) {
    let mut previous = 0u16;
    for (number, value) in options {
        let delta = usize::from(number.saturating_sub(previous));
        previous = number;
        let value = value.get(..MAX_OPTION_VALUE_LEN).unwrap_or(value);
        let (delta_nibble, delta_u8, delta_u16) = split_extended(delta);
        let (len_nibble, len_u8, len_u16) = split_extended(value.len());
        out.push((delta_nibble << 4) | len_nibble);
        out.extend(delta_u8);
        out.extend(delta_u16.map(u16::to_be_bytes).iter().flatten());
        out.extend(len_u8);
        out.extend(len_u16.map(u16::to_be_bytes).iter().flatten());
        out.extend_from_slice(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_is_minimal() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(0x02), vec![0x02]);
        assert_eq!(encode_uint(0x0480), vec![0x04, 0x80]);
        assert_eq!(encode_uint(0x0080_0100), vec![0x80, 0x01, 0x00]);
        assert_eq!(encode_uint(u32::MAX), vec![0xFF, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn uint_decodes_up_to_four_bytes() {
        assert_eq!(decode_uint(&[]), Some(0));
        assert_eq!(decode_uint(&[0x00, 0x04, 0x80]), Some(0x0480));
        assert_eq!(decode_uint(&[0xFF, 0xFF, 0xFF, 0xFF]), Some(u32::MAX));
        assert_eq!(decode_uint(&[0x01, 0x00, 0x00, 0x00, 0x00]), None);
    }

    #[test]
    fn options_extended_delta_and_length() {
        let long = vec![0xAB; 300];
        let options: Vec<(u16, &[u8])> = vec![(2, &[]), (20, &[0x01]), (400, &long), (400, &[])];
        let mut out = Vec::new();
        encode_options(options.iter().copied(), &mut out);
        assert_eq!(out.len(), options_len(options.iter().copied()));
        // 2: delta 2 len 0; 20: delta 18 -> 13 + 0x05; 400: delta 380 -> 14 + 0x006F, len 300 -> 14 + 0x001F.
        assert_eq!(&out[..5], &[0x20, 0xD1, 0x05, 0x01, 0xEE]);
        assert_eq!(&out[5..9], &[0x00, 0x6F, 0x00, 0x1F]);
        let mut seen = Vec::new();
        let payload = walk_options(&out, |n, v| seen.push((n, v))).unwrap();
        assert!(payload.is_empty());
        assert_eq!(seen, options);
    }

    #[test]
    fn options_errors() {
        let check = |bytes: &[u8]| walk_options(bytes, |_, _| {}).map(<[u8]>::to_vec);
        assert_eq!(check(&[0xFF]), Err(OptionError::EmptyPayload));
        assert_eq!(check(&[0xF0]), Err(OptionError::ReservedDelta));
        assert_eq!(check(&[0x0F]), Err(OptionError::ReservedLength));
        assert_eq!(check(&[0x12]), Err(OptionError::Truncated));
        assert_eq!(check(&[0xD0]), Err(OptionError::Truncated));
        assert_eq!(check(&[0xE0, 0x00]), Err(OptionError::Truncated));
        assert_eq!(
            check(&[0xE0, 0xFF, 0xFF, 0xE0, 0xFF, 0xFF]),
            Err(OptionError::NumberOverflow)
        );
        assert_eq!(check(&[0x10, 0xFF, 0x61]), Ok(vec![0x61]));
    }
}
