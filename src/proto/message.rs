//! Requests and responses as applications see them, independent of the transport.

use std::borrow::Cow;

use std::fmt;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

use crate::proto::option::{
    check_value, is_repeatable, ETag, IfMatch, OptionError, OptionList, ACCEPT, CONTENT_FORMAT,
    DEFAULT_MAX_AGE, ETAG, IF_MATCH, IF_NONE_MATCH, LOCATION_PATH, LOCATION_QUERY, MAX_AGE,
    OBSERVE, SIZE1, SIZE2, URI_PATH, URI_QUERY,
};
use crate::proto::wire::options::packet_options;
use crate::proto::wire::{decode_uint, encode_uint};

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
    /// 0.08). [`Method::from_code`] never yields it for a code that has a name above, and only
    /// `from_code` makes one (so that no code is sent under a wrong name).
    #[non_exhaustive]
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
    #[non_exhaustive]
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
///
/// The options the stack acts on for every request have fields: Uri-Path ([`path`]),
/// Uri-Query ([`query`]), Content-Format, Accept and Observe. Every other option, registered
/// or not, is carried by number: [`Request::option`], [`Request::options`],
/// [`Request::add_option`], [`Request::set_option`], [`Request::remove_option`] and
/// [`Request::all_options`] see the fields' options too, so that they are one list, in number
/// order, as on the wire (RFC 7252 §3.1). Typed accessors cover the common ones (ETag,
/// If-Match, If-None-Match, Size1, Size2); see [`crate::option`] for the formats.
///
/// A request read from the wire carries every option it arrived with, byte for byte, except
/// those a field holds, whose values are the field's: a uint in its shortest form, text with
/// invalid UTF-8 replaced, a non-repeatable one's first well-formed occurrence (a later or
/// ill-sized one means nothing, RFC 7252 §5.4.3 / §5.4.5, and is dropped).
///
/// A critical (odd-numbered) option the server does not recognise gets our request a 4.02 Bad
/// Option (RFC 7252 §5.4.1), which [`Session::request`](crate::Session::request) returns as the
/// response: adding one is the caller's decision that the server must understand it.
///
/// [`path`]: Request::path
/// [`query`]: Request::query
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Request {
    /// GET, POST, PUT, DELETE, ...
    pub method: Method,
    /// Path segments (`/a/b` is `["a", "b"]`): the Uri-Path options.
    pub path: Vec<String>,
    /// Query parameters, as written (`k=v`): the Uri-Query options.
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
    /// Every option without a field.
    others: OptionList,
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
            others: OptionList::default(),
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

    /// The same request with this Accept: the Content-Format the response should have (a
    /// server that has no such representation answers 4.06 Not Acceptable).
    pub fn with_accept(mut self, format: u16) -> Request {
        self.accept = Some(format);
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

    /// The entity tags of the ETag options, in order: the representations the client holds and
    /// asks the server to validate (2.03 Valid names the one still current, RFC 7252 §5.10.6.2).
    /// A value of the wrong length is skipped.
    pub fn etags(&self) -> Vec<ETag> {
        self.others
            .all(ETAG)
            .filter_map(|v| ETag::new(v).ok())
            .collect()
    }

    /// The same request with an ETag added (one of the representations the client holds).
    pub fn with_etag(mut self, etag: ETag) -> Request {
        self.others.push(ETAG, etag.as_bytes().to_vec());
        self
    }

    /// The If-Match conditions, in order: the request applies only if one of them holds
    /// (RFC 7252 §5.10.8.1). Empty when there is none. A value of the wrong length is skipped.
    ///
    /// The stack hands conditional requests only to resources that say they evaluate them
    /// ([`Resource::conditional`](crate::Resource::conditional)); any other gets 4.02.
    pub fn if_match(&self) -> Vec<IfMatch> {
        self.others
            .all(IF_MATCH)
            .filter_map(IfMatch::from_bytes)
            .collect()
    }

    /// The same request with an If-Match condition added.
    pub fn with_if_match(mut self, condition: IfMatch) -> Request {
        self.others.push(IF_MATCH, condition.as_bytes().to_vec());
        self
    }

    /// Whether the request carries If-None-Match: it applies only if the resource does not
    /// exist (RFC 7252 §5.10.8.2), e.g. a PUT that must not overwrite.
    pub fn if_none_match(&self) -> bool {
        self.others.contains(IF_NONE_MATCH)
    }

    /// The same request with If-None-Match.
    pub fn with_if_none_match(mut self) -> Request {
        self.others.replace(IF_NONE_MATCH, Vec::new());
        self
    }

    /// Reads a request from a parsed message; `None` when it is not a request.
    pub(crate) fn from_packet(packet: &Packet) -> Option<Request> {
        let method = Method::from_code(code_of(packet))?;
        let mut request = Request::new(method, "");
        request.payload = packet.payload.clone();
        request.confirmable = packet.header.get_type() != MessageType::NonConfirmable;
        request.token = packet.get_token().to_vec();
        for (number, value) in packet_options(packet) {
            if !request.read_field(number, value) {
                request.others.push(number, value.to_vec());
            }
        }
        Some(request)
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
        for (number, value) in self.all_options() {
            packet.add_option(CoapOption::from(number), value.into_owned());
        }
        packet.payload = self.payload.clone();
        packet
    }
}

impl HasOptions for Request {
    fn fields(&self) -> Vec<(u16, Vec<u8>)> {
        let mut fields = Vec::new();
        fields.extend(self.observe.map(|v| (OBSERVE, encode_uint(v))));
        fields.extend(self.path.iter().map(|s| (URI_PATH, s.clone().into_bytes())));
        fields.extend(
            self.content_format
                .map(|v| (CONTENT_FORMAT, encode_uint(v.into()))),
        );
        fields.extend(
            self.query
                .iter()
                .map(|s| (URI_QUERY, s.clone().into_bytes())),
        );
        fields.extend(self.accept.map(|v| (ACCEPT, encode_uint(v.into()))));
        fields
    }

    fn is_field(number: u16) -> bool {
        matches!(
            number,
            OBSERVE | URI_PATH | CONTENT_FORMAT | URI_QUERY | ACCEPT
        )
    }

    fn read_field(&mut self, number: u16, value: &[u8]) -> bool {
        match number {
            OBSERVE => set_uint_once(&mut self.observe, number, value),
            URI_PATH => self.path.push(String::from_utf8_lossy(value).into_owned()),
            CONTENT_FORMAT => set_uint_once(&mut self.content_format, number, value),
            URI_QUERY => self.query.push(String::from_utf8_lossy(value).into_owned()),
            ACCEPT => set_uint_once(&mut self.accept, number, value),
            _ => return false,
        }
        true
    }

    fn clear_field(&mut self, number: u16) {
        match number {
            OBSERVE => self.observe = None,
            URI_PATH => self.path.clear(),
            CONTENT_FORMAT => self.content_format = None,
            URI_QUERY => self.query.clear(),
            ACCEPT => self.accept = None,
            _ => {}
        }
    }
}

/// A CoAP response.
///
/// Content-Format, Max-Age and Observe have fields; every other option, registered or not,
/// is carried by number ([`Response::option`], [`Response::add_option`], ...; they see the
/// fields' options too), with typed accessors for the common ones (ETag, Location-Path,
/// Location-Query, Size1, Size2). A handler sets them on the response it returns, and the
/// server sends them all. Read from the wire, a response carries every option it arrived
/// with, byte for byte, except those a field holds (as for [`Request`]).
///
/// A critical (odd-numbered) option the client does not recognise makes it reject the
/// response (RFC 7252 §5.4.1): add one only for clients known to understand it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Response {
    /// The response code (2.05 Content, 4.04 Not Found, ...).
    pub status: Status,
    /// Body.
    pub payload: Vec<u8>,
    /// Content-Format of the body.
    pub content_format: Option<u16>,
    /// Max-Age in seconds, as sent; absent means 60 ([`Response::max_age_or_default`]).
    pub max_age: Option<u32>,
    /// Observe sequence number of a notification (RFC 7641).
    pub observe: Option<u32>,
    /// Every option without a field.
    others: OptionList,
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
            others: OptionList::default(),
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

    /// How many seconds the response may be cached: its Max-Age, or 60 when it has none
    /// (RFC 7252 §5.10.5, [`DEFAULT_MAX_AGE`]).
    pub fn max_age_or_default(&self) -> u32 {
        self.max_age.unwrap_or(DEFAULT_MAX_AGE)
    }

    /// The entity tag of the representation (RFC 7252 §5.10.6); `None` when absent or
    /// malformed.
    pub fn etag(&self) -> Option<ETag> {
        ETag::new(self.others.first(ETAG)?).ok()
    }

    /// The same response with this ETag (a response carries at most one).
    pub fn with_etag(mut self, etag: ETag) -> Response {
        self.others.replace(ETAG, etag.as_bytes().to_vec());
        self
    }

    /// The Location-Path segments (RFC 7252 §5.10.7): where a 2.01 Created put the new
    /// resource (`["items", "7"]` for `/items/7`). Invalid UTF-8 is replaced.
    pub fn location_path(&self) -> Vec<String> {
        strings(self.others.all(LOCATION_PATH))
    }

    /// The same response with Location-Path set to `path` (`"/items/7"`), a segment an option.
    /// Each segment must be at most 255 bytes, as every string option (checked when it is
    /// sent).
    pub fn with_location_path(mut self, path: &str) -> Response {
        self.others.remove(LOCATION_PATH);
        for segment in split_path(path) {
            self.others.push(LOCATION_PATH, segment.into_bytes());
        }
        self
    }

    /// The Location-Query arguments (RFC 7252 §5.10.7), as written (`k=v`).
    pub fn location_query(&self) -> Vec<String> {
        strings(self.others.all(LOCATION_QUERY))
    }

    /// The same response with a Location-Query argument added.
    pub fn with_location_query(mut self, argument: &str) -> Response {
        self.others
            .push(LOCATION_QUERY, argument.as_bytes().to_vec());
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
        let mut response = Response::new(status);
        response.payload = packet.payload.clone();
        for (number, value) in packet_options(packet) {
            if !response.read_field(number, value) {
                response.others.push(number, value.to_vec());
            }
        }
        Some(response)
    }

    /// Writes the response as a message (type, Message ID and token are the session's business).
    pub(crate) fn to_packet(&self) -> Packet {
        let mut packet = Packet::new();
        packet.header.code = message_class(self.status.code());
        for (number, value) in self.all_options() {
            packet.add_option(CoapOption::from(number), value.into_owned());
        }
        packet.payload = self.payload.clone();
        packet
    }
}

impl HasOptions for Response {
    fn fields(&self) -> Vec<(u16, Vec<u8>)> {
        let mut fields = Vec::new();
        fields.extend(self.observe.map(|v| (OBSERVE, encode_uint(v))));
        fields.extend(
            self.content_format
                .map(|v| (CONTENT_FORMAT, encode_uint(v.into()))),
        );
        fields.extend(self.max_age.map(|v| (MAX_AGE, encode_uint(v))));
        fields
    }

    fn is_field(number: u16) -> bool {
        matches!(number, OBSERVE | CONTENT_FORMAT | MAX_AGE)
    }

    fn read_field(&mut self, number: u16, value: &[u8]) -> bool {
        match number {
            OBSERVE => set_uint_once(&mut self.observe, number, value),
            CONTENT_FORMAT => set_uint_once(&mut self.content_format, number, value),
            MAX_AGE => set_uint_once(&mut self.max_age, number, value),
            _ => return false,
        }
        true
    }

    fn clear_field(&mut self, number: u16) {
        match number {
            OBSERVE => self.observe = None,
            CONTENT_FORMAT => self.content_format = None,
            MAX_AGE => self.max_age = None,
            _ => {}
        }
    }
}

/// What the generic option methods need of a message besides its list of other options: the
/// options its fields hold. The fields and the list never share a number.
trait HasOptions {
    /// The fields' options, encoded, in number order.
    fn fields(&self) -> Vec<(u16, Vec<u8>)>;
    /// Whether a field holds option `number`.
    fn is_field(number: u16) -> bool;
    /// Stores one value of option `number` in its field (the first occurrence of a
    /// non-repeatable one, when it fits); false when no field holds `number`.
    fn read_field(&mut self, number: u16, value: &[u8]) -> bool;
    /// Empties the field that holds option `number`.
    fn clear_field(&mut self, number: u16);
}

/// `option`, `options`, `add_option`, ... for a message type with [`HasOptions`].
macro_rules! option_methods {
    ($t:ident) => {
        impl $t {
            /// Size1 (RFC 7959 §4): the size of a request's body in bytes (0 in a request
            /// asks for the largest body the server accepts); with 4.13 Request Entity Too
            /// Large, the largest body the server accepts. `None` when absent or malformed.
            pub fn size1(&self) -> Option<u32> {
                self.others.first(SIZE1).and_then(decode_uint)
            }

            /// The same message with Size1.
            pub fn with_size1(mut self, size: u32) -> Self {
                self.others.replace(SIZE1, encode_uint(size));
                self
            }

            /// Size2 (RFC 7959 §4): the size of the whole body of a response that comes in
            /// blocks (0 in a request asks for it). `None` when absent or malformed.
            pub fn size2(&self) -> Option<u32> {
                self.others.first(SIZE2).and_then(decode_uint)
            }

            /// The same message with Size2.
            pub fn with_size2(mut self, size: u32) -> Self {
                self.others.replace(SIZE2, encode_uint(size));
                self
            }

            /// The first value of option `number`, `None` when absent. Options with a field
            /// are seen here too, encoded (Content-Format 0 is an empty value).
            pub fn option(&self, number: u16) -> Option<Cow<'_, [u8]>> {
                self.options(number).next()
            }

            /// Every value of option `number`, in order (RFC 7252 §5.4.5).
            pub fn options(&self, number: u16) -> impl Iterator<Item = Cow<'_, [u8]>> {
                let values: Vec<Cow<'_, [u8]>> = if Self::is_field(number) {
                    self.fields()
                        .into_iter()
                        .filter(|(n, _)| *n == number)
                        .map(|(_, v)| Cow::Owned(v))
                        .collect()
                } else {
                    self.others.all(number).map(Cow::Borrowed).collect()
                };
                values.into_iter()
            }

            /// Every option as (number, value), in ascending number order and, for one number,
            /// in order: what goes on the wire.
            pub fn all_options(&self) -> impl Iterator<Item = (u16, Cow<'_, [u8]>)> {
                let mut all: Vec<(u16, Cow<'_, [u8]>)> = self
                    .fields()
                    .into_iter()
                    .map(|(n, v)| (n, Cow::Owned(v)))
                    .chain(self.others.iter().map(|(n, v)| (n, Cow::Borrowed(v))))
                    .collect();
                // Stable: the values of one number keep their order.
                all.sort_by_key(|(n, _)| *n);
                all.into_iter()
            }

            /// Adds a value of option `number` after those it has. The value is checked
            /// against the option's definition ([`crate::option::REGISTRY`]: length, UTF-8 for
            /// text) and a second value of a non-repeatable option is refused; a number the
            /// registry does not list is carried as given. An option with a field lands in the
            /// field (a uint then reads back in its shortest form).
            ///
            /// A critical (odd) number the peer does not recognise makes it refuse the
            /// message (RFC 7252 §5.4.1): that is the peer's answer, not an error here.
            pub fn add_option(
                &mut self,
                number: u16,
                value: impl Into<Vec<u8>>,
            ) -> Result<&mut Self, OptionError> {
                let value = value.into();
                check_value(number, &value)?;
                if !is_repeatable(number) && self.option(number).is_some() {
                    return Err(OptionError::Repeated { number });
                }
                if !self.read_field(number, &value) {
                    self.others.push(number, value);
                }
                Ok(self)
            }

            /// The same message with a value of option `number` added, as
            #[doc = concat!("[`", stringify!($t), "::add_option`].")]
            pub fn with_option(
                mut self,
                number: u16,
                value: impl Into<Vec<u8>>,
            ) -> Result<Self, OptionError> {
                self.add_option(number, value)?;
                Ok(self)
            }

            /// Replaces every value of option `number` with `value`, checked as
            #[doc = concat!("[`", stringify!($t), "::add_option`] checks it.")]
            pub fn set_option(
                &mut self,
                number: u16,
                value: impl Into<Vec<u8>>,
            ) -> Result<&mut Self, OptionError> {
                let value = value.into();
                check_value(number, &value)?;
                self.remove_option(number);
                self.add_option(number, value)
            }

            /// Removes every value of option `number`; true when there was one.
            pub fn remove_option(&mut self, number: u16) -> bool {
                let had = self.option(number).is_some();
                if Self::is_field(number) {
                    self.clear_field(number);
                } else {
                    self.others.remove(number);
                }
                had
            }

            /// Checks every option as
            #[doc = concat!("[`", stringify!($t), "::add_option`]")]
            /// does, the fields' and the typed builders' too (a Location-Path segment longer
            /// than 255 bytes, say). A [`Context`](crate::Context) runs this before it sends the
            /// message: a request that fails it is not sent, a handler's response that fails it
            /// is replaced by 5.00 Internal Server Error. A program driving the sans-IO sessions
            /// of [`proto`](crate::proto) itself calls it before `send_request` / `respond`.
            pub fn check_options(&self) -> Result<(), OptionError> {
                let mut previous = None;
                for (number, value) in self.all_options() {
                    check_value(number, &value)?;
                    if previous == Some(number) && !is_repeatable(number) {
                        return Err(OptionError::Repeated { number });
                    }
                    previous = Some(number);
                }
                Ok(())
            }
        }
    };
}

option_methods!(Request);
option_methods!(Response);

/// Stores a uint option in a field that holds one: the first occurrence whose value fits the
/// option's length range (and the field's type); a later one is ignored (RFC 7252 §5.4.5).
fn set_uint_once<T: TryFrom<u32>>(field: &mut Option<T>, number: u16, value: &[u8]) {
    if field.is_some() || check_value(number, value).is_err() {
        return;
    }
    *field = decode_uint(value).and_then(|v| T::try_from(v).ok());
}

fn strings<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `bytes` parsed, read as a request or response, written back and encoded.
    fn rewritten(bytes: &[u8]) -> Vec<u8> {
        let packet = Packet::from_bytes(bytes).unwrap();
        let mut back = match Request::from_packet(&packet) {
            Some(request) => request.to_packet(),
            None => Response::from_packet(&packet).unwrap().to_packet(),
        };
        back.header.set_type(packet.header.get_type());
        back.header.message_id = packet.header.message_id;
        back.set_token(packet.get_token().to_vec());
        back.to_bytes().unwrap()
    }

    #[test]
    fn every_option_of_a_request_crosses_the_wire_byte_for_byte() {
        #[rustfmt::skip]
        let bytes = [
            0x42, 0x03, 0x12, 0x34, 0xc0, 0xde, // CON PUT, MID 0x1234, token c0 de
            0x12, 0x5a, 0x01,                   // 1 If-Match 5a 01
            0x00,                               // 1 If-Match (empty: exists)
            0x31, 0x07,                         // 4 ETag 07
            0x10,                               // 5 If-None-Match
            0x64, b'c', b'o', b'n', b'f',       // 11 Uri-Path "conf"
            0x10,                               // 12 Content-Format 0
            0x33, b'k', b'=', b'v',             // 15 Uri-Query "k=v"
            0x21, 0x32,                         // 17 Accept 50
            0xb2, 0x01, 0x00,                   // 28 Size2 256
            0xd2, 0x13, 0x12, 0x34,             // 60 Size1 0x1234
            0xe2, 0x06, 0xb7, 0xbe, 0xef,       // 2048 (unregistered, elective) be ef
            0xff, b'x',
        ];
        assert_eq!(rewritten(&bytes), bytes);
        let request = Request::from_packet(&Packet::from_bytes(&bytes).unwrap()).unwrap();
        assert_eq!(request.path, ["conf"]);
        assert_eq!(request.query, ["k=v"]);
        assert_eq!(
            (request.content_format, request.accept),
            (Some(0), Some(50))
        );
        assert_eq!(
            request.if_match(),
            [
                IfMatch::ETag(ETag::new(&[0x5a, 0x01]).unwrap()),
                IfMatch::Exists
            ]
        );
        assert_eq!(request.etags(), [ETag::from_u64(7)]);
        assert!(request.if_none_match());
        assert_eq!(
            (request.size1(), request.size2()),
            (Some(0x1234), Some(256))
        );
        assert_eq!(request.option(2048).as_deref(), Some(&[0xbe, 0xef][..]));
        let numbers: Vec<u16> = request.all_options().map(|(n, _)| n).collect();
        assert_eq!(numbers, [1, 1, 4, 5, 11, 12, 15, 17, 28, 60, 2048]);
    }

    #[test]
    fn every_option_of_a_response_crosses_the_wire_byte_for_byte() {
        #[rustfmt::skip]
        let bytes = [
            0x61, 0x41, 0x00, 0x07, 0x99,       // ACK 2.01, MID 7, token 99
            0x44, 1, 2, 3, 4,                   // 4 ETag 01020304
            0x21, 0x05,                         // 6 Observe 5
            0x25, b'i', b't', b'e', b'm', b's', // 8 Location-Path "items"
            0x01, b'7',                         // 8 Location-Path "7"
            0x41, 0x32,                         // 12 Content-Format 50
            0x21, 0x1e,                         // 14 Max-Age 30
            0x63, b'a', b'=', b'1',             // 20 Location-Query "a=1"
            0x81, 0x01,                         // 28 Size2 1
            0xd0, 0x11,                         // 58 (elective, unregistered), empty
            0xe1, 0xfc, 0xa1, 0x09,             // 65 000 (elective, unregistered) 09
        ];
        assert_eq!(rewritten(&bytes), bytes);
        let response = Response::from_packet(&Packet::from_bytes(&bytes).unwrap()).unwrap();
        assert_eq!(response.status, Status::Created);
        assert_eq!(response.etag(), Some(ETag::from_u64(0x0102_0304)));
        assert_eq!(response.location_path(), ["items", "7"]);
        assert_eq!(response.location_query(), ["a=1"]);
        assert_eq!(
            (response.max_age, response.max_age_or_default()),
            (Some(30), 30)
        );
        assert_eq!(
            (response.observe, response.content_format),
            (Some(5), Some(JSON))
        );
        assert_eq!(response.size2(), Some(1));
        assert_eq!(response.option(58).as_deref(), Some(&[][..]));
        assert_eq!(response.option(65_000).as_deref(), Some(&[0x09][..]));
    }

    #[test]
    fn typed_options_are_written_as_rfc_7252_formats_them() {
        let response = Response::new(Status::Content)
            .with_max_age(0)
            .with_content_format(TEXT_PLAIN)
            .with_size2(256)
            .with_etag(ETag::from_u64(1))
            .with_etag(ETag::from_u64(2));
        assert_eq!(
            response.option(MAX_AGE).as_deref(),
            Some(&[][..]),
            "0 is no bytes"
        );
        assert_eq!(response.option(CONTENT_FORMAT).as_deref(), Some(&[][..]));
        assert_eq!(response.option(SIZE2).as_deref(), Some(&[1, 0][..]));
        assert_eq!(response.options(ETAG).count(), 1, "one ETag in a response");
        assert_eq!(response.etag(), Some(ETag::from_u64(2)));
        assert_eq!(Response::new(Status::Content).max_age_or_default(), 60);
        let request = Request::get("/").with_accept(JSON).with_if_none_match();
        assert_eq!(request.option(ACCEPT).as_deref(), Some(&[0x32][..]));
        assert_eq!(request.option(IF_NONE_MATCH).as_deref(), Some(&[][..]));
        assert_eq!(
            Response::new(Status::Created)
                .with_location_path("/a/b")
                .with_location_path("c")
                .location_path(),
            ["c"]
        );
    }

    #[test]
    fn generic_options_reach_the_fields_and_are_checked() {
        let mut request = Request::get("/a");
        request
            .add_option(URI_PATH, "b")
            .unwrap()
            .add_option(CONTENT_FORMAT, [0x00, 0x32])
            .unwrap()
            .add_option(LOCATION_QUERY, "q")
            .unwrap();
        assert_eq!(request.path, ["a", "b"]);
        // A uint with a field reads back in its shortest form.
        assert_eq!(request.content_format, Some(JSON));
        assert_eq!(request.option(CONTENT_FORMAT).as_deref(), Some(&[0x32][..]));
        assert_eq!(
            request.add_option(CONTENT_FORMAT, []).unwrap_err(),
            OptionError::Repeated {
                number: CONTENT_FORMAT
            }
        );
        request.set_option(CONTENT_FORMAT, []).unwrap();
        assert_eq!(request.content_format, Some(TEXT_PLAIN));
        assert!(
            request.add_option(URI_QUERY, vec![0xff]).is_err(),
            "not UTF-8"
        );
        assert!(request.add_option(ETAG, vec![0; 9]).is_err(), "too long");
        assert!(request.add_option(0, vec![]).is_err(), "reserved");
        assert!(request.remove_option(URI_PATH) && request.path.is_empty());
        assert!(request.remove_option(LOCATION_QUERY) && !request.remove_option(LOCATION_QUERY));
        let request = Request::get("/x").with_option(9, [1]).unwrap();
        assert_eq!(
            request.option(9).as_deref(),
            Some(&[1][..]),
            "critical: the peer's call"
        );
        assert_eq!(request.check_options(), Ok(()));
    }

    #[test]
    fn the_fields_and_builders_are_checked_before_sending() {
        let mut request = Request::get("/x");
        request.query.push("q".repeat(256));
        assert_eq!(
            request.check_options(),
            Err(OptionError::Length {
                number: URI_QUERY,
                len: 256,
                min: 0,
                max: 255
            })
        );
        let long = format!("/{}", "p".repeat(300));
        assert!(Response::new(Status::Created)
            .with_location_path(&long)
            .check_options()
            .is_err());
        assert_eq!(Response::content_text("ok").check_options(), Ok(()));
    }

    #[test]
    fn ill_formed_values_of_field_options_mean_nothing() {
        #[rustfmt::skip]
        let bytes = [
            0x40, 0x01, 0x00, 0x01,
            0xc3, 1, 2, 3,       // 12 Content-Format of 3 bytes: out of range, ignored
            0x51, 0x32,          // 17 Accept 50
            0x02, 0x00, 0x28,    // 17 Accept again (40): not repeatable, ignored
        ];
        let packet = Packet::from_bytes(&bytes).unwrap();
        let request = Request::from_packet(&packet).unwrap();
        assert_eq!((request.content_format, request.accept), (None, Some(JSON)));
        assert_eq!(request.options(ACCEPT).count(), 1);
    }

    proptest! {
        #[test]
        fn prop_options_round_trip_through_the_wire(
            options in prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(vec![1u16, 4, 5, 6, 8, 11, 12, 14, 15, 17, 20, 28, 60]),
                        any::<u16>(),
                    ],
                    prop::collection::vec(any::<u8>(), 0..10),
                ),
                0..12,
            ),
            confirmable in any::<bool>(),
        ) {
            let mut request = Request::post("/p", "body");
            request.confirmable = confirmable;
            let mut response = Response::new(Status::Changed);
            for (number, value) in &options {
                let _ = request.add_option(*number, value.clone());
                let _ = response.add_option(*number, value.clone());
            }
            prop_assert_eq!(request.check_options(), Ok(()));
            prop_assert_eq!(response.check_options(), Ok(()));
            prop_assert_eq!(Request::from_packet(&request.to_packet()), Some(request.clone()));
            prop_assert_eq!(Response::from_packet(&response.to_packet()), Some(response.clone()));
            for packet in [request.to_packet(), response.to_packet()] {
                let bytes = packet.to_bytes().unwrap();
                prop_assert_eq!(rewritten(&bytes), bytes);
            }
        }

        #[test]
        fn prop_reading_any_message_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(packet) = Packet::from_bytes(&bytes) {
                if let Some(request) = Request::from_packet(&packet) {
                    let _ = (request.etags(), request.if_match(), request.check_options());
                }
                if let Some(response) = Response::from_packet(&packet) {
                    let _ = (response.etag(), response.location_path(), response.check_options());
                }
            }
        }
    }

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
