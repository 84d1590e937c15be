//! Which request / response options the stack recognises (RFC 7252 §5.4.1), and what an
//! unrecognised critical one means.
//!
//! An option is critical when its number is odd (RFC 7252 §5.4.6). A critical option the
//! receiver does not recognise must not be ignored: a Confirmable request carrying one gets
//! 4.02 Bad Option, a Non-confirmable message or a response carrying one is rejected. An
//! elective (even) option nobody recognises is ignored.
//!
//! "Recognised" here means *processed*: [`RECOGNISED`] lists the options the stack acts on or
//! hands to the application in [`crate::Request`] / [`crate::Response`], nothing more. The
//! options of RFC 7252 that would change what a request means but that the stack does not
//! implement are left out on purpose, so that they get 4.02 instead of being silently dropped:
//!
//! - OSCORE (9), Q-Block1/Q-Block2 (19, 31), EDHOC (21), and every other critical number.
//!
//! If-Match (1) and If-None-Match (5), RFC 7252 §5.10.8, are recognised here and handed to the
//! resource, which alone knows its entity tags; a resource that does not say it evaluates them
//! ([`Resource::conditional`](crate::Resource::conditional)) answers 4.02 Bad Option, so that a
//! conditional request is never applied unconditionally.
//!
//! Proxy-Uri (35) and Proxy-Scheme (39) are recognised, but this stack is not a forward-proxy:
//! a request carrying one gets 5.05 Proxying Not Supported (RFC 7252 §5.10.2).
//!
//! Two more rules make a recognised option count as unrecognised: an occurrence beyond the
//! first of a non-repeatable option (§5.4.5), and, in a request, a value whose length is outside
//! the option's range (§5.4.3).

use coap_lite::Packet;

/// If-Match (recognised; evaluated by resources that are [`conditional`](crate::Resource::conditional)).
pub const IF_MATCH: u16 = 1;
/// Uri-Host.
pub const URI_HOST: u16 = 3;
/// ETag.
pub const ETAG: u16 = 4;
/// If-None-Match (recognised; evaluated by resources that are [`conditional`](crate::Resource::conditional)).
pub const IF_NONE_MATCH: u16 = 5;
/// Observe (RFC 7641).
pub const OBSERVE: u16 = 6;
/// Uri-Port.
pub const URI_PORT: u16 = 7;
/// Location-Path.
pub const LOCATION_PATH: u16 = 8;
/// Uri-Path.
pub const URI_PATH: u16 = 11;
/// Content-Format.
pub const CONTENT_FORMAT: u16 = 12;
/// Max-Age.
pub const MAX_AGE: u16 = 14;
/// Uri-Query.
pub const URI_QUERY: u16 = 15;
/// Accept.
pub const ACCEPT: u16 = 17;
/// Location-Query.
pub const LOCATION_QUERY: u16 = 20;
/// Block2 (RFC 7959): a response body in blocks ([`crate::proto::blockwise`]).
pub const BLOCK2: u16 = 23;
/// Block1 (RFC 7959): a request body in blocks ([`crate::proto::blockwise`]).
pub const BLOCK1: u16 = 27;
/// Size2 (RFC 7959).
pub const SIZE2: u16 = 28;
/// Proxy-Uri: recognised, and refused with 5.05 (this stack is not a proxy).
pub const PROXY_URI: u16 = 35;
/// Proxy-Scheme: recognised, and refused with 5.05 (this stack is not a proxy).
pub const PROXY_SCHEME: u16 = 39;
/// Size1.
pub const SIZE1: u16 = 60;
/// No-Response (RFC 7967).
pub const NO_RESPONSE: u16 = 258;

/// What the stack knows about one recognised option (RFC 7252 Table 4, RFC 7641, RFC 7959,
/// RFC 7967).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    /// The option number.
    pub number: u16,
    /// Its name, for diagnostics.
    pub name: &'static str,
    /// Whether it may occur more than once in a message.
    pub repeatable: bool,
    /// The shortest value allowed, in bytes.
    pub min_len: usize,
    /// The longest value allowed, in bytes.
    pub max_len: usize,
}

const fn spec(
    number: u16,
    name: &'static str,
    repeatable: bool,
    min_len: usize,
    max_len: usize,
) -> OptionSpec {
    OptionSpec {
        number,
        name,
        repeatable,
        min_len,
        max_len,
    }
}

/// The options the stack recognises, by number. Every critical (odd) number not listed here is
/// unrecognised.
pub const RECOGNISED: &[OptionSpec] = &[
    // Handed to the resource: only a `conditional` one sees them, the others answer 4.02.
    spec(IF_MATCH, "If-Match", true, 0, 8),
    // Uri-Host and Uri-Port name this endpoint: every host name and port reaching it is
    // served alike, so they are recognised and need no action.
    spec(URI_HOST, "Uri-Host", false, 1, 255),
    spec(ETAG, "ETag", true, 1, 8),
    spec(IF_NONE_MATCH, "If-None-Match", false, 0, 0),
    spec(OBSERVE, "Observe", false, 0, 3),
    spec(URI_PORT, "Uri-Port", false, 0, 2),
    spec(LOCATION_PATH, "Location-Path", true, 0, 255),
    spec(URI_PATH, "Uri-Path", true, 0, 255),
    spec(CONTENT_FORMAT, "Content-Format", false, 0, 2),
    spec(MAX_AGE, "Max-Age", false, 0, 4),
    spec(URI_QUERY, "Uri-Query", true, 0, 255),
    // Handed to the application in `Request::accept`: choosing 4.06 is the resource's call.
    spec(ACCEPT, "Accept", false, 0, 2),
    spec(LOCATION_QUERY, "Location-Query", true, 0, 255),
    // Block-wise transfer (RFC 7959 §2.2: 0 to 3 bytes), in both roles.
    spec(BLOCK2, "Block2", false, 0, 3),
    spec(BLOCK1, "Block1", false, 0, 3),
    spec(SIZE2, "Size2", false, 0, 4),
    spec(PROXY_URI, "Proxy-Uri", false, 1, 1034),
    spec(PROXY_SCHEME, "Proxy-Scheme", false, 1, 255),
    spec(SIZE1, "Size1", false, 0, 4),
    spec(NO_RESPONSE, "No-Response", false, 0, 1),
];

/// RFC 7252 §5.4.6: odd option numbers are critical, even ones elective.
pub fn is_critical(number: u16) -> bool {
    number & 1 == 1
}

/// The stack's knowledge of option `number`, `None` when it does not recognise it.
pub fn recognised(number: u16) -> Option<&'static OptionSpec> {
    RECOGNISED.iter().find(|spec| spec.number == number)
}

/// A short name for option `number`: its registered name when recognised or listed above,
/// else `option N`.
pub fn name(number: u16) -> String {
    let known = match number {
        IF_MATCH => Some("If-Match"),
        IF_NONE_MATCH => Some("If-None-Match"),
        9 => Some("OSCORE"),
        n => recognised(n).map(|spec| spec.name),
    };
    match known {
        Some(name) => format!("option {number} ({name})"),
        None => format!("option {number}"),
    }
}

/// Why a message's options stop it from being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionProblem {
    /// A critical option the stack does not recognise (or an occurrence or length of a
    /// recognised one that counts as unrecognised, §5.4.3 / §5.4.5). A Confirmable request
    /// gets 4.02 Bad Option; anything else is rejected.
    #[error("unrecognised critical {}", name(*number))]
    UnrecognisedCritical {
        /// The option number.
        number: u16,
    },
    /// A request for a forward-proxy (Proxy-Uri or Proxy-Scheme): 5.05 Proxying Not Supported.
    #[error("{} asks for a forward-proxy, and this endpoint is not one", name(*number))]
    ProxyingNotSupported {
        /// The option number (35 or 39).
        number: u16,
    },
}

impl OptionProblem {
    /// The option at fault.
    pub fn number(&self) -> u16 {
        match self {
            OptionProblem::UnrecognisedCritical { number }
            | OptionProblem::ProxyingNotSupported { number } => *number,
        }
    }
}

/// Checks the options of a request, given as (number, value) in ascending number order (the
/// wire order). The first problem in that order is returned.
pub fn check_request<'a>(
    options: impl IntoIterator<Item = (u16, &'a [u8])>,
) -> Result<(), OptionProblem> {
    check(options, true)
}

/// Checks the options of a response: an unrecognised critical option (or a supernumerary
/// occurrence of a non-repeatable one) means the response must be rejected, not delivered.
/// Proxy options mean nothing in a response and are ignored.
pub fn check_response<'a>(
    options: impl IntoIterator<Item = (u16, &'a [u8])>,
) -> Result<(), OptionProblem> {
    check(options, false)
}

fn check<'a>(
    options: impl IntoIterator<Item = (u16, &'a [u8])>,
    request: bool,
) -> Result<(), OptionProblem> {
    let mut previous: Option<u16> = None;
    for (number, value) in options {
        let repeated = previous == Some(number);
        previous = Some(number);
        let unrecognised = match recognised(number) {
            None => true,
            Some(spec) => {
                (repeated && !spec.repeatable)
                    || (request && !(spec.min_len..=spec.max_len).contains(&value.len()))
            }
        };
        if unrecognised {
            // An elective option nobody recognises is ignored (§5.4.1).
            if is_critical(number) {
                return Err(OptionProblem::UnrecognisedCritical { number });
            }
            continue;
        }
        if request && matches!(number, PROXY_URI | PROXY_SCHEME) {
            return Err(OptionProblem::ProxyingNotSupported { number });
        }
    }
    Ok(())
}

/// The options of a parsed message as (number, value), in ascending number order and, for one
/// number, in the order they arrived.
pub(crate) fn packet_options(packet: &Packet) -> impl Iterator<Item = (u16, &[u8])> {
    packet
        .options()
        .flat_map(|(number, values)| values.iter().map(move |value| (*number, value.as_slice())))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn request(options: &[(u16, &[u8])]) -> Result<(), OptionProblem> {
        check_request(options.iter().copied())
    }

    fn response(options: &[(u16, &[u8])]) -> Result<(), OptionProblem> {
        check_response(options.iter().copied())
    }

    #[test]
    fn the_options_the_stack_processes_pass() {
        assert_eq!(
            request(&[
                (IF_MATCH, &[]),
                (IF_MATCH, &[0x5a, 0x01]),
                (URI_HOST, b"localhost"),
                (OBSERVE, &[]),
                (URI_PORT, &[0x16, 0x33]),
                (URI_PATH, b"a"),
                (URI_PATH, b"b"),
                (CONTENT_FORMAT, &[]),
                (URI_QUERY, b"x=1"),
                (ACCEPT, &[0x32]),
                (NO_RESPONSE, &[0x02]),
            ]),
            Ok(())
        );
        assert_eq!(
            response(&[
                (ETAG, &[1, 2]),
                (OBSERVE, &[0x05]),
                (CONTENT_FORMAT, &[]),
                (MAX_AGE, &[0x3c]),
                (SIZE2, &[0x01, 0x00]),
            ]),
            Ok(())
        );
    }

    #[test]
    fn unrecognised_critical_options_are_named() {
        for number in [9, 13, 19, 31, 65_535] {
            let unrecognised = Err(OptionProblem::UnrecognisedCritical { number });
            assert_eq!(request(&[(URI_PATH, b"x"), (number, &[])]), unrecognised);
            assert_eq!(response(&[(number, &[0x08])]), unrecognised);
        }
        let problem = request(&[(9, &[0x0a])]).unwrap_err();
        assert_eq!(problem.number(), 9);
        assert_eq!(
            problem.to_string(),
            "unrecognised critical option 9 (OSCORE)"
        );
        // Block1 and Block2 are recognised (RFC 7959), but a value longer than 3 bytes is not.
        assert_eq!(request(&[(BLOCK1, &[0x0a]), (BLOCK2, &[0x06])]), Ok(()));
        assert_eq!(
            request(&[(BLOCK1, &[0, 0, 0, 0x0a])]),
            Err(OptionProblem::UnrecognisedCritical { number: BLOCK1 })
        );
        assert_eq!(
            request(&[(13, &[])]).unwrap_err().to_string(),
            "unrecognised critical option 13"
        );
    }

    #[test]
    fn conditional_options_are_recognised_when_well_formed() {
        assert_eq!(request(&[(IF_NONE_MATCH, &[])]), Ok(()));
        let unrecognised = |number| Err(OptionProblem::UnrecognisedCritical { number });
        assert_eq!(
            request(&[(IF_NONE_MATCH, &[0])]),
            unrecognised(IF_NONE_MATCH)
        );
        assert_eq!(request(&[(IF_MATCH, &[0; 9])]), unrecognised(IF_MATCH));
        assert_eq!(
            request(&[(IF_NONE_MATCH, &[]), (IF_NONE_MATCH, &[])]),
            unrecognised(IF_NONE_MATCH)
        );
    }

    #[test]
    fn unrecognised_elective_options_are_ignored() {
        assert_eq!(
            request(&[(2, &[]), (16, &[0x10]), (252, &[1; 20]), (292, &[])]),
            Ok(())
        );
        assert_eq!(response(&[(10, &[]), (2048, &[])]), Ok(()));
    }

    #[test]
    fn proxy_requests_get_proxying_not_supported() {
        assert_eq!(
            request(&[(PROXY_URI, b"coap://example.net/x")]),
            Err(OptionProblem::ProxyingNotSupported { number: PROXY_URI })
        );
        assert_eq!(
            request(&[(PROXY_SCHEME, b"coap")]),
            Err(OptionProblem::ProxyingNotSupported {
                number: PROXY_SCHEME
            })
        );
        // The first problem in wire order wins.
        assert_eq!(
            request(&[(9, &[]), (PROXY_URI, b"coap://h/")]),
            Err(OptionProblem::UnrecognisedCritical { number: 9 })
        );
        assert_eq!(response(&[(PROXY_URI, b"coap://h/")]), Ok(()));
    }

    #[test]
    fn a_repeated_non_repeatable_critical_option_is_unrecognised() {
        // RFC 7252 §5.4.5: the second occurrence is treated like an unrecognised option.
        assert_eq!(
            request(&[(URI_HOST, b"a"), (URI_HOST, b"b")]),
            Err(OptionProblem::UnrecognisedCritical { number: URI_HOST })
        );
        assert_eq!(
            request(&[(ACCEPT, &[]), (ACCEPT, &[0x32])]),
            Err(OptionProblem::UnrecognisedCritical { number: ACCEPT })
        );
        // Repeatable ones repeat; elective ones that must not are ignored.
        assert_eq!(
            request(&[(URI_PATH, b"a"), (URI_PATH, b"b"), (URI_QUERY, b"q")]),
            Ok(())
        );
        assert_eq!(
            response(&[(CONTENT_FORMAT, &[]), (CONTENT_FORMAT, &[0x32])]),
            Ok(())
        );
    }

    #[test]
    fn a_critical_option_of_the_wrong_length_in_a_request_is_unrecognised() {
        // RFC 7252 §5.4.3.
        let long = [b'a'; 256];
        assert_eq!(
            request(&[(URI_PATH, &long)]),
            Err(OptionProblem::UnrecognisedCritical { number: URI_PATH })
        );
        assert_eq!(
            request(&[(URI_HOST, b"")]),
            Err(OptionProblem::UnrecognisedCritical { number: URI_HOST })
        );
        assert_eq!(
            request(&[(URI_PORT, &[0, 0, 1])]),
            Err(OptionProblem::UnrecognisedCritical { number: URI_PORT })
        );
        // An elective one of the wrong length is ignored.
        assert_eq!(request(&[(CONTENT_FORMAT, &[1, 2, 3])]), Ok(()));
    }

    #[test]
    fn the_table_is_sorted_and_consistent() {
        assert!(RECOGNISED.windows(2).all(|w| w[0].number < w[1].number));
        assert!(RECOGNISED.iter().all(|s| s.min_len <= s.max_len));
        assert!(recognised(BLOCK1).is_some() && recognised(BLOCK2).is_some());
        assert!(recognised(IF_MATCH).is_some() && recognised(IF_NONE_MATCH).is_some());
    }

    proptest! {
        #[test]
        fn prop_only_odd_options_are_refused(
            mut options in prop::collection::vec(
                (0u16..400, prop::collection::vec(any::<u8>(), 0..4)), 0..8),
        ) {
            options.sort_by_key(|(number, _)| *number);
            let view = || options.iter().map(|(n, v)| (*n, v.as_slice()));
            for result in [check_request(view()), check_response(view())] {
                if let Err(problem) = result {
                    prop_assert!(is_critical(problem.number()));
                    prop_assert!(options.iter().any(|(n, _)| *n == problem.number()));
                }
            }
            // Options that are all elective are never refused.
            if options.iter().all(|(n, _)| !is_critical(*n)) {
                prop_assert_eq!(check_request(view()), Ok(()));
                prop_assert_eq!(check_response(view()), Ok(()));
            }
        }
    }
}
