//! Option values as requests and responses carry them: the formats of RFC 7252 §3.2 and the
//! registry of §5.10 / §12.2 (with RFC 7641, RFC 7959 and RFC 7967), the typed values that need
//! a type of their own ([`ETag`], [`IfMatch`]), and the crate's ordered list of options.
//!
//! Every [`Request`](crate::Request) and [`Response`](crate::Response) carries any option by
//! number (`option`, `options`, `add_option`, `set_option`, `remove_option`, `all_options`),
//! with typed accessors for the common ones. A number this module does not know is carried
//! opaque, byte for byte. What the stack *acts on* is another question, answered by
//! [`wire::options`](crate::proto::wire::options): a request carrying a critical option the
//! stack does not recognise is refused with 4.02 before any handler sees it, and a peer does
//! the same to ours.
//!
//! ```
//! use coap_keepalive::option::{ETag, IfMatch, ETAG};
//! use coap_keepalive::{Request, Response, Status};
//!
//! let etag = ETag::new(&[0x5a, 0x01])?;
//! let mut put = Request::put("/config", "x=1").with_if_match(IfMatch::ETag(etag));
//! put.add_option(2048, b"opaque".to_vec())?; // an elective number nobody registered
//! assert_eq!(put.if_match(), vec![IfMatch::ETag(etag)]);
//! assert_eq!(put.option(2048).as_deref(), Some(&b"opaque"[..]));
//!
//! let created = Response::new(Status::Created)
//!     .with_location_path("/config/7")
//!     .with_etag(etag)
//!     .with_max_age(30);
//! assert_eq!(created.location_path(), ["config", "7"]);
//! assert_eq!(created.option(ETAG).as_deref(), Some(&[0x5a, 0x01][..]));
//! # Ok::<(), coap_keepalive::option::OptionError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;

pub use crate::proto::wire::options::{
    ACCEPT, BLOCK1, BLOCK2, CONTENT_FORMAT, ETAG, IF_MATCH, IF_NONE_MATCH, LOCATION_PATH,
    LOCATION_QUERY, MAX_AGE, NO_RESPONSE, OBSERVE, PROXY_SCHEME, PROXY_URI, SIZE1, SIZE2, URI_HOST,
    URI_PATH, URI_PORT, URI_QUERY,
};
use crate::proto::wire::MAX_OPTION_VALUE_LEN;

/// Max-Age when a response carries none: 60 seconds (RFC 7252 §5.10.5).
pub const DEFAULT_MAX_AGE: u32 = 60;

/// How an option's value is written (RFC 7252 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionFormat {
    /// No bytes at all (If-None-Match).
    Empty,
    /// Bytes with no meaning to the protocol (ETag, If-Match).
    Opaque,
    /// An unsigned integer, big-endian, in as few bytes as possible (0 is no bytes).
    Uint,
    /// UTF-8 text (Net-Unicode, RFC 5198).
    String,
}

/// What RFC 7252 Table 4 (and its successors) says about one option number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OptionDef {
    /// The option number.
    pub number: u16,
    /// Its registered name ("ETag").
    pub name: &'static str,
    /// How its value is written.
    pub format: OptionFormat,
    /// Whether a message may carry it more than once.
    pub repeatable: bool,
    /// The shortest value allowed, in bytes.
    pub min_len: usize,
    /// The longest value allowed, in bytes.
    pub max_len: usize,
}

const fn def(
    number: u16,
    name: &'static str,
    format: OptionFormat,
    repeatable: bool,
    min_len: usize,
    max_len: usize,
) -> OptionDef {
    OptionDef {
        number,
        name,
        format,
        repeatable,
        min_len,
        max_len,
    }
}

use OptionFormat::{Empty, Opaque, String as Text, Uint};

/// The options whose format this crate knows, by number: RFC 7252 Table 4, Observe (RFC 7641),
/// Block1 / Block2 / Size2 (RFC 7959), No-Response (RFC 7967). Any other number is carried as
/// opaque bytes of any length the wire allows.
pub const REGISTRY: &[OptionDef] = &[
    def(IF_MATCH, "If-Match", Opaque, true, 0, 8),
    def(URI_HOST, "Uri-Host", Text, false, 1, 255),
    def(ETAG, "ETag", Opaque, true, 1, 8),
    def(IF_NONE_MATCH, "If-None-Match", Empty, false, 0, 0),
    def(OBSERVE, "Observe", Uint, false, 0, 3),
    def(URI_PORT, "Uri-Port", Uint, false, 0, 2),
    def(LOCATION_PATH, "Location-Path", Text, true, 0, 255),
    def(URI_PATH, "Uri-Path", Text, true, 0, 255),
    def(CONTENT_FORMAT, "Content-Format", Uint, false, 0, 2),
    def(MAX_AGE, "Max-Age", Uint, false, 0, 4),
    def(URI_QUERY, "Uri-Query", Text, true, 0, 255),
    def(ACCEPT, "Accept", Uint, false, 0, 2),
    def(LOCATION_QUERY, "Location-Query", Text, true, 0, 255),
    def(BLOCK2, "Block2", Uint, false, 0, 3),
    def(BLOCK1, "Block1", Uint, false, 0, 3),
    def(SIZE2, "Size2", Uint, false, 0, 4),
    def(PROXY_URI, "Proxy-Uri", Text, false, 1, 1034),
    def(PROXY_SCHEME, "Proxy-Scheme", Text, false, 1, 255),
    def(SIZE1, "Size1", Uint, false, 0, 4),
    def(NO_RESPONSE, "No-Response", Uint, false, 0, 1),
];

/// What the registry says about option `number`; `None` for a number it does not list.
pub fn definition(number: u16) -> Option<&'static OptionDef> {
    REGISTRY.iter().find(|d| d.number == number)
}

/// Option numbers RFC 7252 §12.2 reserves: no message may carry them.
fn is_reserved(number: u16) -> bool {
    matches!(number, 0 | 128 | 132 | 136 | 140)
}

/// Why an option value cannot go into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionError {
    /// The number is reserved (0, 128, 132, 136, 140: RFC 7252 §12.2).
    #[error("option {number} is reserved")]
    Reserved {
        /// The option number.
        number: u16,
    },
    /// The value's length is outside the option's range (RFC 7252 §5.4.3).
    #[error("{}: a value of {len} bytes, outside {min}..={max}", crate::proto::wire::options::name(*number))]
    Length {
        /// The option number.
        number: u16,
        /// The value's length.
        len: usize,
        /// The shortest value allowed.
        min: usize,
        /// The longest value allowed.
        max: usize,
    },
    /// A string option whose value is not UTF-8.
    #[error("{}: the value is not UTF-8", crate::proto::wire::options::name(*number))]
    NotUtf8 {
        /// The option number.
        number: u16,
    },
    /// A second value of an option that may occur only once (RFC 7252 §5.4.5); `set_option`
    /// replaces instead.
    #[error("{} may occur only once", crate::proto::wire::options::name(*number))]
    Repeated {
        /// The option number.
        number: u16,
    },
}

impl OptionError {
    /// The option at fault.
    pub fn number(&self) -> u16 {
        match self {
            OptionError::Reserved { number }
            | OptionError::Length { number, .. }
            | OptionError::NotUtf8 { number }
            | OptionError::Repeated { number } => *number,
        }
    }
}

/// Checks one value of option `number` against its definition: the length range, and UTF-8
/// for a string option. A number the registry does not list takes any value the wire can carry.
pub fn check_value(number: u16, value: &[u8]) -> Result<(), OptionError> {
    if is_reserved(number) {
        return Err(OptionError::Reserved { number });
    }
    let (min, max) = match definition(number) {
        Some(d) => (d.min_len, d.max_len),
        None => (0, MAX_OPTION_VALUE_LEN),
    };
    if !(min..=max).contains(&value.len()) {
        return Err(OptionError::Length {
            number,
            len: value.len(),
            min,
            max,
        });
    }
    if definition(number).is_some_and(|d| d.format == Text) && std::str::from_utf8(value).is_err() {
        return Err(OptionError::NotUtf8 { number });
    }
    Ok(())
}

/// Whether option `number` may occur more than once; a number the registry does not list may.
pub(crate) fn is_repeatable(number: u16) -> bool {
    definition(number).is_none_or(|d| d.repeatable)
}

/// An entity tag (RFC 7252 §5.10.6): 1 to 8 opaque bytes naming one representation of a
/// resource. Its validity is the type's: an `ETag` always fits the option.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ETag {
    len: u8,
    bytes: [u8; 8],
}

impl ETag {
    /// The entity tag `bytes`; an error unless it is 1 to 8 bytes long.
    pub fn new(bytes: &[u8]) -> Result<ETag, OptionError> {
        if !(1..=8).contains(&bytes.len()) {
            return Err(OptionError::Length {
                number: ETAG,
                len: bytes.len(),
                min: 1,
                max: 8,
            });
        }
        let mut tag = [0u8; 8];
        tag[..bytes.len()].copy_from_slice(bytes);
        Ok(ETag {
            len: bytes.len() as u8,
            bytes: tag,
        })
    }

    /// The entity tag whose bytes are `value` in the shortest big-endian form (one byte for 0),
    /// e.g. a version counter or a hash of the representation.
    pub fn from_u64(value: u64) -> ETag {
        let bytes = value.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count().min(7);
        // 1 to 8 bytes, by construction.
        ETag::new(&bytes[skip..]).unwrap_or(ETag { len: 8, bytes })
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Hex, as protocol traces write it: `ETag(5a01)`.
impl fmt::Debug for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ETag({self})")
    }
}

/// Hex: `5a01`.
impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_bytes()
            .iter()
            .try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// One value of If-Match (RFC 7252 §5.10.8.1): the request applies only if the resource's
/// current representation has this entity tag, or (empty value) if the resource exists at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IfMatch {
    /// An empty If-Match: the resource exists, whatever its representation.
    Exists,
    /// The representation's entity tag is this one.
    ETag(ETag),
}

impl IfMatch {
    /// The option value: empty, or the entity tag's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IfMatch::Exists => &[],
            IfMatch::ETag(tag) => tag.as_bytes(),
        }
    }

    /// The condition an If-Match value states; `None` for one longer than 8 bytes.
    pub fn from_bytes(value: &[u8]) -> Option<IfMatch> {
        if value.is_empty() {
            Some(IfMatch::Exists)
        } else {
            ETag::new(value).ok().map(IfMatch::ETag)
        }
    }

    /// Whether the target meets this condition: `exists` says whether the resource exists,
    /// `current` is the entity tag of its current representation (`None` when it has none).
    /// A resource that does not exist meets no If-Match condition.
    pub fn matches(&self, exists: bool, current: Option<ETag>) -> bool {
        match self {
            IfMatch::Exists => exists,
            IfMatch::ETag(tag) => exists && current == Some(*tag),
        }
    }
}

/// Options by number, repeatable ones in the order they were added or arrived (RFC 7252
/// §5.4.5), iterated in ascending number order: the wire's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OptionList {
    map: BTreeMap<u16, Vec<Vec<u8>>>,
}

impl OptionList {
    pub(crate) fn first(&self, number: u16) -> Option<&[u8]> {
        self.map.get(&number)?.first().map(Vec::as_slice)
    }

    pub(crate) fn all(&self, number: u16) -> impl Iterator<Item = &[u8]> {
        self.map
            .get(&number)
            .into_iter()
            .flatten()
            .map(Vec::as_slice)
    }

    pub(crate) fn contains(&self, number: u16) -> bool {
        self.map.contains_key(&number)
    }

    pub(crate) fn push(&mut self, number: u16, value: Vec<u8>) {
        self.map.entry(number).or_default().push(value);
    }

    pub(crate) fn replace(&mut self, number: u16, value: Vec<u8>) {
        self.map.insert(number, vec![value]);
    }

    pub(crate) fn remove(&mut self, number: u16) -> bool {
        self.map.remove(&number).is_some()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u16, &[u8])> {
        self.map
            .iter()
            .flat_map(|(n, values)| values.iter().map(move |v| (*n, v.as_slice())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_sorted_and_agrees_with_the_recognised_table() {
        assert!(REGISTRY.windows(2).all(|w| w[0].number < w[1].number));
        for spec in crate::proto::wire::options::RECOGNISED {
            let d = definition(spec.number).expect(spec.name);
            assert_eq!(
                (d.name, d.repeatable, d.min_len, d.max_len),
                (spec.name, spec.repeatable, spec.min_len, spec.max_len)
            );
        }
    }

    #[test]
    fn values_are_checked_against_their_definition() {
        assert_eq!(check_value(ETAG, &[1; 8]), Ok(()));
        assert_eq!(
            check_value(ETAG, &[1; 9]),
            Err(OptionError::Length {
                number: ETAG,
                len: 9,
                min: 1,
                max: 8
            })
        );
        assert!(check_value(ETAG, &[]).is_err());
        assert_eq!(check_value(IF_MATCH, &[]), Ok(()));
        assert!(check_value(IF_NONE_MATCH, &[0]).is_err());
        assert_eq!(
            check_value(LOCATION_PATH, &[0xff]),
            Err(OptionError::NotUtf8 {
                number: LOCATION_PATH
            })
        );
        assert!(check_value(CONTENT_FORMAT, &[1, 2, 3]).is_err());
        assert_eq!(
            check_value(0, &[]),
            Err(OptionError::Reserved { number: 0 })
        );
        assert_eq!(check_value(65_000, &[7; 2000]), Ok(()), "unknown: opaque");
        assert_eq!(
            OptionError::Repeated { number: MAX_AGE }.to_string(),
            "option 14 (Max-Age) may occur only once"
        );
    }

    #[test]
    fn etags_are_one_to_eight_bytes() {
        assert!(ETag::new(&[]).is_err());
        assert!(ETag::new(&[0; 9]).is_err());
        assert_eq!(ETag::new(&[0x5a, 0x01]).unwrap().as_bytes(), [0x5a, 0x01]);
        assert_eq!(ETag::from_u64(0).as_bytes(), [0x00]);
        assert_eq!(ETag::from_u64(0x1234).as_bytes(), [0x12, 0x34]);
        assert_eq!(ETag::from_u64(u64::MAX).as_bytes(), [0xff; 8]);
        assert_eq!(format!("{:?}", ETag::from_u64(0x5a01)), "ETag(5a01)");
    }

    #[test]
    fn if_match_conditions() {
        let tag = ETag::from_u64(7);
        assert_eq!(IfMatch::from_bytes(&[]), Some(IfMatch::Exists));
        assert_eq!(IfMatch::from_bytes(&[7]), Some(IfMatch::ETag(tag)));
        assert_eq!(IfMatch::from_bytes(&[0; 9]), None);
        assert!(IfMatch::Exists.matches(true, None));
        assert!(!IfMatch::Exists.matches(false, None));
        assert!(IfMatch::ETag(tag).matches(true, Some(tag)));
        assert!(!IfMatch::ETag(tag).matches(true, Some(ETag::from_u64(8))));
    }

    #[test]
    fn the_list_keeps_number_order_and_value_order() {
        let mut list = OptionList::default();
        list.push(20, b"b".to_vec());
        list.push(4, vec![1]);
        list.push(20, b"a".to_vec());
        let all: Vec<_> = list.iter().collect();
        assert_eq!(all, [(4, &[1][..]), (20, b"b"), (20, b"a")]);
        list.replace(20, b"c".to_vec());
        assert_eq!(list.all(20).collect::<Vec<_>>(), [b"c"]);
        assert!(list.remove(4) && !list.contains(4) && list.first(4).is_none());
    }
}
