//! Requests and responses as applications see them, independent of the transport.

use std::borrow::Cow;

use std::fmt;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

/// Content-Format `text/plain; charset=utf-8`.
pub const TEXT_PLAIN: u16 = 0;
/// Content-Format `application/link-format`.
pub const LINK_FORMAT: u16 = 40;
/// Content-Format `application/octet-stream`.
pub const OCTET_STREAM: u16 = 42;
/// Content-Format `application/json`.
pub const JSON: u16 = 50;

/// Observe option value that registers an observation.
pub const OBSERVE_REGISTER: u32 = 0;
/// Observe option value that cancels an observation.
pub const OBSERVE_DEREGISTER: u32 = 1;

/// A request method: a code of class 0 (RFC 7252 §12.1.1, RFC 8132 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// 0.01 GET.
    Get,
    /// 0.02 POST.
    Post,
    /// 0.03 PUT.
    Put,
    /// 0.04 DELETE.
    Delete,
    /// 0.05 FETCH (RFC 8132).
    Fetch,
    /// 0.06 PATCH (RFC 8132).
    Patch,
    /// 0.07 iPATCH (RFC 8132).
    IPatch,
    /// A method code this stack has no name for, 0.08 to 0.31, by its detail (`Other(8)` is
    /// 0.08). [`Method::from_code`] never yields it for a code that has a name above.
    Other(u8),
}

impl Method {
    /// The method with request code `code` (class 0, detail 1 to 31); `None` for 0.00 (an
    /// empty message) and for every code of another class.
    pub fn from_code(code: u8) -> Option<Method> {
        Some(match code {
            0x01 => Method::Get,
            0x02 => Method::Post,
            0x03 => Method::Put,
            0x04 => Method::Delete,
            0x05 => Method::Fetch,
            0x06 => Method::Patch,
            0x07 => Method::IPatch,
            0x08..=0x1f => Method::Other(code),
            _ => return None,
        })
    }

    /// The request code, `0 << 5 | detail` (GET is `0x01`).
    pub fn code(self) -> u8 {
        match self {
            Method::Get => 0x01,
            Method::Post => 0x02,
            Method::Put => 0x03,
            Method::Delete => 0x04,
            Method::Fetch => 0x05,
            Method::Patch => 0x06,
            Method::IPatch => 0x07,
            Method::Other(detail) => detail & 0x1f,
        }
    }

    /// The method's name as registered ("GET", "iPATCH"); `None` for [`Method::Other`].
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Fetch => "FETCH",
            Method::Patch => "PATCH",
            Method::IPatch => "iPATCH",
            Method::Other(_) => return None,
        })
    }
}

/// The registered name ("GET"), or the dotted code ("0.08") of a method without one.
impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write_dotted(f, self.code()),
        }
    }
}

/// A response code: class 2 (success), 4 (client error) or 5 (server error) and a detail
/// (RFC 7252 §12.1.2, RFC 7959, RFC 8132, RFC 8516, RFC 8768).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// 2.01 Created.
    Created,
    /// 2.02 Deleted.
    Deleted,
    /// 2.03 Valid.
    Valid,
    /// 2.04 Changed.
    Changed,
    /// 2.05 Content.
    Content,
    /// 2.31 Continue (RFC 7959).
    Continue,
    /// 4.00 Bad Request.
    BadRequest,
    /// 4.01 Unauthorized.
    Unauthorized,
    /// 4.02 Bad Option.
    BadOption,
    /// 4.03 Forbidden.
    Forbidden,
    /// 4.04 Not Found.
    NotFound,
    /// 4.05 Method Not Allowed.
    MethodNotAllowed,
    /// 4.06 Not Acceptable.
    NotAcceptable,
    /// 4.08 Request Entity Incomplete (RFC 7959).
    RequestEntityIncomplete,
    /// 4.09 Conflict (RFC 8132).
    Conflict,
    /// 4.12 Precondition Failed.
    PreconditionFailed,
    /// 4.13 Request Entity Too Large.
    RequestEntityTooLarge,
    /// 4.15 Unsupported Content-Format.
    UnsupportedContentFormat,
    /// 4.22 Unprocessable Entity (RFC 8132).
    UnprocessableEntity,
    /// 4.29 Too Many Requests (RFC 8516).
    TooManyRequests,
    /// 5.00 Internal Server Error.
    InternalServerError,
    /// 5.01 Not Implemented.
    NotImplemented,
    /// 5.02 Bad Gateway.
    BadGateway,
    /// 5.03 Service Unavailable.
    ServiceUnavailable,
    /// 5.04 Gateway Timeout.
    GatewayTimeout,
    /// 5.05 Proxying Not Supported.
    ProxyingNotSupported,
    /// 5.08 Hop Limit Reached (RFC 8768).
    HopLimitReached,
    /// A response code this stack has no name for, kept as it arrived: 4.17 is
    /// `Other { class: 4, detail: 17 }`. [`Status::from_code`] never yields it for a code
    /// that has a name above.
    Other {
        /// The class, 2, 4 or 5 (a code's top three bits).
        class: u8,
        /// The detail, 0 to 31 (a code's low five bits).
        detail: u8,
    },
}

impl Status {
    /// The status with response code `code` (`class << 5 | detail`); `None` unless the class
    /// is 2, 4 or 5 (RFC 7252 §12.1: 1, 3 and 6 are reserved, 0 is requests, 7 signalling).
    pub fn from_code(code: u8) -> Option<Status> {
        Some(match code {
            0x41 => Status::Created,
            0x42 => Status::Deleted,
            0x43 => Status::Valid,
            0x44 => Status::Changed,
            0x45 => Status::Content,
            0x5f => Status::Continue,
            0x80 => Status::BadRequest,
            0x81 => Status::Unauthorized,
            0x82 => Status::BadOption,
            0x83 => Status::Forbidden,
            0x84 => Status::NotFound,
            0x85 => Status::MethodNotAllowed,
            0x86 => Status::NotAcceptable,
            0x88 => Status::RequestEntityIncomplete,
            0x89 => Status::Conflict,
            0x8c => Status::PreconditionFailed,
            0x8d => Status::RequestEntityTooLarge,
            0x8f => Status::UnsupportedContentFormat,
            0x96 => Status::UnprocessableEntity,
            0x9d => Status::TooManyRequests,
            0xa0 => Status::InternalServerError,
            0xa1 => Status::NotImplemented,
            0xa2 => Status::BadGateway,
            0xa3 => Status::ServiceUnavailable,
            0xa4 => Status::GatewayTimeout,
            0xa5 => Status::ProxyingNotSupported,
            0xa8 => Status::HopLimitReached,
            _ if matches!(code >> 5, 2 | 4 | 5) => Status::Other {
                class: code >> 5,
                detail: code & 0x1f,
            },
            _ => return None,
        })
    }

    /// The response code, `class << 5 | detail` (2.05 Content is `0x45`).
    pub fn code(self) -> u8 {
        match self {
            Status::Created => 0x41,
            Status::Deleted => 0x42,
            Status::Valid => 0x43,
            Status::Changed => 0x44,
            Status::Content => 0x45,
            Status::Continue => 0x5f,
            Status::BadRequest => 0x80,
            Status::Unauthorized => 0x81,
            Status::BadOption => 0x82,
            Status::Forbidden => 0x83,
            Status::NotFound => 0x84,
            Status::MethodNotAllowed => 0x85,
            Status::NotAcceptable => 0x86,
            Status::RequestEntityIncomplete => 0x88,
            Status::Conflict => 0x89,
            Status::PreconditionFailed => 0x8c,
            Status::RequestEntityTooLarge => 0x8d,
            Status::UnsupportedContentFormat => 0x8f,
            Status::UnprocessableEntity => 0x96,
            Status::TooManyRequests => 0x9d,
            Status::InternalServerError => 0xa0,
            Status::NotImplemented => 0xa1,
            Status::BadGateway => 0xa2,
            Status::ServiceUnavailable => 0xa3,
            Status::GatewayTimeout => 0xa4,
            Status::ProxyingNotSupported => 0xa5,
            Status::HopLimitReached => 0xa8,
            Status::Other { class, detail } => ((class & 0x07) << 5) | (detail & 0x1f),
        }
    }

    /// The class: 2 for success, 4 for a client error, 5 for a server error.
    pub fn class(self) -> u8 {
        self.code() >> 5
    }

    /// The detail, 0 to 31 (the `05` of 2.05).
    pub fn detail(self) -> u8 {
        self.code() & 0x1f
    }

    /// The status's name as registered ("Not Found"); `None` for [`Status::Other`].
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Status::Created => "Created",
            Status::Deleted => "Deleted",
            Status::Valid => "Valid",
            Status::Changed => "Changed",
            Status::Content => "Content",
            Status::Continue => "Continue",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::BadOption => "Bad Option",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::NotAcceptable => "Not Acceptable",
            Status::Conflict => "Conflict",
            Status::PreconditionFailed => "Precondition Failed",
            Status::RequestEntityTooLarge => "Request Entity Too Large",
            Status::UnsupportedContentFormat => "Unsupported Content-Format",
            Status::RequestEntityIncomplete => "Request Entity Incomplete",
            Status::UnprocessableEntity => "Unprocessable Entity",
            Status::TooManyRequests => "Too Many Requests",
            Status::InternalServerError => "Internal Server Error",
            Status::NotImplemented => "Not Implemented",
            Status::BadGateway => "Bad Gateway",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::GatewayTimeout => "Gateway Timeout",
            Status::ProxyingNotSupported => "Proxying Not Supported",
            Status::HopLimitReached => "Hop Limit Reached",
            Status::Other { .. } => return None,
        })
    }
}

/// The dotted code, `c.dd` ("4.04", "4.17").
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_dotted(f, self.code())
    }
}

/// Writes `code` as RFC 7252 writes codes: class, a dot, two digits of detail.
fn write_dotted(f: &mut fmt::Formatter<'_>, code: u8) -> fmt::Result {
    write!(f, "{}.{:02}", code >> 5, code & 0x1f)
}

/// A CoAP request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Request {
    /// GET, POST, PUT, DELETE, ...
    pub method: Method,
    /// Path segments (`/a/b` is `["a", "b"]`).
    pub path: Vec<String>,
    /// Query parameters, as written (`k=v`).
    pub query: Vec<String>,
    /// Body.
    pub payload: Vec<u8>,
    /// Content-Format of the body.
    pub content_format: Option<u16>,
    /// Accept: the Content-Format asked for.
    pub accept: Option<u16>,
    /// Observe: 0 registers, 1 cancels (RFC 7641).
    pub observe: Option<u32>,
    /// Over UDP / DTLS: sent Confirmable (retransmitted until acknowledged). Default true.
    pub confirmable: bool,
    /// The token it arrived with (set by the stack; a fresh one is chosen when sending).
    pub token: Vec<u8>,
    /// Block size for this request's block-wise transfer (RFC 7959), in bytes: a power of two
    /// from 16 to 1024 (others round down). `None`: the context's
    /// ([`ContextBuilder::block_size`](crate::ContextBuilder::block_size)).
    pub block_size: Option<usize>,
}

impl Request {
    /// A request for `path` (`"/a/b"` or `"a/b"`).
    pub fn new(method: Method, path: &str) -> Request {
        Request {
            method,
            path: split_path(path),
            query: Vec::new(),
            payload: Vec::new(),
            content_format: None,
            accept: None,
            observe: None,
            confirmable: true,
            token: Vec::new(),
            block_size: None,
        }
    }

    /// A GET of `path`.
    pub fn get(path: &str) -> Request {
        Request::new(Method::Get, path)
    }

    /// A PUT of `payload` to `path`.
    pub fn put(path: &str, payload: impl Into<Vec<u8>>) -> Request {
        Request::new(Method::Put, path).with_payload(payload)
    }

    /// A POST of `payload` to `path`.
    pub fn post(path: &str, payload: impl Into<Vec<u8>>) -> Request {
        Request::new(Method::Post, path).with_payload(payload)
    }

    /// A DELETE of `path`.
    pub fn delete(path: &str) -> Request {
        Request::new(Method::Delete, path)
    }

    /// The same request with this body.
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Request {
        self.payload = payload.into();
        self
    }

    /// The same request with this Content-Format.
    pub fn with_content_format(mut self, format: u16) -> Request {
        self.content_format = Some(format);
        self
    }

    /// The same request with a query parameter added.
    pub fn with_query(mut self, parameter: &str) -> Request {
        self.query.push(parameter.to_string());
        self
    }

    /// The same request sent Non-confirmable over UDP / DTLS.
    pub fn non_confirmable(mut self) -> Request {
        self.confirmable = false;
        self
    }

    /// The same request sent in blocks of `bytes` (16 to 1024, a power of two) when its body is
    /// larger, and asking for its response in blocks no larger (RFC 7959 §2.4).
    pub fn with_block_size(mut self, bytes: usize) -> Request {
        self.block_size = Some(bytes);
        self
    }

    /// The same request with Observe = 0: register an observation.
    pub fn observing(mut self) -> Request {
        self.observe = Some(OBSERVE_REGISTER);
        self
    }

    /// The path as a string, `/a/b` (`/` when empty).
    pub fn path_str(&self) -> String {
        format!("/{}", self.path.join("/"))
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn payload_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }

    /// Reads a request from a parsed message; `None` when it is not a request.
    pub(crate) fn from_packet(packet: &Packet) -> Option<Request> {
        let method = Method::from_code(code_of(packet))?;
        Some(Request {
            method,
            path: strings(packet, CoapOption::UriPath),
            query: strings(packet, CoapOption::UriQuery),
            payload: packet.payload.clone(),
            content_format: uint_option(packet, CoapOption::ContentFormat).map(|v| v as u16),
            accept: uint_option(packet, CoapOption::Accept).map(|v| v as u16),
            observe: uint_option(packet, CoapOption::Observe),
            confirmable: packet.header.get_type() != MessageType::NonConfirmable,
            token: packet.get_token().to_vec(),
            block_size: None,
        })
    }

    /// Writes the request as a message (type, Message ID and token are the session's business).
    pub(crate) fn to_packet(&self) -> Packet {
        let mut packet = Packet::new();
        packet.header.code = message_class(self.method.code());
        packet.header.set_type(if self.confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        if let Some(observe) = self.observe {
            packet.add_option(CoapOption::Observe, encode_uint(observe));
        }
        for segment in &self.path {
            packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
        }
        if let Some(format) = self.content_format {
            packet.add_option(CoapOption::ContentFormat, encode_uint(format.into()));
        }
        for parameter in &self.query {
            packet.add_option(CoapOption::UriQuery, parameter.as_bytes().to_vec());
        }
        if let Some(accept) = self.accept {
            packet.add_option(CoapOption::Accept, encode_uint(accept.into()));
        }
        packet.payload = self.payload.clone();
        packet
    }
}

/// A CoAP response.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Response {
    /// The response code (2.05 Content, 4.04 Not Found, ...).
    pub status: Status,
    /// Body.
    pub payload: Vec<u8>,
    /// Content-Format of the body.
    pub content_format: Option<u16>,
    /// Max-Age in seconds.
    pub max_age: Option<u32>,
    /// Observe sequence number of a notification (RFC 7641).
    pub observe: Option<u32>,
}

impl Response {
    /// A response with this code and no body.
    pub fn new(status: Status) -> Response {
        Response {
            status,
            payload: Vec::new(),
            content_format: None,
            max_age: None,
            observe: None,
        }
    }

    /// 2.05 Content with a text body.
    pub fn content_text(text: impl Into<String>) -> Response {
        Response::new(Status::Content)
            .with_payload(text.into().into_bytes())
            .with_content_format(TEXT_PLAIN)
    }

    /// The same response with this body.
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Response {
        self.payload = payload.into();
        self
    }

    /// The same response with this Content-Format.
    pub fn with_content_format(mut self, format: u16) -> Response {
        self.content_format = Some(format);
        self
    }

    /// The same response with this Max-Age.
    pub fn with_max_age(mut self, secs: u32) -> Response {
        self.max_age = Some(secs);
        self
    }

    /// True for 2.xx codes.
    pub fn is_success(&self) -> bool {
        self.status.class() == 2
    }

    /// The code as `c.dd` (e.g. "2.05").
    pub fn code(&self) -> String {
        self.status.to_string()
    }

    /// The code and its name for people, as RFC 7252 §12.1.2 registers it: "4.04 Not Found".
    pub fn status_line(&self) -> String {
        format!("{} {}", self.code(), status_name(self.status))
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn payload_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }

    /// Reads a response from a parsed message; `None` when it is not a response.
    pub(crate) fn from_packet(packet: &Packet) -> Option<Response> {
        let status = Status::from_code(code_of(packet))?;
        Some(Response {
            status,
            payload: packet.payload.clone(),
            content_format: uint_option(packet, CoapOption::ContentFormat).map(|v| v as u16),
            max_age: uint_option(packet, CoapOption::MaxAge),
            observe: uint_option(packet, CoapOption::Observe),
        })
    }

    /// Writes the response as a message (type, Message ID and token are the session's business).
    pub(crate) fn to_packet(&self) -> Packet {
        let mut packet = Packet::new();
        packet.header.code = message_class(self.status.code());
        if let Some(observe) = self.observe {
            packet.add_option(CoapOption::Observe, encode_uint(observe));
        }
        if let Some(format) = self.content_format {
            packet.add_option(CoapOption::ContentFormat, encode_uint(format.into()));
        }
        if let Some(max_age) = self.max_age {
            packet.add_option(CoapOption::MaxAge, encode_uint(max_age));
        }
        packet.payload = self.payload.clone();
        packet
    }
}

/// The name of a status as registered (RFC 7252 §12.1.2, RFC 7959, RFC 8132, RFC 8516,
/// RFC 8768): "Not Found" for 4.04, "(a code this stack does not know)" for a
/// [`Status::Other`].
pub fn status_name(status: Status) -> &'static str {
    status.name().unwrap_or("(a code this stack does not know)")
}

/// The numeric code of a status (class << 5 | detail); the same as [`Status::code`].
pub fn status_code(status: Status) -> u8 {
    status.code()
}

// coap-lite's code type meets the crate's here, through the code byte that both read alike
// (coap-lite keeps every code it has no name for as `Reserved`, so no code is lost either way).

/// The code byte of a parsed message.
fn code_of(packet: &Packet) -> u8 {
    u8::from(packet.header.code)
}

/// The coap-lite form of code byte `code`.
fn message_class(code: u8) -> MessageClass {
    MessageClass::from(code)
}

fn split_path(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn strings(packet: &Packet, option: CoapOption) -> Vec<String> {
    packet
        .get_option(option)
        .map(|values| {
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn uint_option(packet: &Packet, option: CoapOption) -> Option<u32> {
    let value = packet.get_first_option(option)?;
    crate::proto::wire::decode_uint(value)
}

fn encode_uint(value: u32) -> Vec<u8> {
    crate::proto::wire::encode_uint(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_a_packet() {
        let request = Request::put("/a/b", "hello")
            .with_content_format(TEXT_PLAIN)
            .with_query("x=1")
            .observing();
        let back = Request::from_packet(&request.to_packet()).unwrap();
        assert_eq!(back, request);
        assert_eq!(back.path_str(), "/a/b");
    }

    #[test]
    fn response_round_trips_and_names_its_code() {
        let response = Response::content_text("hi").with_max_age(5);
        let back = Response::from_packet(&response.to_packet()).unwrap();
        assert_eq!(back, response);
        assert_eq!(back.code(), "2.05");
        assert!(back.is_success());
        assert_eq!(Response::new(Status::NotFound).code(), "4.04");
        assert_eq!(
            Response::new(Status::NotFound).status_line(),
            "4.04 Not Found"
        );
        assert_eq!(
            Response::new(Status::BadOption).status_line(),
            "4.02 Bad Option"
        );
    }

    #[test]
    fn every_code_byte_reads_back_as_itself() {
        for code in 0..=u8::MAX {
            if let Some(method) = Method::from_code(code) {
                assert_eq!(method.code(), code, "{method:?}");
                assert_eq!(Status::from_code(code), None);
            }
            if let Some(status) = Status::from_code(code) {
                assert_eq!(status.code(), code, "{status:?}");
                assert_eq!((status.class(), status.detail()), (code >> 5, code & 0x1f));
            }
        }
        assert_eq!(Method::from_code(0x00), None, "0.00 is an empty message");
        assert_eq!(Status::from_code(0x21), None, "class 1 is reserved");
        assert_eq!(Status::from_code(0xe2), None, "7.02 is a signal");
    }

    /// The names agree with coap-lite's, code by code: a code it names is named here too (and
    /// is the same code), one it keeps as `Reserved` is `Other` here or no status at all.
    #[test]
    fn names_agree_with_coap_lite() {
        for code in 0..=u8::MAX {
            match MessageClass::from(code) {
                MessageClass::Request(_) => {
                    assert!(!matches!(
                        Method::from_code(code),
                        None | Some(Method::Other(_))
                    ))
                }
                MessageClass::Response(_) => assert!(!matches!(
                    Status::from_code(code),
                    None | Some(Status::Other { .. })
                )),
                _ => {
                    assert!(matches!(
                        Method::from_code(code),
                        None | Some(Method::Other(_))
                    ));
                    assert!(matches!(
                        Status::from_code(code),
                        None | Some(Status::Other { .. })
                    ));
                }
            }
            assert_eq!(u8::from(message_class(code)), code);
        }
    }

    #[test]
    fn an_unknown_response_code_is_reported_as_it_arrived() {
        let mut packet = Response::content_text("?").to_packet();
        packet.header.code = message_class(0x91);
        let response = Response::from_packet(&packet).unwrap();
        assert_eq!(
            response.status,
            Status::Other {
                class: 4,
                detail: 17
            }
        );
        assert_eq!(response.code(), "4.17");
        assert_eq!(
            response.status_line(),
            "4.17 (a code this stack does not know)"
        );
        assert!(!response.is_success());
        assert_eq!(u8::from(response.to_packet().header.code), 0x91);
    }

    #[test]
    fn methods_print_as_registered() {
        assert_eq!(Method::Get.to_string(), "GET");
        assert_eq!(Method::IPatch.to_string(), "iPATCH");
        assert_eq!(Method::Other(8).to_string(), "0.08");
        assert_eq!(Status::NotFound.to_string(), "4.04");
        assert_eq!(status_name(Status::HopLimitReached), "Hop Limit Reached");
        let fetch = Request::new(Method::Fetch, "/q");
        assert_eq!(Request::from_packet(&fetch.to_packet()), Some(fetch));
    }
}
