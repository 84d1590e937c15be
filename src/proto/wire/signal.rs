//! RFC 8323 §5 signalling messages: CSM, Ping, Pong, Release and Abort (codes 7.01–7.05).
//!
//! Signalling option numbers mean something different for every code (number 2 is
//! Max-Message-Size in a CSM but Custody in a Ping), so options are interpreted here by number,
//! never through the names of the request / response options.
//!
//! Criticality follows RFC 7252 §5.4.6 for signalling options too (RFC 8323 §5.2): an odd number
//! is critical, an even one elective. An unknown critical option is an error
//! ([`SignalError::UnknownCriticalOption`]): RFC 8323 §5.2 says the receiver MUST abort the
//! connection, and in a CSM the Abort names the option in Bad-CSM-Option (§5.6). Unknown
//! elective options are ignored, so RFC 8974's Extended-Token-Length (CSM option 6) is accepted
//! as if it were absent. Every option RFC 8323 defines is even, hence elective.

// RFC 7252 §5.4.6, which RFC 8323 §5.2 applies to signalling options: odd numbers are critical.
use super::options::is_critical;
use super::tcp::Frame;
use super::{decode_uint, encode_uint};

/// 7.01 Capabilities and Settings Message.
pub const CSM: u8 = 0xE1;
/// 7.02 Ping.
pub const PING: u8 = 0xE2;
/// 7.03 Pong.
pub const PONG: u8 = 0xE3;
/// 7.04 Release.
pub const RELEASE: u8 = 0xE4;
/// 7.05 Abort.
pub const ABORT: u8 = 0xE5;

/// Max-Message-Size assumed until the peer's CSM says otherwise (RFC 8323 §5.3.1).
pub const BASE_MAX_MESSAGE_SIZE: u32 = 1152;

/// CSM option 2: Max-Message-Size (uint).
pub const OPTION_MAX_MESSAGE_SIZE: u16 = 2;
/// CSM option 4: Block-Wise-Transfer (empty).
pub const OPTION_BLOCK_WISE_TRANSFER: u16 = 4;
/// Ping/Pong option 2: Custody (empty).
pub const OPTION_CUSTODY: u16 = 2;
/// Release option 2: Alternative-Address (string, repeatable).
pub const OPTION_ALTERNATIVE_ADDRESS: u16 = 2;
/// Release option 4: Hold-Off (uint, seconds).
pub const OPTION_HOLD_OFF: u16 = 4;
/// Abort option 2: Bad-CSM-Option (uint, an option number).
pub const OPTION_BAD_CSM_OPTION: u16 = 2;

/// A parsed signalling message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// 7.01 CSM.
    Csm {
        /// Largest message the sender can receive; `None`: [`BASE_MAX_MESSAGE_SIZE`].
        max_message_size: Option<u32>,
        /// Whether the sender supports block-wise transfer (RFC 8323 §6).
        block_wise_transfer: bool,
    },
    /// 7.02 Ping.
    Ping {
        /// Answer only after the requests received before this Ping are processed.
        custody: bool,
    },
    /// 7.03 Pong.
    Pong {
        /// Sent in answer to a Ping with Custody (libcoap always sets it).
        custody: bool,
    },
    /// 7.04 Release: the sender will close the connection.
    Release {
        /// Where to reconnect instead, in order.
        alternative_addresses: Vec<String>,
        /// Seconds to wait before reconnecting.
        hold_off: Option<u32>,
        /// Human-readable reason (the payload).
        diagnostic: String,
    },
    /// 7.05 Abort: the sender is closing the connection because of an error.
    Abort {
        /// The CSM option that caused the abort.
        bad_csm_option: Option<u16>,
        /// Human-readable reason (the payload).
        diagnostic: String,
    },
}

/// Why a frame is not a signal this module understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The code class is not 7.
    #[error("code {code:#04x} is not a signalling code")]
    NotSignal {
        /// The frame's code.
        code: u8,
    },
    /// 7.00 or 7.06 and above.
    #[error("unknown signalling code {code:#04x}")]
    UnknownCode {
        /// The frame's code.
        code: u8,
    },
    /// An odd (critical) option not defined for that code: RFC 8323 §5.2 makes it a reason to
    /// abort the connection (with Bad-CSM-Option = `number` when `code` is a CSM).
    #[error("unknown critical option {number} in signal {code:#04x}")]
    UnknownCriticalOption {
        /// The frame's code.
        code: u8,
        /// The option number.
        number: u16,
    },
    /// A known option with a value of the wrong form.
    #[error("bad value for option {number}: {reason}")]
    BadOptionValue {
        /// The option number.
        number: u16,
        /// What was wrong.
        reason: String,
    },
}

impl Signal {
    /// The signalling code of this message.
    pub fn code(&self) -> u8 {
        match self {
            Signal::Csm { .. } => CSM,
            Signal::Ping { .. } => PING,
            Signal::Pong { .. } => PONG,
            Signal::Release { .. } => RELEASE,
            Signal::Abort { .. } => ABORT,
        }
    }

    /// Parses a signalling frame. The token is not looked at (a Pong's token is the caller's
    /// business; libcoap never echoes it).
    ///
    /// A non-repeatable option that repeats keeps its first value. Release and Abort take the
    /// payload as their diagnostic, decoded as lossy UTF-8; other signals ignore the payload.
    pub fn parse(frame: &Frame) -> Result<Signal, SignalError> {
        let code = frame.code;
        if !frame.is_signal() {
            return Err(SignalError::NotSignal { code });
        }
        if !(CSM..=ABORT).contains(&code) {
            return Err(SignalError::UnknownCode { code });
        }
        let options = Options {
            frame,
            known: match code {
                CSM => &[OPTION_MAX_MESSAGE_SIZE, OPTION_BLOCK_WISE_TRANSFER],
                PING | PONG => &[OPTION_CUSTODY],
                RELEASE => &[OPTION_ALTERNATIVE_ADDRESS, OPTION_HOLD_OFF],
                _ => &[OPTION_BAD_CSM_OPTION],
            },
        };
        options.check_critical()?;
        let diagnostic = || String::from_utf8_lossy(&frame.payload).into_owned();
        Ok(match code {
            CSM => Signal::Csm {
                max_message_size: options.uint(OPTION_MAX_MESSAGE_SIZE)?,
                block_wise_transfer: options.flag(OPTION_BLOCK_WISE_TRANSFER)?,
            },
            PING => Signal::Ping {
                custody: options.flag(OPTION_CUSTODY)?,
            },
            PONG => Signal::Pong {
                custody: options.flag(OPTION_CUSTODY)?,
            },
            RELEASE => Signal::Release {
                alternative_addresses: options.strings(OPTION_ALTERNATIVE_ADDRESS)?,
                hold_off: options.uint(OPTION_HOLD_OFF)?,
                diagnostic: diagnostic(),
            },
            _ => Signal::Abort {
                bad_csm_option: options
                    .uint(OPTION_BAD_CSM_OPTION)?
                    .map(|number| {
                        u16::try_from(number).map_err(|_| SignalError::BadOptionValue {
                            number: OPTION_BAD_CSM_OPTION,
                            reason: format!("{number} is not an option number"),
                        })
                    })
                    .transpose()?,
                diagnostic: diagnostic(),
            },
        })
    }

    /// The frame carrying this signal with `token` (uints minimally encoded, `0` as empty).
    pub fn to_frame(&self, token: &[u8]) -> Frame {
        let mut frame = Frame::new(self.code());
        frame.token = token.to_vec();
        let flag = |number: u16, set: bool| set.then(|| (number, Vec::new()));
        let uint = |number: u16, value: Option<u32>| value.map(|v| (number, encode_uint(v)));
        match self {
            Signal::Csm {
                max_message_size,
                block_wise_transfer,
            } => {
                frame
                    .options
                    .extend(uint(OPTION_MAX_MESSAGE_SIZE, *max_message_size));
                frame
                    .options
                    .extend(flag(OPTION_BLOCK_WISE_TRANSFER, *block_wise_transfer));
            }
            Signal::Ping { custody } | Signal::Pong { custody } => {
                frame.options.extend(flag(OPTION_CUSTODY, *custody));
            }
            Signal::Release {
                alternative_addresses,
                hold_off,
                diagnostic,
            } => {
                frame.options.extend(
                    alternative_addresses
                        .iter()
                        .map(|address| (OPTION_ALTERNATIVE_ADDRESS, address.as_bytes().to_vec())),
                );
                frame.options.extend(uint(OPTION_HOLD_OFF, *hold_off));
                frame.payload = diagnostic.as_bytes().to_vec();
            }
            Signal::Abort {
                bad_csm_option,
                diagnostic,
            } => {
                frame
                    .options
                    .extend(uint(OPTION_BAD_CSM_OPTION, bad_csm_option.map(u32::from)));
                frame.payload = diagnostic.as_bytes().to_vec();
            }
        }
        frame
    }

    /// The encoded frame carrying this signal with `token`.
    pub fn encode(&self, token: &[u8]) -> Vec<u8> {
        self.to_frame(token).encode()
    }
}

/// The options of one signalling frame, read against the numbers known for its code.
struct Options<'a> {
    frame: &'a Frame,
    known: &'static [u16],
}

impl<'a> Options<'a> {
    /// The first unknown critical option, if any.
    fn check_critical(&self) -> Result<(), SignalError> {
        match self
            .frame
            .options
            .iter()
            .find(|(number, _)| is_critical(*number) && !self.known.contains(number))
        {
            Some((number, _)) => Err(SignalError::UnknownCriticalOption {
                code: self.frame.code,
                number: *number,
            }),
            None => Ok(()),
        }
    }

    fn values(&self, number: u16) -> impl Iterator<Item = &'a [u8]> {
        self.frame
            .options
            .iter()
            .filter(move |(n, _)| *n == number)
            .map(|(_, value)| value.as_slice())
    }

    fn uint(&self, number: u16) -> Result<Option<u32>, SignalError> {
        self.values(number)
            .next()
            .map(|value| {
                decode_uint(value).ok_or_else(|| SignalError::BadOptionValue {
                    number,
                    reason: format!("uint of {} bytes", value.len()),
                })
            })
            .transpose()
    }

    fn flag(&self, number: u16) -> Result<bool, SignalError> {
        match self.values(number).next() {
            None => Ok(false),
            Some([]) => Ok(true),
            Some(value) => Err(SignalError::BadOptionValue {
                number,
                reason: format!("empty option has {} bytes", value.len()),
            }),
        }
    }

    fn strings(&self, number: u16) -> Result<Vec<String>, SignalError> {
        self.values(number)
            .map(|value| {
                String::from_utf8(value.to_vec()).map_err(|_| SignalError::BadOptionValue {
                    number,
                    reason: "not UTF-8".to_owned(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tcp::FrameDecoder;
    use super::*;

    fn decode(bytes: &[u8]) -> Frame {
        let mut decoder = FrameDecoder::new(BASE_MAX_MESSAGE_SIZE);
        decoder.push(bytes);
        let frame = decoder.next_frame().unwrap().unwrap();
        assert_eq!(decoder.buffered(), 0);
        frame
    }

    /// Checks `signal` with `token` encodes to `bytes` and `bytes` parses back to it.
    fn both_ways(signal: Signal, token: &[u8], bytes: &[u8]) {
        assert_eq!(signal.encode(token), bytes, "{signal:?}");
        let frame = decode(bytes);
        assert_eq!(frame.token, token);
        assert_eq!(Signal::parse(&frame), Ok(signal));
    }

    #[test]
    fn wire_vectors() {
        both_ways(
            Signal::Csm {
                max_message_size: None,
                block_wise_transfer: false,
            },
            &[],
            &[0x00, 0xE1],
        );
        both_ways(
            Signal::Csm {
                max_message_size: Some(1152),
                block_wise_transfer: true,
            },
            &[],
            &[0x40, 0xE1, 0x22, 0x04, 0x80, 0x20],
        );
        both_ways(Signal::Ping { custody: false }, &[], &[0x00, 0xE2]);
        both_ways(
            Signal::Ping { custody: true },
            &[0x12, 0x34],
            &[0x12, 0xE2, 0x12, 0x34, 0x20],
        );
        both_ways(
            Signal::Pong { custody: false },
            &[0x12, 0x34],
            &[0x02, 0xE3, 0x12, 0x34],
        );
        both_ways(
            Signal::Release {
                alternative_addresses: vec![],
                hold_off: None,
                diagnostic: String::new(),
            },
            &[],
            &[0x00, 0xE4],
        );
        both_ways(
            Signal::Abort {
                bad_csm_option: Some(2),
                diagnostic: String::new(),
            },
            &[],
            &[0x20, 0xE5, 0x21, 0x02],
        );
    }

    #[test]
    fn libcoap_vectors() {
        // Pong with Custody and no token, whatever the Ping's token was.
        both_ways(Signal::Pong { custody: true }, &[], &[0x10, 0xE3, 0x20]);
        // CSM: Max-Message-Size 8388864 (0x800100) + Block-Wise-Transfer.
        both_ways(
            Signal::Csm {
                max_message_size: Some(8_388_864),
                block_wise_transfer: true,
            },
            &[],
            &[0x50, 0xE1, 0x23, 0x80, 0x01, 0x00, 0x20],
        );
    }

    #[test]
    fn release_and_abort_with_diagnostics() {
        both_ways(
            Signal::Release {
                alternative_addresses: vec!["coap+tcp://[::1]".to_owned(), "x".to_owned()],
                hold_off: Some(30),
                diagnostic: "bye".to_owned(),
            },
            &[0x01],
            &[
                0xD1, 0x0D, 0xE4, 0x01, // Len 26, TKL 1, token
                0x2D, 0x03, b'c', b'o', b'a', b'p', b'+', b't', b'c', b'p', b':', b'/', b'/', b'[',
                b':', b':', b'1', b']', // Alternative-Address, 16 bytes
                0x01, b'x', // Alternative-Address again
                0x21, 0x1E, // Hold-Off 30
                0xFF, b'b', b'y', b'e',
            ],
        );
        let frame = decode(&[0x30, 0xE5, 0x20, 0xFF, 0xFF]);
        assert_eq!(
            Signal::parse(&frame),
            Ok(Signal::Abort {
                bad_csm_option: Some(0),
                diagnostic: "\u{FFFD}".to_owned(),
            })
        );
    }

    #[test]
    fn codes_outside_the_signals() {
        assert_eq!(
            Signal::parse(&Frame::new(0x45)),
            Err(SignalError::NotSignal { code: 0x45 })
        );
        for code in [0xE0, 0xE6, 0xFF] {
            assert_eq!(
                Signal::parse(&Frame::new(code)),
                Err(SignalError::UnknownCode { code })
            );
        }
    }

    #[test]
    fn unknown_options() {
        // Elective (even) options are ignored, critical (odd) ones refused per code.
        let mut frame = Frame::new(CSM);
        // Max-Message-Size 1152, RFC 8974 Extended-Token-Length (6, elective), 8 (elective).
        frame.options = vec![(2, vec![0x04, 0x80]), (6, vec![0x01]), (8, vec![])];
        assert_eq!(
            Signal::parse(&frame),
            Ok(Signal::Csm {
                max_message_size: Some(1152),
                block_wise_transfer: false
            })
        );
        frame.options.push((9, vec![]));
        assert_eq!(
            Signal::parse(&frame),
            Err(SignalError::UnknownCriticalOption {
                code: CSM,
                number: 9
            })
        );
        // An odd option is critical in every signal; 4 (Block-Wise-Transfer in a CSM) is
        // elective and means nothing in a Ping: ignored.
        for code in [PING, PONG, RELEASE, ABORT] {
            let mut signal = Frame::new(code);
            signal.options = vec![(4, vec![]), (3, vec![0x01])];
            assert_eq!(
                Signal::parse(&signal),
                Err(SignalError::UnknownCriticalOption { code, number: 3 })
            );
            signal.options.pop();
            assert!(Signal::parse(&signal).is_ok(), "{code:#04x}");
        }
        // Option numbers that take an extension byte are judged by parity too.
        let mut csm = Frame::new(CSM);
        csm.options = vec![(14, vec![]), (300, vec![])];
        assert!(Signal::parse(&csm).is_ok());
        csm.options.push((301, vec![]));
        assert_eq!(
            Signal::parse(&csm),
            Err(SignalError::UnknownCriticalOption {
                code: CSM,
                number: 301
            })
        );
    }

    #[test]
    fn bad_option_values() {
        let mut csm = Frame::new(CSM);
        csm.options = vec![(2, vec![0x01, 0x00, 0x00, 0x00, 0x00])];
        assert!(matches!(
            Signal::parse(&csm),
            Err(SignalError::BadOptionValue { number: 2, .. })
        ));
        let mut pong = Frame::new(PONG);
        pong.options = vec![(2, vec![0x00])];
        assert!(matches!(
            Signal::parse(&pong),
            Err(SignalError::BadOptionValue { number: 2, .. })
        ));
        let mut release = Frame::new(RELEASE);
        release.options = vec![(2, vec![0xC3, 0x28])];
        assert!(matches!(
            Signal::parse(&release),
            Err(SignalError::BadOptionValue { number: 2, .. })
        ));
        let mut abort = Frame::new(ABORT);
        abort.options = vec![(2, vec![0x01, 0x00, 0x00])];
        assert!(matches!(
            Signal::parse(&abort),
            Err(SignalError::BadOptionValue { number: 2, .. })
        ));
    }

    #[test]
    fn repeated_option_keeps_first_value() {
        let mut csm = Frame::new(CSM);
        csm.options = vec![(2, vec![0x04, 0x80]), (2, vec![0x08, 0x00])];
        assert_eq!(
            Signal::parse(&csm),
            Ok(Signal::Csm {
                max_message_size: Some(1152),
                block_wise_transfer: false
            })
        );
    }

    fn arb_signal() -> impl Strategy<Value = Signal> {
        let text = "\\PC{0,40}";
        prop_oneof![
            (prop::option::of(any::<u32>()), any::<bool>()).prop_map(
                |(max_message_size, block_wise_transfer)| Signal::Csm {
                    max_message_size,
                    block_wise_transfer
                }
            ),
            any::<bool>().prop_map(|custody| Signal::Ping { custody }),
            any::<bool>().prop_map(|custody| Signal::Pong { custody }),
            (
                prop::collection::vec("\\PC{0,30}", 0..4),
                prop::option::of(any::<u32>()),
                text,
            )
                .prop_map(|(alternative_addresses, hold_off, diagnostic)| {
                    Signal::Release {
                        alternative_addresses,
                        hold_off,
                        diagnostic,
                    }
                }),
            (prop::option::of(any::<u16>()), text).prop_map(|(bad_csm_option, diagnostic)| {
                Signal::Abort {
                    bad_csm_option,
                    diagnostic,
                }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn prop_round_trip(signal in arb_signal(), token in prop::collection::vec(any::<u8>(), 0..=8)) {
            let bytes = signal.encode(&token);
            let mut decoder = FrameDecoder::new(u32::MAX);
            decoder.push(&bytes);
            let frame = decoder.next_frame().unwrap().unwrap();
            prop_assert_eq!(&frame, &signal.to_frame(&token));
            prop_assert_eq!(frame.token, token);
            prop_assert_eq!(Signal::parse(&signal.to_frame(&[])), Ok(signal));
        }

        #[test]
        fn prop_parse_never_panics(
            code in prop_oneof![0xE0u8..=0xFF, any::<u8>()],
            options in prop::collection::vec(
                (0u16..12, prop::collection::vec(any::<u8>(), 0..6)), 0..5),
            payload in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut frame = Frame::new(code);
            frame.options = options;
            frame.payload = payload;
            match Signal::parse(&frame) {
                Ok(signal) => {
                    prop_assert_eq!(signal.code(), code);
                    // Every signalling option RFC 8323 defines is even: a parsed signal
                    // carried no odd (critical) option at all.
                    prop_assert!(frame.options.iter().all(|(n, _)| !is_critical(*n)));
                }
                Err(SignalError::UnknownCriticalOption { number, .. }) => {
                    prop_assert!(is_critical(number));
                    prop_assert!(frame.options.iter().any(|(n, _)| *n == number));
                }
                Err(_) => {}
            }
        }

        #[test]
        fn prop_decoded_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let mut decoder = FrameDecoder::new(BASE_MAX_MESSAGE_SIZE);
            decoder.push(&bytes);
            while let Ok(Some(frame)) = decoder.next_frame() {
                let _ = Signal::parse(&frame);
            }
        }
    }
}
