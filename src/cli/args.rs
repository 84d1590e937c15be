//! Argument parsers shared by both binaries' command lines (`coap-keepalive` and, through a
//! `#[path]` module, `coap-keepalive-rigs`).

use std::time::Duration;

/// Parses a non-negative number of seconds, fractions allowed ("0.25").
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a block size of block-wise transfer (RFC 7959 §2.2): 16, 32, 64, 128, 256, 512 or
/// 1024 bytes, the only sizes a Block option can say.
#[allow(dead_code)] // the rigs binary includes this file and has no block-wise flags
pub fn parse_block_size(s: &str) -> Result<usize, String> {
    let bytes: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !(16..=1024).contains(&bytes) || !bytes.is_power_of_two() {
        return Err(format!(
            "{bytes} bytes is not a block size: RFC 7959 blocks are 16, 32, 64, 128, 256, 512 \
             or 1024 bytes"
        ));
    }
    Ok(bytes)
}

/// Parses a body size in bytes, from 1 byte to 4 GiB - 1 (Size1 / Size2 are 32-bit).
#[allow(dead_code)] // the rigs binary includes this file and has no block-wise flags
pub fn parse_body_size(s: &str) -> Result<usize, String> {
    let bytes: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if bytes == 0 || bytes > u64::from(u32::MAX) {
        return Err(format!(
            "{bytes} is not a body size: from 1 byte to {} bytes",
            u32::MAX
        ));
    }
    usize::try_from(bytes).map_err(|_| format!("{bytes} bytes does not fit this machine"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_the_seven_powers_of_two() {
        for ok in [16, 32, 64, 128, 256, 512, 1024] {
            assert_eq!(parse_block_size(&ok.to_string()), Ok(ok));
        }
        for bad in ["0", "8", "48", "100", "2048", "-64", "1k"] {
            assert!(parse_block_size(bad).is_err(), "{bad}");
        }
        assert!(parse_block_size("100").unwrap_err().contains("16, 32, 64"));
    }

    #[test]
    fn body_sizes_are_1_to_4_gib() {
        assert_eq!(parse_body_size("1"), Ok(1));
        assert_eq!(parse_body_size("1048576"), Ok(1 << 20));
        assert!(parse_body_size("0").is_err());
        assert!(parse_body_size("4294967296").is_err());
        assert!(parse_body_size("1M").is_err());
    }
}
