//! Request-path normalization: turns the raw `:path` Envoy reports into a canonical list of decoded
//! segments, or refuses it as ambiguous (DESIGN.md stage 3).
//!
//! scp-pep never guesses what an upstream router would make of an odd path. Anything that two
//! reasonable HTTP stacks could route differently is rejected with `PATH_AMBIGUOUS`: dot segments,
//! empty segments (`//`, trailing `/`), backslashes, `;` path parameters, control and non-ASCII
//! bytes, percent-encoded `/`, `\`, `.`, `%`, `;`, control bytes or unreserved characters (a
//! non-canonical encoding), and malformed percent-escapes. Case is kept: `/V1/...` simply matches
//! no route (default deny).

use percent_encoding::percent_decode_str;

/// A path split into decoded segments, plus the raw query string (without `?`), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// Decoded segments; empty for `/`.
    pub segments: Vec<String>,
    /// `segments` joined with `/`, with a leading `/`; used in logs.
    pub path: String,
    /// Raw query string after the first `?`, without the `?`.
    pub query: Option<String>,
}

/// Why a path was refused; the message is safe to return to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AmbiguousPath(pub &'static str);

/// Normalizes `raw` (Envoy's `:path`, i.e. path plus optional query).
///
/// Returns the decoded segments or [`AmbiguousPath`] naming the rule that fired. Allocation: one
/// `String` per segment. Implements DESIGN.md stage 3 ("ambiguous paths are rejected, not guessed").
pub fn normalize(raw: &str) -> Result<NormalizedPath, AmbiguousPath> {
    if raw.contains('#') {
        return Err(AmbiguousPath("fragment in request path"));
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (raw, None),
    };
    if !path.starts_with('/') {
        return Err(AmbiguousPath("path must start with `/`"));
    }
    if path == "/" {
        return Ok(NormalizedPath {
            segments: Vec::new(),
            path: "/".into(),
            query,
        });
    }
    let mut segments = Vec::new();
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(AmbiguousPath("empty path segment (`//` or trailing `/`)"));
        }
        if seg == "." || seg == ".." {
            return Err(AmbiguousPath("dot segment in path"));
        }
        for b in seg.bytes() {
            if !(0x21..0x7f).contains(&b) {
                return Err(AmbiguousPath("control, space or non-ASCII byte in path"));
            }
            if b == b'\\' {
                return Err(AmbiguousPath("backslash in path"));
            }
            if b == b';' {
                return Err(AmbiguousPath("`;` path parameter in path"));
            }
        }
        check_escapes(seg)?;
        let decoded = percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| AmbiguousPath("percent-encoded bytes are not UTF-8"))?;
        segments.push(decoded.into_owned());
    }
    let path = format!("/{}", segments.join("/"));
    Ok(NormalizedPath {
        segments,
        path,
        query,
    })
}

/// Rejects malformed escapes and escapes of characters that change routing or have a canonical
/// unescaped form.
fn check_escapes(seg: &str) -> Result<(), AmbiguousPath> {
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(AmbiguousPath("malformed percent-escape in path"))?;
            match hex {
                b'/' | b'\\' => return Err(AmbiguousPath("encoded slash or backslash in path")),
                b'.' => return Err(AmbiguousPath("encoded dot in path")),
                b'%' | b';' => return Err(AmbiguousPath("encoded `%` or `;` in path")),
                0..=0x1f | 0x7f => {
                    return Err(AmbiguousPath("encoded control byte in path"));
                }
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => {
                    return Err(AmbiguousPath(
                        "non-canonical percent-encoding of an unreserved character",
                    ));
                }
                _ => {}
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Returns the first value of query parameter `name` in `query` (percent-decoded, `+` as space), or
/// `None` when absent. Used to find a person id in the query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (k.replace('+', " "), v.replace('+', " "));
        let k = percent_decode_str(&k).decode_utf8().ok()?;
        if k == name {
            percent_decode_str(&v)
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned())
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_normalize() {
        let p = normalize("/v1/tenants/ke/persons/p%20x?a=1").unwrap();
        assert_eq!(p.segments, vec!["v1", "tenants", "ke", "persons", "p x"]);
        assert_eq!(p.query.as_deref(), Some("a=1"));
        assert_eq!(normalize("/").unwrap().segments, Vec::<String>::new());
    }

    #[test]
    fn ambiguous_paths_are_rejected() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a/b/",
            "/a/%2e%2e/b",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a;x=1/b",
            "/a/..;/b",
            "/%61dmin",
            "/a%zz",
            "/a%2",
            "/a%00b",
            "/a%25",
            "a/b",
            "",
            "/a b",
            "/a#frag",
            "/caf\u{e9}",
        ] {
            assert!(normalize(bad).is_err(), "{bad} should be rejected");
        }
    }

    /// Percent-encode everything but unreserved characters (RFC 3986 canonical form).
    const CANONICAL: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');

    proptest::proptest! {
        /// DESIGN stage 3: whatever the input, normalization never panics; an accepted path has
        /// no dot, empty or slash-bearing segment, and normalizing its canonical form again gives
        /// the same segments (no second interpretation exists).
        #[test]
        fn normalization_is_unambiguous(raw in "(/([a-zA-Z0-9._~;:@!$&'()*+,=-]|%[0-9a-fA-F]{2}|/|\\\\|%|\\.){0,6}){1,6}(\\?[a-z=&%0-9]{0,8})?") {
            if let Ok(n) = normalize(&raw) {
                for s in &n.segments {
                    proptest::prop_assert!(!s.is_empty() && s != "." && s != "..");
                    proptest::prop_assert!(!s.contains('/') && !s.contains('\\'));
                }
                let reencoded: Vec<String> = n
                    .segments
                    .iter()
                    .map(|s| percent_encoding::utf8_percent_encode(s, CANONICAL).to_string())
                    .collect();
                let again = format!("/{}", reencoded.join("/"));
                let m = normalize(&again);
                proptest::prop_assert!(m.is_ok(), "canonical form {} rejected", again);
                proptest::prop_assert_eq!(m.unwrap().segments, n.segments);
            }
        }
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param("a=1&pid=p%2D1+x", "pid").as_deref(),
            Some("p-1 x")
        );
        assert_eq!(query_param("a=1", "pid"), None);
    }
}
