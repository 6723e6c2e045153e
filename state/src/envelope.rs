//! The on-disk format of one checkpoint file.
//!
//! A file has exactly three lines:
//!
//! ```text
//! tidemill-<kind> v<version>
//! <body: one line of JSON>
//! crc32 <8 hex digits of the CRC-32 of the body line>
//! ```
//!
//! The header says what the file is and which format version wrote it; the
//! trailer detects truncation and corruption. The body stays readable with
//! ordinary tools (`sed -n 2p offsets/7 | jq`).

use object_store::path::Path;
use serde::{Serialize, de::DeserializeOwned};

use crate::{Result, StateError};

/// Encodes `body` as a checkpoint file of the given `kind` and `version`.
///
/// `path` is only used for error messages.
pub fn encode<T: Serialize>(path: &Path, kind: &str, version: u32, body: &T) -> Result<Vec<u8>> {
    let json = serde_json::to_string(body).map_err(|source| StateError::Serialize {
        path: path.clone(),
        source,
    })?;
    let crc = crc32fast::hash(json.as_bytes());
    Ok(format!("tidemill-{kind} v{version}\n{json}\ncrc32 {crc:08x}\n").into_bytes())
}

/// Decodes and validates a checkpoint file written by [`encode`].
///
/// Fails with [`StateError::Incompatible`] if the kind or version differs
/// and with [`StateError::Corrupt`] if the file is truncated, fails its
/// checksum or its body does not parse as `T`.
pub fn decode<T: DeserializeOwned>(
    path: &Path,
    kind: &str,
    version: u32,
    bytes: &[u8],
) -> Result<T> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.clone(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(format!("not UTF-8 text ({e})")))?;
    let mut lines = text.split('\n');
    let header = lines.next().unwrap_or_default();
    let (found_kind, found_version) = parse_header(header).ok_or_else(|| {
        corrupt(format!(
            "first line is not a Tidemill header: {:?}",
            truncate(header)
        ))
    })?;
    if found_kind != kind {
        return Err(StateError::Incompatible {
            path: path.clone(),
            reason: format!("expected a '{kind}' file, found a '{found_kind}' file"),
        });
    }
    if found_version != version {
        return Err(StateError::Incompatible {
            path: path.clone(),
            reason: format!(
                "format version {found_version} is not supported (this build reads version {version})"
            ),
        });
    }
    let body = lines.next().ok_or_else(|| {
        corrupt(format!(
            "truncated after the header ({} bytes)",
            bytes.len()
        ))
    })?;
    let trailer = lines.next().filter(|l| !l.is_empty()).ok_or_else(|| {
        corrupt(format!(
            "truncated: checksum line missing ({} bytes)",
            bytes.len()
        ))
    })?;
    let expected = trailer
        .strip_prefix("crc32 ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| corrupt(format!("malformed checksum line {:?}", truncate(trailer))))?;
    let actual = crc32fast::hash(body.as_bytes());
    if actual != expected {
        return Err(corrupt(format!(
            "checksum mismatch (recorded {expected:08x}, computed {actual:08x})"
        )));
    }
    serde_json::from_str(body).map_err(|e| corrupt(format!("body does not parse: {e}")))
}

fn parse_header(line: &str) -> Option<(&str, u32)> {
    let rest = line.strip_prefix("tidemill-")?;
    let (kind, version) = rest.split_once(" v")?;
    Some((kind, version.parse().ok()?))
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Body {
        a: u64,
        b: String,
    }

    fn path() -> Path {
        Path::from("chk/offsets/3")
    }

    #[test]
    fn round_trips() {
        let body = Body {
            a: 7,
            b: "x\ny".into(),
        };
        let bytes = encode(&path(), "offsets", 1, &body).unwrap();
        let back: Body = decode(&path(), "offsets", 1, &bytes).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(
            &path(),
            "offsets",
            1,
            &Body {
                a: 1,
                b: "b".into(),
            },
        )
        .unwrap();
        // Dropping the final newline alone still leaves a complete file.
        for len in 0..bytes.len() - 1 {
            let err = decode::<Body>(&path(), "offsets", 1, &bytes[..len]).unwrap_err();
            assert!(
                matches!(err, StateError::Corrupt { .. }),
                "len {len}: {err}"
            );
            assert!(err.to_string().contains("chk/offsets/3"), "{err}");
        }
    }

    #[test]
    fn flipped_body_byte_fails_checksum() {
        let mut bytes = encode(
            &path(),
            "offsets",
            1,
            &Body {
                a: 1,
                b: "bbbb".into(),
            },
        )
        .unwrap();
        let pos = bytes.iter().position(|&c| c == b'b').unwrap();
        bytes[pos] = b'c';
        let err = decode::<Body>(&path(), "offsets", 1, &bytes).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn wrong_kind_or_version_is_incompatible() {
        let bytes = encode(
            &path(),
            "commits",
            2,
            &Body {
                a: 1,
                b: "b".into(),
            },
        )
        .unwrap();
        let err = decode::<Body>(&path(), "offsets", 2, &bytes).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a 'offsets' file, found a 'commits' file"),
            "{err}"
        );
        let err = decode::<Body>(&path(), "commits", 1, &bytes).unwrap_err();
        assert!(
            err.to_string()
                .contains("format version 2 is not supported"),
            "{err}"
        );
    }
}
