//! [`ServerPsk`]: what a DTLS server knows of pre-shared keys: the identity hint it sends, and
//! the key of each client identity, found by a lookup function; and the `identity:key` file
//! format of `serve --psk-file`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::proto::error::{Error, Result};

use super::PskCredentials;

/// The PSK identity hint a DTLS server sends unless told otherwise, the same as libcoap's
/// `coap-server -k`.
pub const DTLS_PSK_IDENTITY_HINT: &[u8] = b"CoAP";

/// The signature of a PSK lookup: the key of a client identity, `None` for an identity the
/// server does not know (the handshake is then refused).
pub type PskLookup = dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync;

/// The pre-shared keys a DTLS server accepts (RFC 4279): a lookup from the identity a client
/// sends to its key, and the identity hint the server sends first.
///
/// Keys never appear in `Debug` output or in logs; identities do.
///
/// ```
/// use coap_keepalive::credentials::ServerPsk;
///
/// let keys = ServerPsk::from_pairs([("sensor-1", "key one"), ("sensor-2", "key two")])
///     .with_identity_hint("my-server");
/// assert_eq!(keys.key_for(b"sensor-2").as_deref(), Some(&b"key two"[..]));
/// assert_eq!(keys.key_for(b"stranger"), None);
/// assert_eq!(keys.identity_hint(), b"my-server");
/// ```
#[derive(Clone)]
pub struct ServerPsk {
    hint: Vec<u8>,
    lookup: Arc<PskLookup>,
}

impl ServerPsk {
    /// Any identity gets `key`, as libcoap's `coap-server -k` does.
    pub fn any_identity(key: impl Into<Vec<u8>>) -> ServerPsk {
        let key = key.into();
        ServerPsk::from_fn(move |_| Some(key.clone()))
    }

    /// The keys of the identities in `pairs`; any other identity is refused.
    pub fn from_pairs<I, K, V>(pairs: I) -> ServerPsk
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<Vec<u8>>,
        V: Into<Vec<u8>>,
    {
        let map: HashMap<Vec<u8>, Vec<u8>> = pairs
            .into_iter()
            .map(|(identity, key)| (identity.into(), key.into()))
            .collect();
        ServerPsk::from_fn(move |identity| map.get(identity).cloned())
    }

    /// Keys found by `lookup`, called once per handshake with the identity the client sent.
    pub fn from_fn(lookup: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static) -> Self {
        ServerPsk {
            hint: DTLS_PSK_IDENTITY_HINT.to_vec(),
            lookup: Arc::new(lookup),
        }
    }

    /// Reads `identity:key` lines from `path` (see [`ServerPsk::parse`]); errors name the file
    /// and the line, never a key.
    pub fn from_file(path: &Path) -> Result<ServerPsk> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        ServerPsk::parse(&text).map_err(|e| match e {
            Error::Config(message) => Error::Config(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    /// Parses one `identity:key` per line. The identity is everything before the first `:`
    /// (not empty); the key everything after it, as text, or as hex after `0x` (an even number
    /// of hex digits). Blank lines and lines starting with `#` are skipped; an identity given
    /// twice is an error.
    pub fn parse(text: &str) -> Result<ServerPsk> {
        let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let n = n + 1;
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((identity, key)) = line.split_once(':') else {
                return Err(Error::Config(format!(
                    "line {n}: expected identity:key (no ':')"
                )));
            };
            if identity.is_empty() {
                return Err(Error::Config(format!("line {n}: empty identity")));
            }
            let key = parse_key(key).map_err(|why| Error::Config(format!("line {n}: {why}")))?;
            if map.insert(identity.as_bytes().to_vec(), key).is_some() {
                return Err(Error::Config(format!(
                    "line {n}: identity {identity:?} given twice"
                )));
            }
        }
        if map.is_empty() {
            return Err(Error::Config("no identity:key line".into()));
        }
        Ok(ServerPsk::from_fn(move |identity| {
            map.get(identity).cloned()
        }))
    }

    /// Sends `hint` as the PSK identity hint (RFC 4279 §2) instead of `CoAP`; an empty hint
    /// sends none (no ServerKeyExchange).
    pub fn with_identity_hint(mut self, hint: impl Into<Vec<u8>>) -> ServerPsk {
        self.hint = hint.into();
        self
    }

    /// The identity hint the server sends.
    pub fn identity_hint(&self) -> &[u8] {
        &self.hint
    }

    /// The key of `identity`, `None` when it is unknown.
    pub fn key_for(&self, identity: &[u8]) -> Option<Vec<u8>> {
        (self.lookup)(identity)
    }
}

impl From<PskCredentials> for ServerPsk {
    /// Any identity gets the key, as [`ServerCredentials::Psk`](super::ServerCredentials::Psk)
    /// has it.
    fn from(psk: PskCredentials) -> ServerPsk {
        ServerPsk::any_identity(psk.key)
    }
}

impl PartialEq for ServerPsk {
    /// The same lookup (not an equal one) and the same hint.
    fn eq(&self, other: &ServerPsk) -> bool {
        Arc::ptr_eq(&self.lookup, &other.lookup) && self.hint == other.hint
    }
}

impl Eq for ServerPsk {}

impl fmt::Debug for ServerPsk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerPsk")
            .field("identity_hint", &String::from_utf8_lossy(&self.hint))
            .field("keys", &"<lookup>")
            .finish()
    }
}

/// A key as text, or as hex after `0x`.
fn parse_key(key: &str) -> std::result::Result<Vec<u8>, String> {
    let bytes = match key.strip_prefix("0x").or_else(|| key.strip_prefix("0X")) {
        Some(hex) => {
            if hex.is_empty() || hex.len() % 2 != 0 {
                return Err("a 0x key needs an even, non-zero number of hex digits".into());
            }
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<std::result::Result<Vec<u8>, _>>()
                .map_err(|_| "a 0x key holds a character that is not a hex digit".to_string())?
        }
        None => key.as_bytes().to_vec(),
    };
    if bytes.is_empty() {
        return Err("empty key".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_format() {
        let keys = ServerPsk::parse(
            "# comment\nalpha:text key\n\nbeta:0x00ff10\r\ngamma:has:colon\ndelta:0xAbCd\n",
        )
        .unwrap();
        assert_eq!(keys.key_for(b"alpha").unwrap(), b"text key");
        assert_eq!(keys.key_for(b"beta").unwrap(), [0x00, 0xff, 0x10]);
        assert_eq!(keys.key_for(b"gamma").unwrap(), b"has:colon");
        assert_eq!(keys.key_for(b"delta").unwrap(), [0xab, 0xcd]);
        assert_eq!(keys.key_for(b"omega"), None);
        assert_eq!(keys.identity_hint(), DTLS_PSK_IDENTITY_HINT);
    }

    #[test]
    fn file_errors_name_the_line_not_the_key() {
        for (text, says) in [
            ("alpha:a\nno colon here\n", "line 2: expected identity:key"),
            (":secret\n", "line 1: empty identity"),
            ("a:\n", "line 1: empty key"),
            ("a:0x123\n", "even"),
            ("a:0xzz\n", "hex digit"),
            ("a:x\na:y\n", "given twice"),
            ("# nothing\n", "no identity:key"),
        ] {
            let error = ServerPsk::parse(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, "x\n").unwrap();
        let error = ServerPsk::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("keys.txt: line 1"), "{error}");
    }

    #[test]
    fn debug_hides_keys() {
        let keys = ServerPsk::from_pairs([("id", "secret")]);
        assert!(!format!("{keys:?}").contains("secret"));
        assert_eq!(keys, keys.clone());
        assert_ne!(keys, ServerPsk::from_pairs([("id", "secret")]));
        assert_eq!(
            ServerPsk::from(PskCredentials::new("x", "k")).key_for(b"anyone"),
            Some(b"k".to_vec())
        );
    }
}
