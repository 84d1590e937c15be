//! Requests and responses as applications see them, independent of the transport.

use std::borrow::Cow;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

pub use coap_lite::{RequestType as Method, ResponseType as Status};

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
    pub fn from_packet(packet: &Packet) -> Option<Request> {
        let MessageClass::Request(method) = packet.header.code else {
            return None;
        };
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
        })
    }

    /// Writes the request as a message (type, Message ID and token are the session's business).
    pub fn to_packet(&self) -> Packet {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Request(self.method);
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
        status_code(self.status) >> 5 == 2
    }

    /// The code as `c.dd` (e.g. "2.05").
    pub fn code(&self) -> String {
        let code = status_code(self.status);
        format!("{}.{:02}", code >> 5, code & 0x1f)
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
    pub fn from_packet(packet: &Packet) -> Option<Response> {
        let MessageClass::Response(status) = packet.header.code else {
            return None;
        };
        Some(Response {
            status,
            payload: packet.payload.clone(),
            content_format: uint_option(packet, CoapOption::ContentFormat).map(|v| v as u16),
            max_age: uint_option(packet, CoapOption::MaxAge),
            observe: uint_option(packet, CoapOption::Observe),
        })
    }

    /// Writes the response as a message (type, Message ID and token are the session's business).
    pub fn to_packet(&self) -> Packet {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Response(self.status);
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
/// RFC 8768): "Not Found" for 4.04.
pub fn status_name(status: Status) -> &'static str {
    match status {
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
        Status::UnKnown => "(a code this stack does not know)",
    }
}

/// The numeric code of a status (class << 5 | detail).
pub fn status_code(status: Status) -> u8 {
    u8::from(MessageClass::Response(status))
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
}
