//! The keepalive probe resource's wire contract, `POST /.well-known/keepalive-probe`: what a
//! client sends to ask a server for a probe-back, how the server reads it, and what each
//! answer means to the client. The adaptive search ([`crate::proto::adaptive`]) drives it;
//! the runtime serves it.
//!
//! # The exchange
//!
//! 1. The client sends, from a socket that carries nothing else (so that no other traffic
//!    refreshes the NAT binding being measured), a Confirmable
//!    `POST /.well-known/keepalive-probe` whose payload is the idle delay `d` in milliseconds
//!    as ASCII decimal digits (`30000` for 30 s), Content-Format absent or 0 (text/plain).
//! 2. A server that accepts it answers at once with an empty ACK (so the request is not
//!    retransmitted), then stays silent towards that address for `d`.
//! 3. After `d` it sends exactly one Non-confirmable separate response, `2.04 Changed` with the
//!    request's token and no payload, to the address the request came from, and nothing else.
//!    If it reaches the client, the binding lived at least `d`; if it does not arrive by `d`
//!    plus a grace period, it did not (or the message was lost: the search errs towards the
//!    shorter interval, never the longer).
//!
//! Refusals come piggybacked on the ACK, at once: `4.00 Bad Request` for a payload that is not
//! a delay in `1..=max` milliseconds (the diagnostic payload, at most [`MAX_DIAGNOSTIC`] bytes,
//! names the maximum in seconds: `max delay 240 s`),
//! `4.15 Unsupported Content-Format` for a Content-Format other than text/plain,
//! `4.29 Too Many Requests` while this address already has a probe outstanding, and
//! `5.03 Service Unavailable` when the server's caps per IP address or in all are reached;
//! both of the last two carry Max-Age, the seconds after which to try again. A server without
//! the resource answers `4.04 Not Found` (a CoAP server) or nothing at all.
//!
//! # Why it cannot be used as a reflector
//!
//! Everything goes back to the request's source address and nowhere else, and at most two
//! datagrams answer a request (the empty ACK, or a refusal, and the probe-back), each shorter
//! than the request itself, so a spoofed request reflects fewer bytes than it cost and is
//! never amplified. The server holds a bounded number of probe-backs (one per address, a few
//! per IP address, a cap in all) for a bounded time (the maximum delay).

use std::time::Duration;

use crate::proto::message::{Request, Response, Status};

/// The path of the probe resource.
pub const PROBE_PATH: &str = "/.well-known/keepalive-probe";

/// Content-Format text/plain;charset=utf-8 (RFC 7252 §12.3), the only one a probe may carry.
const TEXT_PLAIN: u16 = 0;

/// The longest delay payload read: `u64::MAX` milliseconds has 20 digits.
const MAX_DIGITS: usize = 20;

/// The request asking for a probe-back after `delay` (rounded down to whole milliseconds, at
/// least one).
pub fn probe_request(delay: Duration) -> Request {
    let millis = delay.as_millis().clamp(1, u128::from(u64::MAX));
    Request::post(PROBE_PATH, millis.to_string()).with_content_format(TEXT_PLAIN)
}

/// The longest diagnostic payload of a refusal. The smallest probe request is 33 bytes (its
/// header and the two Uri-Path options, with no token and no payload); a refusal with the same
/// token, a Max-Age and this much text is at most 28, so no answer outgrows its request.
pub const MAX_DIAGNOSTIC: usize = 20;

/// Why a probe request was refused as bad input; its text (at most [`MAX_DIAGNOSTIC`] bytes
/// for any delay this side of 10^17 s) is the diagnostic payload of the 4.xx answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeInputError {
    /// The payload is not decimal digits (or is empty, or too long to be a delay).
    #[error("delay: ms as digits")]
    NotADelay,
    /// The delay is zero.
    #[error("delay: at least 1 ms")]
    Zero,
    /// The delay is longer than the server allows.
    #[error("max delay {} s", seconds(.max))]
    TooLong {
        /// The longest delay this server accepts.
        max: Duration,
    },
    /// The Content-Format is not text/plain.
    #[error("text/plain only")]
    ContentFormat,
}

impl ProbeInputError {
    /// The answer to a request refused for this reason: 4.15 for the Content-Format, 4.00
    /// otherwise, with the reason as its diagnostic payload.
    pub fn response(&self) -> Response {
        let status = match self {
            ProbeInputError::ContentFormat => Status::UnsupportedContentFormat,
            _ => Status::BadRequest,
        };
        Response::new(status).with_payload(self.to_string())
    }
}

/// Seconds with as many decimals as needed, to the millisecond: `240`, `0.5`.
fn seconds(d: &Duration) -> String {
    (d.as_millis() as f64 / 1000.0).to_string()
}

/// The delay a probe request asks for, if it is one `max` allows.
pub fn parse_probe_delay(request: &Request, max: Duration) -> Result<Duration, ProbeInputError> {
    if request.content_format.is_some_and(|f| f != TEXT_PLAIN) {
        return Err(ProbeInputError::ContentFormat);
    }
    let digits = &request.payload;
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProbeInputError::NotADelay);
    }
    // Twenty digits can still overflow a u64: checked, never a panic on a peer's bytes.
    let millis = digits.iter().try_fold(0u64, |value, digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    });
    let delay = Duration::from_millis(millis.ok_or(ProbeInputError::NotADelay)?);
    if delay.is_zero() {
        return Err(ProbeInputError::Zero);
    }
    if delay > max {
        return Err(ProbeInputError::TooLong { max });
    }
    Ok(delay)
}

/// What a server's answer to a probe request says, as far as the search is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeAnswer {
    /// A 2.xx: the probe-back arrived.
    Arrived,
    /// 4.29 or 5.03: the server offers probes but cannot take this one now; ask again after
    /// this long (its Max-Age).
    Busy {
        /// How long the server asked us to wait.
        retry_after: Duration,
    },
    /// Any other code: the server does not offer probes (4.04, 4.05) or refused ours as bad.
    Unsupported,
}

/// Reads a server's response to a probe request.
pub fn classify_probe_response(response: &Response) -> ProbeAnswer {
    match response.status {
        Status::TooManyRequests | Status::ServiceUnavailable => ProbeAnswer::Busy {
            retry_after: Duration::from_secs(u64::from(response.max_age_or_default())),
        },
        _ if response.is_success() => ProbeAnswer::Arrived,
        _ => ProbeAnswer::Unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(240);

    fn with_payload(payload: &[u8]) -> Request {
        Request::post(PROBE_PATH, payload.to_vec())
    }

    #[test]
    fn request_carries_milliseconds_as_text() {
        let request = probe_request(Duration::from_millis(30_500));
        assert_eq!(request.path, [".well-known", "keepalive-probe"]);
        assert_eq!(request.payload, b"30500");
        assert_eq!(request.content_format, Some(0));
        assert!(request.confirmable);
        assert_eq!(probe_request(Duration::from_micros(10)).payload, b"1");
    }

    #[test]
    fn parses_what_it_sends() {
        let delay = Duration::from_secs(90);
        assert_eq!(parse_probe_delay(&probe_request(delay), MAX), Ok(delay));
        assert_eq!(
            parse_probe_delay(&with_payload(b"250"), MAX),
            Ok(Duration::from_millis(250))
        );
    }

    #[test]
    fn refuses_bad_input_with_the_reason() {
        for bad in [
            &b""[..],
            b"-5",
            b"+5",
            b"5s",
            b" 5",
            b"1.5",
            b"\xff",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_probe_delay(&with_payload(bad), MAX),
                Err(ProbeInputError::NotADelay),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_probe_delay(&with_payload(&[b'9'; 300]), MAX),
            Err(ProbeInputError::NotADelay)
        );
        assert_eq!(
            parse_probe_delay(&with_payload(b"0"), MAX),
            Err(ProbeInputError::Zero)
        );
        let too_long = parse_probe_delay(&with_payload(b"240001"), MAX).unwrap_err();
        assert_eq!(too_long, ProbeInputError::TooLong { max: MAX });
        assert_eq!(too_long.response().status, Status::BadRequest);
        assert_eq!(too_long.response().payload_str(), "max delay 240 s");
        let json = with_payload(b"5").with_content_format(50);
        let refused = parse_probe_delay(&json, MAX).unwrap_err();
        assert_eq!(refused.response().status, Status::UnsupportedContentFormat);
    }

    proptest::proptest! {
        #[test]
        fn any_payload_parses_or_is_refused_without_panic(payload: Vec<u8>, format: Option<u16>) {
            let mut request = with_payload(&payload);
            request.content_format = format;
            let _ = parse_probe_delay(&request, MAX);
        }

        #[test]
        fn every_delay_round_trips(millis in 1u64..=240_000) {
            let delay = Duration::from_millis(millis);
            proptest::prop_assert_eq!(parse_probe_delay(&probe_request(delay), MAX), Ok(delay));
        }
    }

    #[test]
    fn diagnostics_stay_short() {
        let all = [
            ProbeInputError::NotADelay,
            ProbeInputError::Zero,
            ProbeInputError::TooLong {
                max: Duration::from_secs(99_999_999),
            },
            ProbeInputError::ContentFormat,
        ];
        for problem in all {
            assert!(problem.to_string().len() <= MAX_DIAGNOSTIC, "{problem}");
        }
    }

    #[test]
    fn classifies_answers() {
        assert_eq!(
            classify_probe_response(&Response::new(Status::Changed)),
            ProbeAnswer::Arrived
        );
        assert_eq!(
            classify_probe_response(&Response::new(Status::ServiceUnavailable).with_max_age(7)),
            ProbeAnswer::Busy {
                retry_after: Duration::from_secs(7)
            }
        );
        assert_eq!(
            classify_probe_response(&Response::new(Status::NotFound)),
            ProbeAnswer::Unsupported
        );
        assert_eq!(
            classify_probe_response(&Response::new(Status::BadRequest)),
            ProbeAnswer::Unsupported
        );
    }
}
