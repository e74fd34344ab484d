//! ADMP `bodyHash`: base64(SHA-256(`JSON.stringify(JSON.parse(body))`)) exactly as
//! Node/V8 computes it.
//!
//! Signatures made by the original Node server (and by Node clients) cover the
//! V8 re-serialisation of the message body, so this module reproduces V8's
//! `JSON.parse` / `JSON.stringify` round trip byte for byte:
//!
//! * object keys that are array indices (`"0"`, `"17"`, ... up to 2^32 - 2) come
//!   first in ascending numeric order, the other keys follow in insertion order;
//!   for duplicate keys the last value wins but the first position is kept;
//! * numbers are IEEE doubles printed like `Number.prototype.toString`, with
//!   non-finite values (overflow such as `1e400`) printed as `null`;
//! * strings use `JSON.stringify` escaping, including lowercase `\udxxx`
//!   escapes for lone surrogates (which is why strings are kept in their
//!   already-escaped output form rather than as Rust `String` contents).
//!
//! The only deliberate divergence from V8 is a nesting limit of
//! [`MAX_DEPTH`] containers, which turns stack-exhaustion attacks into errors.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Maximum container nesting accepted by [`v8_restringify`]; deeper input is
/// rejected so hostile bodies cannot overflow the stack.
pub const MAX_DEPTH: usize = 512;

/// Objects with more members than this switch duplicate-key detection from a
/// linear scan to a hash map, keeping parsing linear for large objects.
const LINEAR_SCAN_LIMIT: usize = 16;

/// Error for text JSON.parse would reject; carries the byte offset so callers
/// can report where a client's body is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonSyntaxError {
    /// Human-readable description of what was wrong.
    pub message: String,
    /// Byte offset into the input text where the problem was detected.
    pub offset: usize,
}

impl fmt::Display for JsonSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte offset {}", self.message, self.offset)
    }
}

impl std::error::Error for JsonSyntaxError {}

/// JSON.stringify(JSON.parse(text)) as V8 computes it, so the server can
/// recompute the canonical bytes a Node signer hashed.
pub fn v8_restringify(text: &str) -> Result<String, JsonSyntaxError> {
    let node = Parser::new(text).parse_document()?;
    let mut out = String::with_capacity(text.len());
    write_node(&node, &mut out);
    Ok(out)
}

/// The ADMP bodyHash of an envelope given as raw JSON text: finds the
/// top-level `body` member (last duplicate wins), applies the falsy-means-{}
/// rule, restringifies, hashes. Errors if the envelope text is not valid JSON.
/// If the envelope is not an object, treat body as absent.
pub fn envelope_body_hash(envelope_text: &str) -> Result<String, JsonSyntaxError> {
    envelope_body_text(envelope_text).map(|text| hash_text(&text))
}

/// `JSON.stringify(envelope.body || {})` for a raw envelope text.
fn envelope_body_text(envelope_text: &str) -> Result<String, JsonSyntaxError> {
    let envelope = Parser::new(envelope_text).parse_document()?;
    // Duplicates were merged while parsing, so this is the last `body` value.
    let body = match &envelope {
        Node::Object(members) => members
            .iter()
            .find(|(key, _)| key == "body")
            .map(|(_, value)| value),
        _ => None,
    };
    let mut out = String::new();
    match body {
        Some(node) if node.is_truthy() => write_node(node, &mut out),
        _ => out.push_str("{}"),
    }
    Ok(out)
}

/// The ADMP bodyHash of an already-parsed body (used by signing clients).
/// None or falsy → hash of "{}".
///
/// Numbers are hashed as the `f64` the value holds (`u64`/`i64` are rounded to
/// the nearest double, as JS would). Note that serde_json's default float
/// parser (without the `float_roundtrip` feature) is not always correctly
/// rounded, so a value *parsed* by serde_json from long or extreme number
/// literals can differ from what V8 parses; hash received text with
/// [`envelope_body_hash`] instead.
pub fn body_hash(body: Option<&Value>) -> String {
    let mut out = String::new();
    match body {
        Some(value) if value_is_truthy(value) => write_value(value, &mut out),
        _ => out.push_str("{}"),
    }
    hash_text(&out)
}

fn hash_text(text: &str) -> String {
    STANDARD.encode(Sha256::digest(text.as_bytes()))
}

/// Parsed JSON. Strings (and keys) are stored already escaped the way
/// `JSON.stringify` prints them, without the surrounding quotes. That form is
/// valid UTF-8 even for lone surrogates and is injective, so it also serves
/// as the identity for duplicate-key detection.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Node>),
    /// Members in first-insertion order, duplicates already merged.
    Object(Vec<(String, Node)>),
}

impl Node {
    /// JavaScript truthiness (NaN cannot come out of JSON.parse).
    fn is_truthy(&self) -> bool {
        match self {
            Node::Null => false,
            Node::Bool(b) => *b,
            Node::Number(n) => *n != 0.0,
            Node::String(s) => !s.is_empty(),
            Node::Array(_) | Node::Object(_) => true,
        }
    }
}

fn value_is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

type ParseResult<T> = Result<T, JsonSyntaxError>;

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn error<T>(&self, message: impl Into<String>) -> ParseResult<T> {
        Err(JsonSyntaxError {
            message: message.into(),
            offset: self.pos,
        })
    }

    fn unexpected<T>(&self) -> ParseResult<T> {
        match self.text[self.pos..].chars().next() {
            Some(c) => self.error(format!("unexpected character {c:?}")),
            None => self.error("unexpected end of JSON input"),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> ParseResult<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.unexpected()
        }
    }

    fn parse_document(mut self) -> ParseResult<Node> {
        let node = self.parse_value(0)?;
        self.skip_whitespace();
        if self.pos != self.bytes.len() {
            return self.error("unexpected non-whitespace character after JSON");
        }
        Ok(node)
    }

    fn parse_value(&mut self, depth: usize) -> ParseResult<Node> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.parse_object(depth + 1),
            Some(b'[') => self.parse_array(depth + 1),
            Some(b'"') => self.parse_string().map(Node::String),
            Some(b'-' | b'0'..=b'9') => self.parse_number(),
            Some(b't') => self.parse_literal("true", Node::Bool(true)),
            Some(b'f') => self.parse_literal("false", Node::Bool(false)),
            Some(b'n') => self.parse_literal("null", Node::Null),
            _ => self.unexpected(),
        }
    }

    fn parse_literal(&mut self, word: &str, node: Node) -> ParseResult<Node> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(node)
        } else {
            self.error(format!("invalid literal, expected `{word}`"))
        }
    }

    fn check_depth(&self, depth: usize) -> ParseResult<()> {
        if depth > MAX_DEPTH {
            self.error(format!("nesting deeper than {MAX_DEPTH} levels"))
        } else {
            Ok(())
        }
    }

    fn parse_array(&mut self, depth: usize) -> ParseResult<Node> {
        self.check_depth(depth)?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Node::Array(items));
        }
        loop {
            items.push(self.parse_value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Node::Array(items));
                }
                _ => return self.unexpected(),
            }
        }
    }

    fn parse_object(&mut self, depth: usize) -> ParseResult<Node> {
        self.check_depth(depth)?;
        self.pos += 1; // '{'
        let mut members: Vec<(String, Node)> = Vec::new();
        // Built lazily once the object is large enough for scans to hurt.
        let mut index: Option<HashMap<String, usize>> = None;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Node::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return self.unexpected();
            }
            let key = self.parse_string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            let value = self.parse_value(depth)?;

            let existing = match &index {
                Some(map) => map.get(&key).copied(),
                None => members.iter().position(|(k, _)| *k == key),
            };
            match existing {
                // V8: the last value wins, the first position is kept.
                Some(i) => members[i].1 = value,
                None => {
                    if let Some(map) = &mut index {
                        map.insert(key.clone(), members.len());
                    }
                    members.push((key, value));
                    if index.is_none() && members.len() > LINEAR_SCAN_LIMIT {
                        index = Some(
                            members
                                .iter()
                                .enumerate()
                                .map(|(i, (k, _))| (k.clone(), i))
                                .collect(),
                        );
                    }
                }
            }

            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Node::Object(members));
                }
                _ => return self.unexpected(),
            }
        }
    }

    fn parse_number(&mut self) -> ParseResult<Node> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return self.error("leading zeros are not allowed");
                }
            }
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return self.error("expected a digit"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.require_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.require_digits()?;
        }
        // Rust's float parsing is correctly rounded and saturates to infinity
        // on overflow, matching V8.
        match self.text[start..self.pos].parse::<f64>() {
            Ok(n) => Ok(Node::Number(n)),
            Err(_) => Err(JsonSyntaxError {
                message: "invalid number".into(),
                offset: start,
            }),
        }
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn require_digits(&mut self) -> ParseResult<()> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return self.error("expected a digit");
        }
        self.skip_digits();
        Ok(())
    }

    /// Parses a string literal and returns its contents re-escaped the way
    /// `JSON.stringify` would print them (without quotes).
    fn parse_string(&mut self) -> ParseResult<String> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The run ends at an ASCII byte or the end, so it is a char boundary.
            out.push_str(&self.text[run_start..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => self.parse_escape(&mut out)?,
                Some(_) => return self.error("unescaped control character in string"),
                None => return self.error("unterminated string"),
            }
        }
    }

    fn parse_escape(&mut self, out: &mut String) -> ParseResult<()> {
        self.pos += 1; // backslash
        let unit = match self.peek() {
            Some(b'"') => 0x22,
            Some(b'\\') => 0x5c,
            Some(b'/') => 0x2f,
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => 0x0a,
            Some(b'r') => 0x0d,
            Some(b't') => 0x09,
            Some(b'u') => {
                self.pos += 1;
                let unit = self.parse_hex4()?;
                if (0xD800..0xDC00).contains(&unit) {
                    // A high surrogate only forms a character together with an
                    // immediately following escaped low surrogate.
                    if let Some(low) = self.escaped_low_surrogate() {
                        self.pos += 6;
                        let c = 0x10000
                            + ((u32::from(unit) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        out.push(char::from_u32(c).expect("surrogate pair is a valid scalar"));
                        return Ok(());
                    }
                }
                push_escaped_unit(out, unit);
                return Ok(());
            }
            _ => return self.error("invalid escape sequence"),
        };
        self.pos += 1;
        push_escaped_unit(out, unit);
        Ok(())
    }

    fn parse_hex4(&mut self) -> ParseResult<u16> {
        let unit = self
            .bytes
            .get(self.pos..self.pos + 4)
            .and_then(hex4_value)
            .map_or_else(|| self.error("invalid \\u escape"), Ok)?;
        self.pos += 4;
        Ok(unit)
    }

    /// Returns the low surrogate if the input continues with `\uDC00`..`\uDFFF`.
    fn escaped_low_surrogate(&self) -> Option<u16> {
        let rest = self.bytes.get(self.pos..self.pos + 6)?;
        if !rest.starts_with(b"\\u") {
            return None;
        }
        hex4_value(&rest[2..]).filter(|u| (0xDC00..0xE000).contains(u))
    }
}

fn hex4_value(digits: &[u8]) -> Option<u16> {
    digits.iter().try_fold(0u16, |acc, &b| {
        let d = char::from(b).to_digit(16)?;
        Some(acc << 4 | d as u16)
    })
}

/// Appends one UTF-16 code unit (a non-surrogate or a lone surrogate) in
/// `JSON.stringify` form.
fn push_escaped_unit(out: &mut String, unit: u16) {
    match char::from_u32(u32::from(unit)) {
        Some(c) => push_escaped_char(out, c),
        // Lone surrogate: well-formed JSON.stringify escapes it in lowercase.
        None => {
            let _ = write!(out, "\\u{unit:04x}");
        }
    }
}

fn push_escaped_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\u{08}' => out.push_str("\\b"),
        '\u{0c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c < '\u{20}' => {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// Writes a Rust string (always well-formed) as a quoted JSON.stringify string.
fn write_str(s: &str, out: &mut String) {
    out.push('"');
    let mut run_start = 0;
    for (i, b) in s.bytes().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.push_str(&s[run_start..i]);
            push_escaped_char(out, char::from(b));
            run_start = i + 1;
        }
    }
    out.push_str(&s[run_start..]);
    out.push('"');
}

/// If `key` is a canonical array index (V8 orders those first), returns it.
fn array_index(key: &str) -> Option<u32> {
    let bytes = key.as_bytes();
    let canonical = match bytes {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.len() < 10 && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    key.parse::<u32>().ok().filter(|&n| n != u32::MAX)
}

/// Member visiting order of `JSON.stringify`: array-index keys ascending, then
/// the rest in insertion order. Keys must be distinct.
fn member_order<'k>(keys: impl Iterator<Item = &'k str>) -> Vec<usize> {
    let mut indices = Vec::new();
    let mut others = Vec::new();
    for (i, key) in keys.enumerate() {
        match array_index(key) {
            Some(n) => indices.push((n, i)),
            None => others.push(i),
        }
    }
    if indices.is_empty() {
        return others;
    }
    indices.sort_unstable();
    indices.into_iter().map(|(_, i)| i).chain(others).collect()
}

fn write_node(node: &Node, out: &mut String) {
    match node {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Number(n) => write_number(*n, out),
        Node::String(s) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        Node::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_node(item, out);
            }
            out.push(']');
        }
        Node::Object(members) => {
            out.push('{');
            let order = member_order(members.iter().map(|(k, _)| k.as_str()));
            for (n, &i) in order.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                let (key, value) = &members[i];
                out.push('"');
                out.push_str(key);
                out.push_str("\":");
                write_node(value, out);
            }
            out.push('}');
        }
    }
}

/// Same output as [`write_node`] for a serde value (whose maps never hold
/// duplicate keys and whose strings are never ill-formed).
fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // u64/i64 -> f64 rounds to nearest like JS parsing of the digits.
        Value::Number(n) => write_number(n.as_f64().unwrap_or(f64::NAN), out),
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            let members: Vec<(&String, &Value)> = map.iter().collect();
            let order = member_order(members.iter().map(|(k, _)| k.as_str()));
            for (n, &i) in order.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                let (key, value) = members[i];
                write_str(key, out);
                out.push(':');
                write_value(value, out);
            }
            out.push('}');
        }
    }
}

/// `Number.prototype.toString()` as used by JSON.stringify (non-finite → null).
fn write_number(n: f64, out: &mut String) {
    if !n.is_finite() {
        out.push_str("null");
        return;
    }
    if n == 0.0 {
        out.push('0'); // covers -0
        return;
    }
    if n < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` yields the shortest round-trip digits (closest on ties),
    // which is exactly the digit string ECMAScript's Number::toString needs.
    let sci = format!("{:e}", n.abs());
    let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` output has an exponent");
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is an integer");
    let k = digits.len() as i32;
    let point = exponent + 1; // ECMAScript's `n`: position of the decimal point

    if k <= point && point <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (point - k) as usize));
    } else if 0 < point && point <= 21 {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    } else if -6 < point && point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{}", exponent.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VECTORS: &str = include_str!("../../tests/fixtures/body_hash_vectors.json");

    #[derive(Debug)]
    struct Vector {
        name: String,
        input: String,
        stringified: String,
        hash: String,
    }

    fn vectors() -> Vec<Vector> {
        let parsed: Value = serde_json::from_str(VECTORS).expect("fixture is valid JSON");
        let field = |v: &Value, name: &str| -> String {
            v[name]
                .as_str()
                .unwrap_or_else(|| panic!("vector field {name} missing"))
                .to_owned()
        };
        parsed
            .as_array()
            .expect("fixture is an array")
            .iter()
            .map(|v| Vector {
                name: field(v, "name"),
                input: field(v, "input"),
                stringified: field(v, "stringified"),
                hash: field(v, "hash"),
            })
            .collect()
    }

    #[test]
    fn fixture_has_enough_vectors() {
        assert!(vectors().len() >= 40);
    }

    #[test]
    fn envelope_hash_matches_node_vectors() {
        for v in vectors() {
            let hash = envelope_body_hash(&v.input)
                .unwrap_or_else(|e| panic!("vector {}: unexpected error {e}", v.name));
            assert_eq!(hash, v.hash, "hash mismatch for vector {}", v.name);
        }
    }

    #[test]
    fn restringify_matches_node_vectors() {
        for v in vectors() {
            assert_eq!(
                envelope_body_text(&v.input).unwrap(),
                v.stringified,
                "stringified mismatch for vector {}",
                v.name
            );
            // The stringified form is a fixed point of the round trip.
            assert_eq!(
                v8_restringify(&v.stringified).as_deref(),
                Ok(v.stringified.as_str()),
                "restringify not idempotent for vector {}",
                v.name
            );
            assert_eq!(hash_text(&v.stringified), v.hash, "vector {}", v.name);
        }
    }

    #[test]
    fn key_ordering_and_duplicates() {
        assert_eq!(
            v8_restringify(
                r#"{"b":1,"2":1,"a":1,"1":1,"01":1,"-1":1,"4294967294":1,"4294967295":1}"#
            )
            .unwrap(),
            r#"{"1":1,"2":1,"4294967294":1,"b":1,"a":1,"01":1,"-1":1,"4294967295":1}"#
        );
        assert_eq!(
            v8_restringify(r#"{"a":1,"b":2,"a":3,"__proto__":4}"#).unwrap(),
            r#"{"a":3,"b":2,"__proto__":4}"#
        );
    }

    #[test]
    fn duplicates_in_large_objects() {
        let mut text = String::from("{");
        for i in 0..100 {
            write!(text, "\"k{i}\":{i},").unwrap();
        }
        text.push_str("\"k3\":\"last\",\"k99\":null}");
        let out = v8_restringify(&text).unwrap();
        assert!(out.starts_with(r#"{"k0":0,"k1":1,"k2":2,"k3":"last","k4":4"#));
        assert!(out.ends_with(r#""k98":98,"k99":null}"#));
    }

    #[test]
    fn numbers_format_like_javascript() {
        let cases = [
            ("1.0", "1"),
            ("-0", "0"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("1E-7", "1e-7"),
            ("0.000001", "0.000001"),
            ("123456789012345678901234", "1.2345678901234569e+23"),
            ("12345678901234567890", "12345678901234567000"),
            ("5e-324", "5e-324"),
            ("1.5e300", "1.5e+300"),
            ("1e400", "null"),
            ("-1e400", "null"),
            ("0.1", "0.1"),
            ("-2.5E+3", "-2500"),
            ("1e-400", "0"),
        ];
        for (input, expected) in cases {
            assert_eq!(v8_restringify(input).unwrap(), expected, "input {input}");
        }
    }

    #[test]
    fn strings_escape_like_json_stringify() {
        assert_eq!(
            v8_restringify(r#""\u0000\u001F\b\f\n\r\t\"\\\/\u00e9\u2028""#).unwrap(),
            "\"\\u0000\\u001f\\b\\f\\n\\r\\t\\\"\\\\/\u{e9}\u{2028}\""
        );
        assert_eq!(v8_restringify(r#""\uD800""#).unwrap(), r#""\ud800""#);
        assert_eq!(v8_restringify(r#""\uDC00x""#).unwrap(), r#""\udc00x""#);
        assert_eq!(
            v8_restringify(r#""\uD800\uD800\uDC00""#).unwrap(),
            "\"\\ud800\u{10000}\""
        );
        assert_eq!(
            v8_restringify(r#""\ud83d\ude00""#).unwrap(),
            "\"\u{1F600}\""
        );
    }

    #[test]
    fn rejects_what_json_parse_rejects() {
        let bad = [
            "",
            " ",
            "[1,]",
            r#"{"a":1,}"#,
            "{'a':1}",
            "01",
            "-01",
            "+1",
            ".5",
            "1.",
            "1e",
            "1e+",
            "-",
            "NaN",
            "Infinity",
            "[1] x",
            "{} {}",
            "\"a\u{1}b\"",
            "\"\\x41\"",
            "\"\\u12G4\"",
            "\"abc",
            "[1 2]",
            r#"{"a" 1}"#,
            "{1:2}",
            "tru",
            "nul",
            "\u{feff}{}",
            "[\u{a0}1]",
        ];
        for text in bad {
            assert!(v8_restringify(text).is_err(), "should reject {text:?}");
            assert!(envelope_body_hash(text).is_err(), "should reject {text:?}");
        }
        let err = v8_restringify("[1,]").unwrap_err();
        assert_eq!(err.offset, 3);
        assert!(err.to_string().contains("offset 3"));
    }

    #[test]
    fn rejects_depth_bombs() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(v8_restringify(&ok).unwrap(), ok);
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(v8_restringify(&deep).is_err());
        let bomb = r#"{"a":"#.repeat(100_000);
        assert!(envelope_body_hash(&bomb).is_err());
    }

    #[test]
    fn falsy_bodies_hash_as_empty_object() {
        let empty = hash_text("{}");
        for body in ["null", "false", "0", "-0", "0.0", "0e10", "\"\""] {
            let text = format!(r#"{{"body":{body}}}"#);
            assert_eq!(envelope_body_hash(&text).unwrap(), empty, "body {body}");
        }
        assert_eq!(envelope_body_hash(r#"{"to":"x"}"#).unwrap(), empty);
        assert_eq!(envelope_body_hash("[1,2]").unwrap(), empty);
        assert_eq!(
            envelope_body_hash(r#"{"body":1,"body":null}"#).unwrap(),
            empty
        );
        assert_eq!(envelope_body_hash(r#"{"body":{}}"#).unwrap(), empty);
        assert_ne!(envelope_body_hash(r#"{"body":[]}"#).unwrap(), empty);
    }

    #[test]
    fn body_hash_of_serde_values() {
        let empty = hash_text("{}");
        assert_eq!(body_hash(None), empty);
        for falsy in [
            json!(null),
            json!(false),
            json!(0),
            json!(-0.0),
            json!(0.0),
            json!(""),
        ] {
            assert_eq!(body_hash(Some(&falsy)), empty, "{falsy}");
        }
        let value = json!({
            "b": 1, "10": [1.0, 12345678901234567890_u64, -9007199254740993_i64, 1e21],
            "2": "line\nbreak \u{2028} \u{1F600}", "a": {"x": null, "y": true}
        });
        let expected = r#"{"2":"line\nbreak "#.to_owned()
            + "\u{2028} \u{1F600}"
            + r#"","10":[1,12345678901234567000,-9007199254740992,1e+21],"b":1,"a":{"x":null,"y":true}}"#;
        assert_eq!(body_hash(Some(&value)), hash_text(&expected));
        // Agrees with the text path.
        let text = serde_json::to_string(&json!({ "body": value })).unwrap();
        assert_eq!(envelope_body_hash(&text).unwrap(), body_hash(Some(&value)));
        // With serde_json's `float_roundtrip` parser, every vector whose body
        // serde can represent hashes the same on the serde path.
        let mut mismatches = Vec::new();
        for v in vectors() {
            let Ok(envelope) = serde_json::from_str::<Value>(&v.input) else {
                continue;
            };
            if body_hash(envelope.get("body")) != v.hash {
                mismatches.push(v.name);
            }
        }
        assert!(mismatches.is_empty(), "{mismatches:?}");
    }
}
