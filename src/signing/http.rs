//! Verification (and client-side creation) of draft-cavage HTTP Signatures
//! restricted to Ed25519, as used by agents talking to the hub.
//!
//! A request carries a header such as
//!
//! ```text
//! Signature: keyId="agent-1",algorithm="ed25519",headers="(request-target) host date",signature="<base64>"
//! ```
//!
//! The server side is split into small steps so the HTTP layer can map each
//! failure to its own status code: [`parse_signature_header`],
//! [`check_date`], [`verify_digests`] and [`verify_signature`]. The client
//! side is [`sign_request`] plus the header value helpers [`digest_header`],
//! [`content_digest_header`] and [`http_date`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::{Iso8601, Rfc3339};

/// The only algorithm name accepted in the `algorithm` parameter.
const ALGORITHM: &str = "ed25519";
/// Pseudo-header covering the method and the path and query.
const REQUEST_TARGET: &str = "(request-target)";
/// Signed header list assumed by the draft when `headers` is absent.
const DEFAULT_HEADERS: &[&str] = &["date"];
/// Headers that every accepted signature must cover, so a captured request
/// can neither be replayed later nor against another endpoint.
const REQUIRED_HEADERS: &[&str] = &[REQUEST_TARGET, "date"];
/// Largest instant an HTTP date can express (9999-12-31T23:59:59Z).
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

/// Why a signed request was rejected; each variant maps to one API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpSignatureError {
    /// The Signature header cannot be parsed (400 INVALID_SIGNATURE_HEADER).
    #[error("malformed Signature header: {0}")]
    Malformed(String),
    /// The `algorithm` parameter names something other than Ed25519
    /// (400 UNSUPPORTED_ALGORITHM).
    #[error("unsupported signature algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// The signature does not cover `(request-target)` and `date`
    /// (400 INSUFFICIENT_SIGNED_HEADERS).
    #[error("signed headers must include (request-target) and date")]
    InsufficientSignedHeaders,
    /// A header listed as signed is absent from the request (401 SIGNATURE_INVALID).
    #[error("signed header missing from request: {0}")]
    MissingSignedHeader(String),
    /// No candidate key verifies the signature (401 SIGNATURE_INVALID).
    #[error("signature does not verify")]
    BadSignature,
    /// There is no usable Date header (401 REQUEST_EXPIRED).
    #[error("Date header missing or unparsable")]
    MissingDate,
    /// The Date header is too far from the server clock (401 REQUEST_EXPIRED).
    #[error("Date header outside the allowed clock skew")]
    StaleDate,
    /// A signed `Digest` / `Content-Digest` does not match the body
    /// (401 DIGEST_MISMATCH).
    #[error("body digest does not match")]
    DigestMismatch,
}

/// Parsed parameters of a Signature header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureParams {
    /// The `keyId` parameter: the agent id whose keys are tried.
    pub key_id: String,
    /// The `algorithm` parameter as sent, if any (always Ed25519 once parsed).
    pub algorithm: Option<String>,
    /// Lowercased signed header names, in signing order.
    pub headers: Vec<String>,
    /// Decoded signature bytes (length checked at verification time).
    pub signature: Vec<u8>,
}

/// Minimal view of the request being verified or signed, so this module
/// needs no HTTP framework types.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// HTTP method in any case, e.g. `POST`.
    pub method: &'a str,
    /// Path and query exactly as sent on the request line, e.g. `/v1/x?a=1`.
    pub path_and_query: &'a str,
    /// Header `(name, value)` pairs; names in any case, names may repeat.
    pub headers: &'a [(&'a str, &'a str)],
}

impl RequestParts<'_> {
    /// All values of the header `name` (case-insensitive), in request order.
    fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// Parses a Signature header value and enforces the algorithm and
/// required-headers rules, so callers get a fully validated parameter set.
pub fn parse_signature_header(value: &str) -> Result<SignatureParams, HttpSignatureError> {
    let mut key_id = None;
    let mut algorithm = None;
    let mut headers = None;
    let mut signature = None;

    for (name, val) in parse_params(value)? {
        let slot = match name.as_str() {
            "keyId" => &mut key_id,
            "algorithm" => &mut algorithm,
            "headers" => &mut headers,
            "signature" => &mut signature,
            _ => continue,
        };
        *slot = Some(val);
    }

    let key_id = key_id.ok_or_else(|| malformed("missing keyId"))?;
    if key_id.is_empty() {
        return Err(malformed("empty keyId"));
    }
    let signature = signature.ok_or_else(|| malformed("missing signature"))?;
    let signature = BASE64
        .decode(signature.trim())
        .map_err(|e| malformed(&format!("signature is not valid base64: {e}")))?;
    if let Some(alg) = &algorithm {
        check_algorithm(alg)?;
    }
    let headers: Vec<String> = match headers {
        Some(list) => list
            .split_ascii_whitespace()
            .map(str::to_ascii_lowercase)
            .collect(),
        None => DEFAULT_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
    };
    check_required_headers(&headers)?;

    Ok(SignatureParams {
        key_id,
        algorithm,
        headers,
        signature,
    })
}

/// Builds the exact string that is signed, so server and clients agree byte
/// for byte on what the signature covers.
pub fn signing_string(
    signed_headers: &[String],
    req: &RequestParts<'_>,
) -> Result<String, HttpSignatureError> {
    let mut lines = Vec::with_capacity(signed_headers.len());
    for header in signed_headers {
        let name = header.to_ascii_lowercase();
        if name == REQUEST_TARGET {
            lines.push(format!(
                "{REQUEST_TARGET}: {} {}",
                req.method.to_ascii_lowercase(),
                req.path_and_query
            ));
            continue;
        }
        let values: Vec<&str> = req.header_values(&name).map(str::trim).collect();
        if values.is_empty() {
            return Err(HttpSignatureError::MissingSignedHeader(name));
        }
        lines.push(format!("{name}: {}", values.join(", ")));
    }
    Ok(lines.join("\n"))
}

/// Checks the signature against every candidate key, since an agent may
/// hold several active keys while rotating.
pub fn verify_signature(
    params: &SignatureParams,
    req: &RequestParts<'_>,
    keys: &[VerifyingKey],
) -> Result<(), HttpSignatureError> {
    // The fields are public, so re-check what parsing would have enforced.
    if let Some(alg) = &params.algorithm {
        check_algorithm(alg)?;
    }
    check_required_headers(&params.headers)?;
    let message = signing_string(&params.headers, req)?;
    let signature =
        Signature::from_slice(&params.signature).map_err(|_| HttpSignatureError::BadSignature)?;
    if keys
        .iter()
        .any(|key| key.verify_strict(message.as_bytes(), &signature).is_ok())
    {
        Ok(())
    } else {
        Err(HttpSignatureError::BadSignature)
    }
}

/// Rejects requests whose Date header is missing, unparsable or further
/// than `max_skew` from `now`, which bounds the replay window.
///
/// Accepts every HTTP date format (RFC 1123, RFC 850, asctime) as well as
/// RFC 3339 / ISO 8601 timestamps with an offset. The bound is inclusive.
pub fn check_date(
    req: &RequestParts<'_>,
    now: SystemTime,
    max_skew: Duration,
) -> Result<(), HttpSignatureError> {
    let mut values = req.header_values("date");
    let (Some(value), None) = (values.next(), values.next()) else {
        // Absent, or repeated and therefore ambiguous.
        return Err(HttpSignatureError::MissingDate);
    };
    let date = parse_date(value.trim()).ok_or(HttpSignatureError::MissingDate)?;
    let skew = date.abs_diff(unix_nanos(now));
    if skew <= max_skew.as_nanos() {
        Ok(())
    } else {
        Err(HttpSignatureError::StaleDate)
    }
}

/// Checks the body against `Digest` and/or `Content-Digest` when those
/// headers are signed, so a signature also vouches for the body.
pub fn verify_digests(
    signed_headers: &[String],
    req: &RequestParts<'_>,
    body: &[u8],
) -> Result<(), HttpSignatureError> {
    let signed = |name: &str| signed_headers.iter().any(|h| h.eq_ignore_ascii_case(name));
    if !signed("digest") && !signed("content-digest") {
        return Ok(());
    }
    let expected = Sha256::digest(body);
    if signed("digest") {
        let claimed = sha256_entries(req, "digest", |v| Some(v.trim()))?;
        check_all_match(&claimed, &expected)?;
    }
    if signed("content-digest") {
        let claimed = sha256_entries(req, "content-digest", |v| {
            // RFC 8941 byte sequence `:<base64>:`, optionally followed by parameters.
            let bytes = v.split(';').next()?.trim();
            bytes.strip_prefix(':')?.strip_suffix(':')
        })?;
        check_all_match(&claimed, &expected)?;
    }
    Ok(())
}

/// Client side: builds the Signature header value for a request (used by our
/// CLI, benchmark and tests).
///
/// `signed_headers` must include `(request-target)` and `date`, and every
/// other listed header must be present in `req`.
pub fn sign_request(
    key: &SigningKey,
    key_id: &str,
    signed_headers: &[&str],
    req: &RequestParts<'_>,
) -> Result<String, HttpSignatureError> {
    let headers: Vec<String> = signed_headers
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    check_required_headers(&headers)?;
    let message = signing_string(&headers, req)?;
    let signature = key.sign(message.as_bytes());
    Ok(format!(
        "keyId=\"{}\",algorithm=\"{ALGORITHM}\",headers=\"{}\",signature=\"{}\"",
        escape_quoted(key_id),
        headers.join(" "),
        BASE64.encode(signature.to_bytes())
    ))
}

/// Client side: the `Digest` header value for `body` (`SHA-256=<base64>`).
pub fn digest_header(body: &[u8]) -> String {
    format!("SHA-256={}", BASE64.encode(Sha256::digest(body)))
}

/// Client side: the RFC 9530 `Content-Digest` header value for `body`
/// (`sha-256=:<base64>:`).
pub fn content_digest_header(body: &[u8]) -> String {
    format!("sha-256=:{}:", BASE64.encode(Sha256::digest(body)))
}

/// Client side: the `Date` header value for `t` in RFC 1123 GMT form.
///
/// Times outside what an HTTP date can express (before 1970 or after
/// year 9999) are clamped instead of panicking.
pub fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(MAX_HTTP_DATE_SECS);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn malformed(reason: &str) -> HttpSignatureError {
    HttpSignatureError::Malformed(reason.to_owned())
}

fn check_algorithm(alg: &str) -> Result<(), HttpSignatureError> {
    if alg.trim().eq_ignore_ascii_case(ALGORITHM) {
        Ok(())
    } else {
        Err(HttpSignatureError::UnsupportedAlgorithm(alg.to_owned()))
    }
}

fn check_required_headers(headers: &[String]) -> Result<(), HttpSignatureError> {
    let covered = REQUIRED_HEADERS
        .iter()
        .all(|required| headers.iter().any(|h| h.eq_ignore_ascii_case(required)));
    if covered {
        Ok(())
    } else {
        Err(HttpSignatureError::InsufficientSignedHeaders)
    }
}

/// Splits `name="value", name2="value2"` into pairs, unescaping `\x` inside
/// quoted values. Unquoted token values (as draft 12 uses for `created`)
/// are tolerated. Duplicate names are rejected.
fn parse_params(input: &str) -> Result<Vec<(String, String)>, HttpSignatureError> {
    let mut params: Vec<(String, String)> = Vec::new();
    let mut chars = input.chars().peekable();

    loop {
        skip_whitespace(&mut chars);
        if chars.peek().is_none() {
            if params.is_empty() {
                return Err(malformed("empty header"));
            }
            return Err(malformed("trailing comma"));
        }

        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if name.is_empty() {
            return Err(malformed("expected a parameter name"));
        }
        skip_whitespace(&mut chars);
        if chars.next() != Some('=') {
            return Err(malformed(&format!("expected '=' after {name}")));
        }
        skip_whitespace(&mut chars);

        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(malformed(&format!("unterminated quote in {name}"))),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(escaped) => value.push(escaped),
                        None => return Err(malformed(&format!("unterminated quote in {name}"))),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                if c == '"' || c == '\\' {
                    return Err(malformed(&format!("unexpected quote in {name}")));
                }
                value.push(c);
                chars.next();
            }
            if value.is_empty() {
                return Err(malformed(&format!("missing value for {name}")));
            }
        }

        if params.iter().any(|(existing, _)| *existing == name) {
            return Err(malformed(&format!("duplicate parameter {name}")));
        }
        params.push((name, value));

        skip_whitespace(&mut chars);
        match chars.next() {
            None => return Ok(params),
            Some(',') => {}
            Some(c) => return Err(malformed(&format!("unexpected character {c:?}"))),
        }
    }
}

fn skip_whitespace(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

fn escape_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Parses an HTTP date or an RFC 3339 / ISO 8601 timestamp into nanoseconds
/// since the Unix epoch.
fn parse_date(value: &str) -> Option<i128> {
    if let Ok(t) = httpdate::parse_http_date(value) {
        return Some(unix_nanos(t));
    }
    OffsetDateTime::parse(value, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(value, &Iso8601::DEFAULT))
        .ok()
        .map(OffsetDateTime::unix_timestamp_nanos)
}

/// Signed nanoseconds since the Unix epoch, without any panicking arithmetic.
fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    }
}

/// Collects the `sha-256` entries of a comma-separated digest header;
/// `extract` turns the text after `=` into the base64 payload.
fn sha256_entries<'r>(
    req: &RequestParts<'r>,
    header: &str,
    extract: impl Fn(&'r str) -> Option<&'r str>,
) -> Result<Vec<Vec<u8>>, HttpSignatureError> {
    let mut found = Vec::new();
    let values = req
        .headers
        .iter()
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(header))
        .map(|(_, v)| *v);
    for value in values {
        for entry in value.split(',') {
            let Some((alg, rest)) = entry.split_once('=') else {
                continue;
            };
            if !alg.trim().eq_ignore_ascii_case("sha-256") {
                continue;
            }
            let decoded = extract(rest).and_then(|b64| BASE64.decode(b64.trim()).ok());
            found.push(decoded.ok_or(HttpSignatureError::DigestMismatch)?);
        }
    }
    Ok(found)
}

fn check_all_match(claimed: &[Vec<u8>], expected: &[u8]) -> Result<(), HttpSignatureError> {
    if !claimed.is_empty() && claimed.iter().all(|c| c.as_slice() == expected) {
        Ok(())
    } else {
        Err(HttpSignatureError::DigestMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    const DATE: &str = "Tue, 24 Nov 2026 10:00:00 GMT";
    const SIGNED: &[&str] = &["(request-target)", "host", "date"];

    fn now() -> SystemTime {
        httpdate::parse_http_date(DATE).unwrap()
    }

    fn skew() -> Duration {
        Duration::from_secs(300)
    }

    fn headers() -> Vec<(&'static str, &'static str)> {
        vec![("Host", "hub.example.com"), ("Date", DATE)]
    }

    fn req<'a>(headers: &'a [(&'a str, &'a str)]) -> RequestParts<'a> {
        RequestParts {
            method: "POST",
            path_and_query: "/v1/messages?x=1",
            headers,
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn new_key() -> SigningKey {
        SigningKey::generate(&mut OsRng)
    }

    /// Signs `signer_req`, then parses and verifies against `verify_req`.
    fn sign_then_verify(
        signer_req: &RequestParts<'_>,
        verify_req: &RequestParts<'_>,
    ) -> Result<(), HttpSignatureError> {
        let key = new_key();
        let header = sign_request(&key, "agent-1", SIGNED, signer_req)?;
        let params = parse_signature_header(&header)?;
        verify_signature(&params, verify_req, &[key.verifying_key()])
    }

    fn sig_b64() -> String {
        BASE64.encode([7u8; 64])
    }

    fn parse(header: &str) -> Result<SignatureParams, HttpSignatureError> {
        parse_signature_header(header)
    }

    fn is_malformed(result: Result<SignatureParams, HttpSignatureError>) -> bool {
        matches!(result, Err(HttpSignatureError::Malformed(_)))
    }

    // ---- round trip ---------------------------------------------------

    #[test]
    fn sign_verify_round_trip() {
        let h = headers();
        let r = req(&h);
        let key = new_key();
        let header = sign_request(&key, "agent-1", SIGNED, &r).unwrap();
        assert!(header.starts_with(
            "keyId=\"agent-1\",algorithm=\"ed25519\",headers=\"(request-target) host date\",signature=\""
        ));
        let params = parse(&header).unwrap();
        assert_eq!(params.key_id, "agent-1");
        assert_eq!(params.algorithm.as_deref(), Some("ed25519"));
        assert_eq!(params.headers, strings(SIGNED));
        assert_eq!(params.signature.len(), 64);
        assert_eq!(
            verify_signature(&params, &r, &[key.verifying_key()]),
            Ok(())
        );
        assert_eq!(check_date(&r, now(), skew()), Ok(()));
    }

    #[test]
    fn signing_string_format() {
        let h = [
            ("host", " hub.example.com "),
            ("X-Multi", "a"),
            ("date", DATE),
            ("x-multi", "b"),
        ];
        let r = RequestParts {
            method: "GeT",
            path_and_query: "/a/b?c=d&e=%20",
            headers: &h,
        };
        let s = signing_string(
            &strings(&["(request-target)", "host", "X-Multi", "date"]),
            &r,
        );
        assert_eq!(
            s.unwrap(),
            format!(
                "(request-target): get /a/b?c=d&e=%20\nhost: hub.example.com\nx-multi: a, b\ndate: {DATE}"
            )
        );
    }

    #[test]
    fn signed_header_missing_from_request() {
        let h = [("Date", DATE)];
        let r = req(&h);
        assert_eq!(
            signing_string(&strings(SIGNED), &r),
            Err(HttpSignatureError::MissingSignedHeader("host".into()))
        );
        assert_eq!(
            sign_request(&new_key(), "a", SIGNED, &r),
            Err(HttpSignatureError::MissingSignedHeader("host".into()))
        );
        // Verification of a parsed header reports the same error.
        let params = parse(&format!(
            "keyId=\"a\",headers=\"(request-target) host date\",signature=\"{}\"",
            sig_b64()
        ))
        .unwrap();
        assert_eq!(
            verify_signature(&params, &r, &[new_key().verifying_key()]),
            Err(HttpSignatureError::MissingSignedHeader("host".into()))
        );
    }

    #[test]
    fn sign_request_rejects_insufficient_headers() {
        let h = headers();
        assert_eq!(
            sign_request(&new_key(), "a", &["host", "date"], &req(&h)),
            Err(HttpSignatureError::InsufficientSignedHeaders)
        );
    }

    #[test]
    fn key_id_with_quotes_round_trips() {
        let h = headers();
        let r = req(&h);
        let key = new_key();
        let header = sign_request(&key, r#"we"ird\id"#, SIGNED, &r).unwrap();
        let params = parse(&header).unwrap();
        assert_eq!(params.key_id, r#"we"ird\id"#);
        assert_eq!(
            verify_signature(&params, &r, &[key.verifying_key()]),
            Ok(())
        );
    }

    // ---- parsing ------------------------------------------------------

    #[test]
    fn params_in_other_order_with_whitespace() {
        let header = format!(
            "  signature = \"{}\" ,headers=\"(request-target)   HOST date\" ,\talgorithm=\"Ed25519\",  keyId =\"agent-9\"  ",
            sig_b64()
        );
        let params = parse(&header).unwrap();
        assert_eq!(params.key_id, "agent-9");
        assert_eq!(params.algorithm.as_deref(), Some("Ed25519"));
        assert_eq!(params.headers, strings(SIGNED));
        assert_eq!(params.signature, vec![7u8; 64]);
    }

    #[test]
    fn quoted_comma_and_escaped_quote() {
        let header = format!(
            r#"keyId="a,b",headers="(request-target) date",signature="{}""#,
            sig_b64()
        );
        assert_eq!(parse(&header).unwrap().key_id, "a,b");
        let header = format!(
            r#"keyId="say \"hi\", ok",headers="(request-target) date",signature="{}""#,
            sig_b64()
        );
        assert_eq!(parse(&header).unwrap().key_id, r#"say "hi", ok"#);
    }

    #[test]
    fn unknown_params_ignored() {
        let header = format!(
            "keyId=\"a\",created=1402170695,expires=\"1402170699\",headers=\"(request-target) date\",signature=\"{}\"",
            sig_b64()
        );
        assert_eq!(parse(&header).unwrap().key_id, "a");
    }

    #[test]
    fn missing_key_id_or_signature_is_malformed() {
        assert!(is_malformed(parse(&format!(
            "headers=\"(request-target) date\",signature=\"{}\"",
            sig_b64()
        ))));
        assert!(is_malformed(parse(
            "keyId=\"a\",headers=\"(request-target) date\""
        )));
        assert!(is_malformed(parse(&format!(
            "keyId=\"\",headers=\"(request-target) date\",signature=\"{}\"",
            sig_b64()
        ))));
    }

    #[test]
    fn missing_headers_param_defaults_to_date_only() {
        let header = format!("keyId=\"a\",signature=\"{}\"", sig_b64());
        assert_eq!(
            parse(&header),
            Err(HttpSignatureError::InsufficientSignedHeaders)
        );
    }

    #[test]
    fn headers_without_request_target_or_date() {
        for list in [
            "host date",
            "(request-target) host",
            "",
            "(request-target)date",
        ] {
            let header = format!("keyId=\"a\",headers=\"{list}\",signature=\"{}\"", sig_b64());
            assert_eq!(
                parse(&header),
                Err(HttpSignatureError::InsufficientSignedHeaders),
                "{list}"
            );
        }
    }

    #[test]
    fn duplicate_param_is_malformed() {
        let header = format!(
            "keyId=\"a\",keyId=\"b\",headers=\"(request-target) date\",signature=\"{}\"",
            sig_b64()
        );
        assert!(is_malformed(parse(&header)));
    }

    #[test]
    fn param_names_are_case_sensitive() {
        let header = format!(
            "keyid=\"a\",headers=\"(request-target) date\",signature=\"{}\"",
            sig_b64()
        );
        assert!(is_malformed(parse(&header)));
    }

    #[test]
    fn bad_syntax_is_malformed() {
        let sig = sig_b64();
        let cases = [
            String::new(),
            "   ".to_owned(),
            format!("keyId=\"a,signature=\"{sig}\""),
            format!("keyId=\"a\" signature=\"{sig}\""),
            format!("keyId=\"a\",,signature=\"{sig}\""),
            format!("keyId=\"a\",signature=\"{sig}\","),
            format!("keyId\"a\",signature=\"{sig}\""),
            format!("keyId=,signature=\"{sig}\""),
            format!("=\"a\",signature=\"{sig}\""),
            format!("keyId=\"a\"x,signature=\"{sig}\""),
            format!("keyId=a\"b,signature=\"{sig}\""),
            "keyId=\"a\",signature=\"abc\\".to_owned(),
            "keyId=\"a\",signature=\"not base64!\"".to_owned(),
            "keyId=\"a\",signature=\"é\"".to_owned(),
        ];
        for case in cases {
            assert!(is_malformed(parse(&case)), "{case:?}");
        }
    }

    #[test]
    fn truncated_and_mangled_headers_do_not_panic() {
        let valid = format!(
            r#"keyId="ä,\"b",algorithm="ed25519",headers="(request-target) date",signature="{}""#,
            sig_b64()
        );
        assert!(parse(&valid).is_ok());
        for (i, _) in valid.char_indices() {
            let _ = parse(&valid[..i]);
            let _ = parse(&valid[i..]);
            let mut spliced = valid.clone();
            spliced.insert(i, '"');
            let _ = parse(&spliced);
        }
    }

    #[test]
    fn unsupported_algorithms() {
        for alg in ["hs2019", "rsa-sha256", "hmac-sha256", ""] {
            let header = format!(
                "keyId=\"a\",algorithm=\"{alg}\",headers=\"(request-target) date\",signature=\"{}\"",
                sig_b64()
            );
            assert_eq!(
                parse(&header),
                Err(HttpSignatureError::UnsupportedAlgorithm(alg.into()))
            );
        }
        let header = format!(
            "keyId=\"a\",algorithm=\"ED25519\",headers=\"(request-target) date\",signature=\"{}\"",
            sig_b64()
        );
        assert!(parse(&header).is_ok());
    }

    // ---- verification ---------------------------------------------------

    #[test]
    fn other_path_fails() {
        let h = headers();
        let signer = req(&h);
        let verifier = RequestParts {
            path_and_query: "/v1/messages?x=2",
            ..signer
        };
        assert_eq!(
            sign_then_verify(&signer, &verifier),
            Err(HttpSignatureError::BadSignature)
        );
    }

    #[test]
    fn other_method_fails() {
        let h = headers();
        let signer = req(&h);
        let verifier = RequestParts {
            method: "PUT",
            ..signer
        };
        assert_eq!(
            sign_then_verify(&signer, &verifier),
            Err(HttpSignatureError::BadSignature)
        );
        // Method case does not matter.
        let verifier = RequestParts {
            method: "post",
            ..signer
        };
        assert_eq!(sign_then_verify(&signer, &verifier), Ok(()));
    }

    #[test]
    fn tampered_header_fails() {
        let h = headers();
        let tampered = [("Host", "evil.example.com"), ("Date", DATE)];
        assert_eq!(
            sign_then_verify(&req(&h), &req(&tampered)),
            Err(HttpSignatureError::BadSignature)
        );
        // Header name case and surrounding whitespace are not significant.
        let respelled = [("HOST", "  hub.example.com"), ("date", DATE)];
        assert_eq!(sign_then_verify(&req(&h), &req(&respelled)), Ok(()));
    }

    #[test]
    fn second_candidate_key_verifies() {
        let h = headers();
        let r = req(&h);
        let key = new_key();
        let params = parse(&sign_request(&key, "a", SIGNED, &r).unwrap()).unwrap();
        let keys = [new_key().verifying_key(), key.verifying_key()];
        assert_eq!(verify_signature(&params, &r, &keys), Ok(()));
        assert_eq!(
            verify_signature(&params, &r, &keys[..1]),
            Err(HttpSignatureError::BadSignature)
        );
        assert_eq!(
            verify_signature(&params, &r, &[]),
            Err(HttpSignatureError::BadSignature)
        );
    }

    #[test]
    fn wrong_length_signature() {
        let h = headers();
        let r = req(&h);
        let key = new_key();
        let mut params = parse(&sign_request(&key, "a", SIGNED, &r).unwrap()).unwrap();
        params.signature.push(0);
        assert_eq!(
            verify_signature(&params, &r, &[key.verifying_key()]),
            Err(HttpSignatureError::BadSignature)
        );
        params.signature.truncate(63);
        assert_eq!(
            verify_signature(&params, &r, &[key.verifying_key()]),
            Err(HttpSignatureError::BadSignature)
        );
        let short = format!(
            "keyId=\"a\",headers=\"(request-target) host date\",signature=\"{}\"",
            BASE64.encode([1u8; 10])
        );
        let params = parse(&short).unwrap();
        assert_eq!(
            verify_signature(&params, &r, &[key.verifying_key()]),
            Err(HttpSignatureError::BadSignature)
        );
    }

    #[test]
    fn verify_rechecks_hand_built_params() {
        let h = headers();
        let r = req(&h);
        let key = new_key();
        let mut params = parse(&sign_request(&key, "a", SIGNED, &r).unwrap()).unwrap();
        params.algorithm = Some("hs2019".into());
        assert_eq!(
            verify_signature(&params, &r, &[key.verifying_key()]),
            Err(HttpSignatureError::UnsupportedAlgorithm("hs2019".into()))
        );
        params.algorithm = None;
        params.headers = strings(&["date"]);
        assert_eq!(
            verify_signature(&params, &r, &[key.verifying_key()]),
            Err(HttpSignatureError::InsufficientSignedHeaders)
        );
    }

    /// Produced by Node 20's `crypto.sign(null, data, key)` with the PKCS#8
    /// private key whose 32-byte seed is 0x01..=0x20, over the signing string
    /// `(request-target): post /v1/messages?x=1\nhost: hub.example.com\n`
    /// `date: <DATE>\ndigest: <DIGEST>`.
    #[test]
    fn node_crypto_vector() {
        const PUBLIC: &str = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664";
        const DIGEST: &str = "SHA-256=k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg=";
        const SIGNATURE: &str = "C3nmGiRjptJE/4jR2okyfrD6maCb3rU/7ni1PbW6mJ3SlOc5fNn54nu8tUzf44YBipLSwa/G1iPJ6LnLptbgDg==";
        let body = br#"{"hello":"world"}"#;

        let mut seed = [0u8; 32];
        for (byte, value) in seed.iter_mut().zip(1u8..) {
            *byte = value;
        }
        let key = SigningKey::from_bytes(&seed);
        let public_hex: String = key
            .verifying_key()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(public_hex, PUBLIC);
        assert_eq!(digest_header(body), DIGEST);

        let h = [
            ("Host", "hub.example.com"),
            ("Date", DATE),
            ("Digest", DIGEST),
        ];
        let r = req(&h);
        let signed = ["(request-target)", "host", "date", "digest"];
        let header = format!(
            "keyId=\"node-agent\",algorithm=\"ed25519\",headers=\"{}\",signature=\"{SIGNATURE}\"",
            signed.join(" ")
        );
        let params = parse(&header).unwrap();
        assert_eq!(
            verify_signature(&params, &r, &[key.verifying_key()]),
            Ok(())
        );
        assert_eq!(verify_digests(&params.headers, &r, body), Ok(()));
        // Ed25519 is deterministic, so our signer must reproduce Node's bytes.
        assert_eq!(
            sign_request(&key, "node-agent", &signed, &r).unwrap(),
            header
        );
    }

    // ---- dates --------------------------------------------------------

    fn date_check(value: &str) -> Result<(), HttpSignatureError> {
        let h = [("Date", value)];
        check_date(&req(&h), now(), skew())
    }

    #[test]
    fn accepted_date_formats() {
        for value in [
            DATE,
            "Tuesday, 24-Nov-26 10:00:00 GMT",
            "Tue Nov 24 10:00:00 2026",
            "2026-11-24T10:00:00Z",
            "2026-11-24T10:00:00.123Z",
            "2026-11-24T11:00:00+01:00",
            "2026-11-24T05:30:00-04:30",
            "2026-11-24T10:04:59Z",
            "2026-11-24T09:55:00Z",
        ] {
            assert_eq!(date_check(value), Ok(()), "{value}");
        }
    }

    #[test]
    fn stale_and_future_dates_rejected() {
        for value in [
            "Tue, 24 Nov 2026 09:50:00 GMT",
            "Tue, 24 Nov 2026 10:10:00 GMT",
            "2026-11-24T09:50:00Z",
            "2026-11-24T10:10:00Z",
            "2026-11-24T10:00:00+01:00",
            "2026-11-24T10:05:00.001Z",
            "1970-01-01T00:00:00Z",
        ] {
            assert_eq!(
                date_check(value),
                Err(HttpSignatureError::StaleDate),
                "{value}"
            );
        }
    }

    #[test]
    fn missing_or_unparsable_date() {
        for value in [
            "",
            "yesterday",
            "2026-11-24",
            "2026-11-24T10:00:00",
            "Tue, 24 Nov",
        ] {
            assert_eq!(
                date_check(value),
                Err(HttpSignatureError::MissingDate),
                "{value:?}"
            );
        }
        let h = [("Host", "x")];
        assert_eq!(
            check_date(&req(&h), now(), skew()),
            Err(HttpSignatureError::MissingDate)
        );
        let h = [("Date", DATE), ("date", DATE)];
        assert_eq!(
            check_date(&req(&h), now(), skew()),
            Err(HttpSignatureError::MissingDate)
        );
    }

    #[test]
    fn extreme_clock_values_do_not_panic() {
        let h = [("Date", DATE)];
        let r = req(&h);
        assert_eq!(
            check_date(&r, UNIX_EPOCH - Duration::from_secs(1 << 40), skew()),
            Err(HttpSignatureError::StaleDate)
        );
        assert_eq!(check_date(&r, now(), Duration::MAX), Ok(()));
        assert_eq!(
            http_date(UNIX_EPOCH - Duration::from_secs(10)),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1 << 40)),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }

    #[test]
    fn http_date_round_trips() {
        assert_eq!(http_date(now()), DATE);
        assert_eq!(date_check(&http_date(now())), Ok(()));
    }

    // ---- digests ------------------------------------------------------

    const BODY: &[u8] = b"{\"to\":\"agent-2\",\"text\":\"hi\"}";

    fn digest_check(
        signed: &[&str],
        h: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HttpSignatureError> {
        verify_digests(&strings(signed), &req(h), body)
    }

    #[test]
    fn digest_good() {
        let value = digest_header(BODY);
        assert!(value.starts_with("SHA-256="));
        assert_eq!(
            digest_check(&["digest"], &[("Digest", &value)], BODY),
            Ok(())
        );
        let lower = value.replacen("SHA-256", "sha-256", 1);
        assert_eq!(
            digest_check(&["digest"], &[("digest", &lower)], BODY),
            Ok(())
        );
        let several = format!("MD5=HUXZLQLMuI/KZ5KDcJPcOA==, {value}, SHA-512=abc");
        assert_eq!(
            digest_check(&["digest"], &[("Digest", &several)], BODY),
            Ok(())
        );
        assert_eq!(
            digest_check(
                &["digest"],
                &[("Digest", "MD5=x"), ("Digest", &value)],
                BODY
            ),
            Ok(())
        );
    }

    #[test]
    fn digest_bad() {
        let value = digest_header(BODY);
        assert_eq!(
            digest_check(&["digest"], &[("Digest", &value)], b"other body"),
            Err(HttpSignatureError::DigestMismatch)
        );
        for bad in ["", "SHA-512=abc", "SHA-256=", "SHA-256=!!!", "SHA-256"] {
            assert_eq!(
                digest_check(&["digest"], &[("Digest", bad)], BODY),
                Err(HttpSignatureError::DigestMismatch),
                "{bad}"
            );
        }
        assert_eq!(
            digest_check(&["digest"], &[], BODY),
            Err(HttpSignatureError::DigestMismatch)
        );
        // Content-Digest does not stand in for Digest.
        let cd = content_digest_header(BODY);
        assert_eq!(
            digest_check(&["digest"], &[("Content-Digest", &cd)], BODY),
            Err(HttpSignatureError::DigestMismatch)
        );
    }

    #[test]
    fn content_digest_good() {
        let value = content_digest_header(BODY);
        assert!(value.starts_with("sha-256=:") && value.ends_with(':'));
        assert_eq!(
            digest_check(&["content-digest"], &[("Content-Digest", &value)], BODY),
            Ok(())
        );
        let several = format!("sha-512=:AAAA:, {value};note=1");
        assert_eq!(
            digest_check(&["content-digest"], &[("content-digest", &several)], BODY),
            Ok(())
        );
        let both = [("Digest", digest_header(BODY)), ("Content-Digest", value)];
        let h: Vec<(&str, &str)> = both.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(
            digest_check(&["digest", "content-digest"], &h, BODY),
            Ok(())
        );
    }

    #[test]
    fn content_digest_bad() {
        let value = content_digest_header(BODY);
        assert_eq!(
            digest_check(&["content-digest"], &[("Content-Digest", &value)], b"x"),
            Err(HttpSignatureError::DigestMismatch)
        );
        let unwrapped = value.replace(':', "");
        let no_colons = unwrapped.replacen("sha-256", "sha-256=", 1);
        for bad in [
            "",
            "sha-512=:AAAA:",
            no_colons.as_str(),
            "sha-256=::",
            "sha-256=:!!:",
            "sha-256=:",
        ] {
            assert_eq!(
                digest_check(&["content-digest"], &[("Content-Digest", bad)], BODY),
                Err(HttpSignatureError::DigestMismatch),
                "{bad}"
            );
        }
        // Digest does not stand in for Content-Digest.
        let d = digest_header(BODY);
        assert_eq!(
            digest_check(&["content-digest"], &[("Digest", &d)], BODY),
            Err(HttpSignatureError::DigestMismatch)
        );
    }

    #[test]
    fn digests_ignored_when_not_signed() {
        assert_eq!(
            digest_check(SIGNED, &[("Digest", "SHA-256=wrong")], BODY),
            Ok(())
        );
        assert_eq!(digest_check(SIGNED, &[], BODY), Ok(()));
    }

    #[test]
    fn signed_digest_round_trip() {
        let digest = digest_header(BODY);
        let h = [
            ("Host", "hub.example.com"),
            ("Date", DATE),
            ("Digest", digest.as_str()),
        ];
        let r = req(&h);
        let key = new_key();
        let header = sign_request(
            &key,
            "a",
            &["(request-target)", "host", "date", "digest"],
            &r,
        )
        .unwrap();
        let params = parse(&header).unwrap();
        assert_eq!(
            verify_signature(&params, &r, &[key.verifying_key()]),
            Ok(())
        );
        assert_eq!(verify_digests(&params.headers, &r, BODY), Ok(()));
        assert_eq!(
            verify_digests(&params.headers, &r, b"swapped body"),
            Err(HttpSignatureError::DigestMismatch)
        );
    }
}
