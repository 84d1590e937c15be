//! What the DTLS transport reads of records before (or beside) the DTLS library: a ClientHello's
//! cipher suites and whether it has an extensions block, plaintext alerts, and the handshake
//! messages a datagram carries in the clear; and the one record it writes itself, a fatal
//! alert.
//!
//! The facts are RFC 6347's (the DTLS 1.2 record, §4.1, and handshake header, §4.2.2) and
//! RFC 5246's (the ClientHello body, §7.4.1.2; alerts, §7.2). Nothing here decrypts: records of
//! an epoch above 0 are opaque. Nothing panics on any bytes.

use std::fmt;

/// Length of a DTLS record header: type, version, epoch, sequence number, length.
pub const RECORD_HEADER_LEN: usize = 13;
/// Length of a DTLS handshake header: type, length, message_seq, fragment offset and length.
pub const HANDSHAKE_HEADER_LEN: usize = 12;

/// Record content type of a ChangeCipherSpec (RFC 5246 §6.2.1).
pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
/// Record content type of an alert.
pub const CONTENT_ALERT: u8 = 21;
/// Record content type of a handshake message.
pub const CONTENT_HANDSHAKE: u8 = 22;
/// Record content type of application data.
pub const CONTENT_APPLICATION_DATA: u8 = 23;

/// Handshake message type of a ClientHello.
pub const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Handshake message type of a ServerHello.
pub const HANDSHAKE_SERVER_HELLO: u8 = 2;
/// Handshake message type of a HelloVerifyRequest (RFC 6347 §4.2.1).
pub const HANDSHAKE_HELLO_VERIFY_REQUEST: u8 = 3;
/// Handshake message type of a CertificateRequest.
pub const HANDSHAKE_CERTIFICATE_REQUEST: u8 = 13;
/// Handshake message type of a ServerHelloDone.
pub const HANDSHAKE_SERVER_HELLO_DONE: u8 = 14;
/// Handshake message type of a ClientKeyExchange.
pub const HANDSHAKE_CLIENT_KEY_EXCHANGE: u8 = 16;

/// Alert description `handshake_failure` (RFC 5246 §7.2.2): no acceptable set of security
/// parameters, such as no shared cipher suite (§7.4.1.3).
pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;
/// Alert description `decode_error`: a message could not be decoded.
pub const ALERT_DECODE_ERROR: u8 = 50;
/// Alert description `internal_error`: an error of the sender's own, unrelated to the peer.
pub const ALERT_INTERNAL_ERROR: u8 = 80;
/// Alert description `bad_record_mac`: a record could not be decrypted (a wrong key).
pub const ALERT_BAD_RECORD_MAC: u8 = 20;
/// Alert description `unknown_psk_identity` (RFC 4279 §2).
pub const ALERT_UNKNOWN_PSK_IDENTITY: u8 = 115;

/// Alert level `fatal`.
const ALERT_FATAL: u8 = 2;

/// The first record of a datagram, as far as its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// The content type (20 to 25 for DTLS 1.2).
    pub content_type: u8,
    /// The epoch: 0 until the sender's ChangeCipherSpec, its records in the clear.
    pub epoch: u16,
    /// The length of the record's fragment.
    pub length: usize,
}

/// Reads the header of the first record in `datagram`: `None` unless it is a DTLS record
/// (a content type of 20 to 25 and a DTLS version, major byte `0xfe`).
pub fn record_header(datagram: &[u8]) -> Option<RecordHeader> {
    let header = datagram.get(..RECORD_HEADER_LEN)?;
    if !(20..=25).contains(&header[0]) || header[1] != 0xfe {
        return None;
    }
    Some(RecordHeader {
        content_type: header[0],
        epoch: u16::from_be_bytes([header[3], header[4]]),
        length: usize::from(u16::from_be_bytes([header[11], header[12]])),
    })
}

/// The plaintext records of `datagram` (epoch 0), as (content type, fragment); a datagram may
/// carry several records (RFC 6347 §4.1.1). Stops at the first record that is not DTLS, is
/// truncated, or is encrypted.
pub fn plaintext_records(datagram: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        let header = record_header(rest)?;
        let end = RECORD_HEADER_LEN.checked_add(header.length)?;
        let fragment = rest.get(RECORD_HEADER_LEN..end)?;
        rest = &rest[end..];
        (header.epoch == 0).then_some((header.content_type, fragment))
    })
}

/// True when any record of `datagram` is of an epoch above 0 (encrypted), such as a Finished
/// sent behind the ClientKeyExchange and ChangeCipherSpec of the same flight.
pub fn has_encrypted_record(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    while let Some(header) = record_header(rest) {
        if header.epoch > 0 {
            return true;
        }
        match rest.get(RECORD_HEADER_LEN + header.length..) {
            Some(next) => rest = next,
            None => return false,
        }
    }
    false
}

/// The first plaintext alert in `datagram`, if any.
pub fn plaintext_alert(datagram: &[u8]) -> Option<Alert> {
    plaintext_records(datagram)
        .find(|(content_type, _)| *content_type == CONTENT_ALERT)
        .and_then(|(_, fragment)| match fragment {
            [level, description, ..] => Some(Alert {
                level: *level,
                description: *description,
            }),
            _ => None,
        })
}

/// The handshake message types that `datagram` carries in the clear (one per plaintext
/// handshake record; a record holds the start of one message or a fragment of it).
pub fn plaintext_handshake_types(datagram: &[u8]) -> impl Iterator<Item = u8> + '_ {
    plaintext_records(datagram)
        .filter(|(content_type, _)| *content_type == CONTENT_HANDSHAKE)
        .filter_map(|(_, fragment)| fragment.first().copied())
}

/// True when `datagram` opens with an epoch-0 handshake record whose message is a ClientHello.
pub fn is_client_hello(datagram: &[u8]) -> bool {
    record_header(datagram).is_some_and(|h| h.content_type == CONTENT_HANDSHAKE && h.epoch == 0)
        && datagram.get(RECORD_HEADER_LEN) == Some(&HANDSHAKE_CLIENT_HELLO)
}

/// A fatal alert record of epoch 0 with `description` (RFC 5246 §7.2), to refuse a handshake
/// before anything else was sent: sequence number 0, version DTLS 1.2.
pub fn fatal_alert(description: u8) -> [u8; RECORD_HEADER_LEN + 2] {
    [
        CONTENT_ALERT,
        0xfe,
        0xfd,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        2,
        ALERT_FATAL,
        description,
    ]
}

/// Rewrites the description of a fatal plaintext alert that is alone in `datagram` (one
/// record, nothing after it); false, and nothing changed, for anything else.
pub fn rewrite_lone_alert(datagram: &mut [u8], description: u8) -> bool {
    let Some(header) = record_header(datagram) else {
        return false;
    };
    let lone = header.content_type == CONTENT_ALERT
        && header.epoch == 0
        && header.length == 2
        && datagram.len() == RECORD_HEADER_LEN + 2
        && datagram[RECORD_HEADER_LEN] == ALERT_FATAL;
    if lone {
        datagram[RECORD_HEADER_LEN + 1] = description;
    }
    lone
}

/// An alert (RFC 5246 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    /// 1 warning, 2 fatal.
    pub level: u8,
    /// What it is about.
    pub description: u8,
}

impl Alert {
    /// True for a fatal alert.
    pub fn is_fatal(self) -> bool {
        self.level == ALERT_FATAL
    }

    /// The RFC name of the description, such as `handshake_failure`.
    pub fn name(self) -> &'static str {
        match self.description {
            0 => "close_notify",
            10 => "unexpected_message",
            20 => "bad_record_mac",
            22 => "record_overflow",
            40 => "handshake_failure",
            42 => "bad_certificate",
            43 => "unsupported_certificate",
            44 => "certificate_revoked",
            45 => "certificate_expired",
            46 => "certificate_unknown",
            47 => "illegal_parameter",
            48 => "unknown_ca",
            49 => "access_denied",
            50 => "decode_error",
            51 => "decrypt_error",
            70 => "protocol_version",
            71 => "insufficient_security",
            80 => "internal_error",
            90 => "user_canceled",
            100 => "no_renegotiation",
            110 => "unsupported_extension",
            115 => "unknown_psk_identity",
            116 => "certificate_required",
            _ => "unknown alert",
        }
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.description)
    }
}

/// The kind of key exchange a cipher suite uses, as far as choosing a configuration goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuiteKind {
    /// A pre-shared key: PSK, ECDHE_PSK, DHE_PSK or RSA_PSK (RFC 4279, 5487, 5489, 6655, 7251).
    Psk,
    /// ECDHE with an ECDSA certificate (RFC 8422, 7251, 7905).
    EcdheEcdsa,
    /// Anything else (RSA certificates, signalling values such as
    /// TLS_EMPTY_RENEGOTIATION_INFO_SCSV).
    Other,
}

/// The kind of `suite`, from the IANA TLS cipher suite registry.
pub fn suite_kind(suite: u16) -> SuiteKind {
    match suite {
        0x008a..=0x0095
        | 0x00a8..=0x00ab
        | 0x00ae..=0x00b9
        | 0xc033..=0xc03b
        | 0xc0a4..=0xc0ab
        | 0xccab..=0xccae
        | 0xd001..=0xd005 => SuiteKind::Psk,
        0xc006..=0xc00a
        | 0xc023
        | 0xc024
        | 0xc02b
        | 0xc02c
        | 0xc048
        | 0xc049
        | 0xc05c
        | 0xc05d
        | 0xc072
        | 0xc073
        | 0xc086
        | 0xc087
        | 0xc0ac..=0xc0af
        | 0xcca9 => SuiteKind::EcdheEcdsa,
        _ => SuiteKind::Other,
    }
}

/// What the DTLS transport needs of a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The cipher suites offered, in the client's order of preference (RFC 5246 §7.4.1.2).
    pub cipher_suites: Vec<u16>,
    /// Whether an extensions block follows the compression methods. RFC 5246 §7.4.1.2 lets a
    /// client leave it out altogether.
    pub has_extensions: bool,
    /// Whether it carries a cookie: the second ClientHello of a handshake (RFC 6347 §4.2.1).
    pub has_cookie: bool,
}

impl ClientHello {
    /// True when any offered suite is of `kind`.
    pub fn offers(&self, kind: SuiteKind) -> bool {
        self.cipher_suites.iter().any(|&s| suite_kind(s) == kind)
    }

    /// The offered suites in hex, `0xc0a8, 0xc0ae`, for diagnoses.
    pub fn suites_hex(&self) -> String {
        let list: Vec<String> = self
            .cipher_suites
            .iter()
            .map(|s| format!("{s:#06x}"))
            .collect();
        list.join(", ")
    }
}

/// Why a datagram's ClientHello could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// The datagram does not open with an epoch-0 ClientHello.
    NotAClientHello,
    /// The ClientHello is split over several fragments (RFC 6347 §4.2.3) and the first does not
    /// hold it whole: its cipher suites cannot be read from this datagram.
    Fragmented,
    /// A field runs past the end of the message, or a length is out of its range; the field.
    Malformed(&'static str),
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloError::NotAClientHello => f.write_str("not a ClientHello"),
            HelloError::Fragmented => f.write_str("a ClientHello in several fragments"),
            HelloError::Malformed(field) => write!(f, "malformed ClientHello ({field})"),
        }
    }
}

/// Reads the ClientHello that `datagram` opens with.
pub fn parse_client_hello(datagram: &[u8]) -> Result<ClientHello, HelloError> {
    if !is_client_hello(datagram) {
        return Err(HelloError::NotAClientHello);
    }
    let record = record_header(datagram).ok_or(HelloError::NotAClientHello)?;
    let fragment = datagram
        .get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + record.length)
        .ok_or(HelloError::Malformed("record length"))?;
    let mut r = Reader(fragment);
    r.take(1, "handshake type")?;
    let length = r.u24("handshake length")?;
    r.take(2, "message_seq")?;
    let offset = r.u24("fragment offset")?;
    let fragment_length = r.u24("fragment length")?;
    if offset != 0 || fragment_length > length {
        return Err(HelloError::Malformed("fragment offset or length"));
    }
    if fragment_length < length {
        return Err(HelloError::Fragmented);
    }
    let mut body = Reader(r.take(length, "handshake body")?);
    body.take(2, "client_version")?;
    body.take(32, "random")?;
    let session_id = body.u8("session_id length")?;
    if session_id > 32 {
        return Err(HelloError::Malformed("session_id length"));
    }
    body.take(usize::from(session_id), "session_id")?;
    let cookie = body.u8("cookie length")?;
    body.take(usize::from(cookie), "cookie")?;
    let suites_len = usize::from(body.u16("cipher_suites length")?);
    if suites_len < 2 || suites_len % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites length"));
    }
    let cipher_suites = body
        .take(suites_len, "cipher_suites")?
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    let compression = body.u8("compression_methods length")?;
    if compression == 0 {
        return Err(HelloError::Malformed("compression_methods length"));
    }
    body.take(usize::from(compression), "compression_methods")?;
    let has_extensions = !body.0.is_empty();
    if has_extensions {
        let extensions = usize::from(body.u16("extensions length")?);
        body.take(extensions, "extensions")?;
    }
    Ok(ClientHello {
        cipher_suites,
        has_extensions,
        has_cookie: cookie > 0,
    })
}

/// A bounds-checked cursor over a message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, field: &'static str) -> Result<usize, HelloError> {
        let b = self.take(3, field)?;
        Ok((usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// A ClientHello record offering `suites`, with `extensions` (or no extensions block).
#[cfg(test)]
pub(crate) fn test_client_hello(suites: &[u16], extensions: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend([0x11; 32]);
    body.push(0); // session_id
    body.push(0); // cookie
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    if let Some(ext) = extensions {
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
    }
    let len = body.len() as u32;
    let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
    handshake.extend(&len.to_be_bytes()[1..]);
    handshake.extend([0, 0, 0, 0, 0]);
    handshake.extend(&len.to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![CONTENT_HANDSHAKE, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(suites: &[u16], extensions: Option<&[u8]>) -> Vec<u8> {
        test_client_hello(suites, extensions)
    }

    #[test]
    fn reads_suites_and_extensions() {
        let h = parse_client_hello(&hello(&[0xc0a8, 0xc0ae], Some(&[0, 0x17, 0, 0]))).unwrap();
        assert_eq!(h.cipher_suites, [0xc0a8, 0xc0ae]);
        assert!(h.has_extensions);
        assert!(!h.has_cookie);
        assert!(h.offers(SuiteKind::Psk) && h.offers(SuiteKind::EcdheEcdsa));
        assert_eq!(h.suites_hex(), "0xc0a8, 0xc0ae");
        let bare = parse_client_hello(&hello(&[0xc0a8], None)).unwrap();
        assert!(!bare.has_extensions);
        assert!(!bare.offers(SuiteKind::EcdheEcdsa));
    }

    #[test]
    fn refuses_what_is_not_whole() {
        let good = hello(&[0xc0a8], Some(&[]));
        for cut in 0..good.len() {
            let r = parse_client_hello(&good[..cut]);
            assert!(r.is_err(), "cut at {cut}: {r:?}");
        }
        assert_eq!(
            parse_client_hello(&[0x17, 0xfe, 0xfd]),
            Err(HelloError::NotAClientHello)
        );
        // A first fragment shorter than the message.
        let mut fragmented = good.clone();
        fragmented[RECORD_HEADER_LEN + 11] -= 1;
        let n = fragmented.len();
        fragmented[11..13].copy_from_slice(&((n - RECORD_HEADER_LEN - 1) as u16).to_be_bytes());
        fragmented.pop();
        assert_eq!(parse_client_hello(&fragmented), Err(HelloError::Fragmented));
        // An odd cipher-suite length.
        let mut odd = hello(&[0xc0a8], Some(&[]));
        let at = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + 2 + 32 + 2 + 1;
        odd[at] = 3;
        assert!(matches!(
            parse_client_hello(&odd),
            Err(HelloError::Malformed(_))
        ));
    }

    #[test]
    fn alerts_read_and_written() {
        let alert = fatal_alert(ALERT_HANDSHAKE_FAILURE);
        assert_eq!(
            plaintext_alert(&alert),
            Some(Alert {
                level: 2,
                description: 40
            })
        );
        assert_eq!(
            plaintext_alert(&alert).unwrap().to_string(),
            "handshake_failure (40)"
        );
        let mut rewritten = alert;
        assert!(rewrite_lone_alert(
            &mut rewritten,
            ALERT_UNKNOWN_PSK_IDENTITY
        ));
        assert_eq!(plaintext_alert(&rewritten).unwrap().description, 115);
        let mut two = alert.to_vec();
        two.extend(alert);
        assert!(!rewrite_lone_alert(&mut two, 0));
        // Behind a handshake record in the same datagram.
        let mut both = hello(&[0xc0a8], None);
        both.extend(alert);
        assert_eq!(plaintext_alert(&both).unwrap().description, 40);
        assert_eq!(
            plaintext_handshake_types(&both).collect::<Vec<_>>(),
            [HANDSHAKE_CLIENT_HELLO]
        );
        // Encrypted records are opaque, but seen.
        let mut epoch1 = alert;
        epoch1[4] = 1;
        let mut flight = hello(&[0xc0a8], None);
        assert!(!has_encrypted_record(&flight));
        flight.extend(epoch1);
        assert!(has_encrypted_record(&flight));
        assert_eq!(plaintext_alert(&epoch1), None);
        assert_eq!(plaintext_alert(b"\x40\x00\x12\x34"), None);
    }

    #[test]
    fn suite_kinds() {
        assert_eq!(suite_kind(0xc0a8), SuiteKind::Psk);
        assert_eq!(suite_kind(0x00a8), SuiteKind::Psk);
        assert_eq!(suite_kind(0xc0ae), SuiteKind::EcdheEcdsa);
        assert_eq!(suite_kind(0xc02b), SuiteKind::EcdheEcdsa);
        assert_eq!(suite_kind(0x002f), SuiteKind::Other);
        assert_eq!(suite_kind(0x00ff), SuiteKind::Other);
    }
}
