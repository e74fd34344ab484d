//! Property tests for the parsers that face untrusted input: the V8
//! `JSON.stringify` body hash, the `Signature` header, and envelope
//! validation in the send pipeline. Each property states what must hold for
//! every input, and the random ones must never panic.

use std::cell::Cell;
use std::sync::Arc;

use admp::api::error::status_and_code;
use admp::client::AgentClient;
use admp::config::Config;
use admp::hub::{Caller, Clock, Hub, InboxWakers, Registration, SendInput};
use admp::signing::body_hash::{self, MAX_DEPTH};
use admp::signing::http::parse_signature_header;
use admp::signing::keys;
use admp::store::memory::MemoryStore;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};

/// Cases per property: `default`, or `PROPTEST_CASES` for a longer run
/// (e.g. `PROPTEST_CASES=100000 cargo test --test hostile_input`).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- generators

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// Object keys, biased towards the integer-like ones V8 reorders.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        text(8),
        (0u64..5000).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "4294967294",
            "4294967295",
            "01",
            "-1",
            "1.0",
            "",
            "body"
        ])
        .prop_map(str::to_string),
    ]
}

/// Any JSON value serde_json can hold (finite numbers of every kind).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        text(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Strings made of JSON's own tokens: mostly invalid, deep in the parser.
fn json_soup() -> impl Strategy<Value = String> {
    let tokens = vec![
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "0",
        "1",
        "-",
        "e",
        "E",
        ".",
        "+",
        "true",
        "false",
        "null",
        "\\",
        "\\u",
        "d800",
        "dc00",
        "\\\"",
        "\"k\"",
        "1e400",
        "9007199254740993",
        " ",
        "\n",
        "é",
        "\u{0}",
    ];
    prop::collection::vec(prop::sample::select(tokens), 0..48).prop_map(|t| t.concat())
}

/// Valid JSON text with one character inserted, deleted or replaced.
fn near_json() -> impl Strategy<Value = String> {
    (
        json_value(),
        any::<prop::sample::Index>(),
        any::<char>(),
        0..3u8,
    )
        .prop_map(|(value, at, c, edit)| {
            let mut chars: Vec<char> = value.to_string().chars().collect();
            let i = at.index(chars.len() + 1);
            match edit {
                0 => chars.insert(i, c),
                1 if i < chars.len() => {
                    chars.remove(i);
                }
                _ if i < chars.len() => chars[i] = c,
                _ => chars.push(c),
            }
            chars.into_iter().collect()
        })
}

/// Every number as the double JS would hold, so values compare as V8 sees them.
fn as_doubles(value: &Value) -> Value {
    match value {
        Value::Number(n) => Value::from(n.as_f64().expect("finite")),
        Value::Array(items) => Value::Array(items.iter().map(as_doubles).collect()),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), as_doubles(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

// ------------------------------------------------------------ body hash

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(1024)))]

    /// Restringifying any serialised value yields JSON that parses back to
    /// the same value (as doubles, keys in any order), and is a fixed point.
    #[test]
    fn restringify_preserves_every_value(value in json_value()) {
        let text = serde_json::to_string(&value).unwrap();
        let out = body_hash::v8_restringify(&text).unwrap();
        let back: Value = serde_json::from_str(&out).unwrap();
        prop_assert_eq!(as_doubles(&back), as_doubles(&value));
        prop_assert_eq!(body_hash::v8_restringify(&out).unwrap(), out);
    }

    /// Integer-like keys come first, ascending; the others keep their order.
    #[test]
    fn restringify_orders_keys_like_v8(keys in prop::collection::vec(key(), 0..12)) {
        let object: Map<String, Value> = keys.iter().map(|k| (k.clone(), json!(0))).collect();
        let out = body_hash::v8_restringify(&Value::Object(object.clone()).to_string()).unwrap();
        let order: Vec<String> = serde_json::from_str::<Map<String, Value>>(&out)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let index = |k: &str| -> Option<u32> {
            let n: u32 = k.parse().ok()?;
            (n.to_string() == k && n < u32::MAX).then_some(n)
        };
        let mut expected: Vec<String> = object.keys().filter(|k| index(k).is_some()).cloned().collect();
        expected.sort_by_key(|k| index(k));
        expected.extend(object.keys().filter(|k| index(k).is_none()).cloned());
        prop_assert_eq!(order, expected);
    }

    /// Whatever serde_json accepts, the V8 parser accepts to the same value;
    /// and no input makes either entry point panic.
    #[test]
    fn arbitrary_text_never_panics(text in prop_oneof![text(64), json_soup(), near_json()]) {
        let ours = body_hash::v8_restringify(&text);
        let _ = body_hash::envelope_body_hash(&text);
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            let out = ours.expect("V8 accepts what serde_json accepts");
            let back: Value = serde_json::from_str(&out).unwrap();
            prop_assert_eq!(as_doubles(&back), as_doubles(&value));
        }
    }

    /// The hash of an envelope's body does not depend on how the envelope
    /// text is spaced or on members other than `body`.
    #[test]
    fn body_hash_sees_only_the_body(body in json_value(), other in json_value()) {
        let compact = json!({"body": body, "other": other}).to_string();
        let pretty = serde_json::to_string_pretty(&json!({"other": other, "body": body})).unwrap();
        prop_assert_eq!(
            body_hash::envelope_body_hash(&compact).unwrap(),
            body_hash::envelope_body_hash(&pretty).unwrap()
        );
    }
}

#[test]
fn nesting_beyond_the_limit_is_an_error_not_a_stack_overflow() {
    for depth in [MAX_DEPTH + 1, 100_000] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(body_hash::v8_restringify(&deep).is_err());
        let deep_body = format!(
            r#"{{"body":{}1{}}}"#,
            "{\"a\":".repeat(depth),
            "}".repeat(depth)
        );
        assert!(body_hash::envelope_body_hash(&deep_body).is_err());
    }
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(body_hash::v8_restringify(&ok).is_ok());
}

// ------------------------------------------------------ Signature header

fn quote(value: &str) -> String {
    let escaped: String = value
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// Optional whitespace around separators.
fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", " ", "  ", "\t"])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(1024)))]

    /// A well-formed header, in any parameter order and spacing, parses back
    /// to exactly what was written.
    #[test]
    fn signature_header_round_trips(
        key_id in text(24).prop_filter("keyId is not empty", |k| !k.is_empty()),
        signature in prop::collection::vec(any::<u8>(), 0..96),
        extra in prop::sample::subsequence(vec!["host", "digest", "content-type", "x-request-nonce"], 0..4),
        algorithm in prop::option::of(prop::sample::select(vec!["ed25519", "Ed25519"])),
        upper in any::<bool>(),
        order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        spaces in prop::collection::vec(ws(), 12),
    ) {
        let mut headers = vec!["(request-target)", "date"];
        headers.extend(extra);
        let list = headers.join(" ");
        let list = if upper { list.to_uppercase() } else { list };
        let mut params = vec![
            format!("keyId{}={}{}", spaces[0], spaces[1], quote(&key_id)),
            format!("headers={}", quote(&list)),
            format!("signature={}", quote(&BASE64.encode(&signature))),
        ];
        if let Some(alg) = algorithm {
            params.push(format!("algorithm={alg}"));
        }
        let value: Vec<String> = order
            .iter()
            .filter_map(|&i| params.get(i).cloned())
            .collect();
        let value = value.join(&format!("{},{}", spaces[2], spaces[3]));
        let parsed = parse_signature_header(&format!("{}{value}{}", spaces[4], spaces[5])).unwrap();
        prop_assert_eq!(parsed.key_id, key_id);
        prop_assert_eq!(parsed.signature, signature);
        prop_assert_eq!(parsed.algorithm.as_deref(), algorithm);
        let expected: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        prop_assert_eq!(parsed.headers, expected);
    }

    /// No input panics, and whatever parses has a keyId and covers the
    /// request target and the date.
    #[test]
    fn arbitrary_signature_headers_never_panic(value in prop_oneof![
        text(80),
        prop::collection::vec(prop::sample::select(vec![
            "keyId", "headers", "signature", "algorithm", "=", "\"", "\\", ",", " ",
            "(request-target)", "date", "ed25519", "hmac", "AAAA", "==", "alice",
        ]), 0..24).prop_map(|t| t.concat()),
    ]) {
        if let Ok(parsed) = parse_signature_header(&value) {
            prop_assert!(!parsed.key_id.is_empty());
            prop_assert!(parsed.headers.iter().any(|h| h == "(request-target)"));
            prop_assert!(parsed.headers.iter().any(|h| h == "date"));
        }
    }
}

// -------------------------------------------------------- envelopes

/// Fields of an envelope a mutation may remove or replace.
const FIELDS: &[&str] = &[
    "version",
    "id",
    "type",
    "from",
    "to",
    "subject",
    "correlation_id",
    "headers",
    "body",
    "ttl_sec",
    "timestamp",
    "signature",
];

/// A change to a valid envelope: drop a field, or give it another value.
#[derive(Debug, Clone)]
enum Mutation {
    Remove(&'static str),
    Replace(&'static str, Value),
    ReplaceSignature(&'static str, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = prop::sample::select(FIELDS);
    prop_oneof![
        field.clone().prop_map(Mutation::Remove),
        (field, json_value()).prop_map(|(f, v)| Mutation::Replace(f, v)),
        (
            prop::sample::select(vec!["alg", "kid", "sig"]),
            json_value()
        )
            .prop_map(|(f, v)| Mutation::ReplaceSignature(f, v)),
    ]
}

/// Sends random and randomly damaged envelopes through the whole send
/// pipeline: every outcome is a success or a 4xx protocol error, never a
/// panic or a 500. Runs `cases` cases; returns how many were refused.
fn envelopes_are_refused_cleanly(cases: u32) -> u32 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        rate_limit_enabled: false,
        ..Config::default()
    };
    let hub = Hub::new(
        Arc::new(config),
        Arc::new(MemoryStore::new()),
        Clock::system(),
        Arc::new(InboxWakers::default()),
    );
    let alice = AgentClient::new(
        reqwest::Client::new(),
        "http://hub.invalid",
        "alice",
        keys::generate(),
    );
    runtime.block_on(async {
        for (id, client) in [("alice", Some(&alice)), ("bob", None)] {
            hub.register(Registration {
                agent_id: Some(id.into()),
                public_key: client.map(|c| keys::encode_public_key(&c.key.verifying_key())),
                ..Registration::default()
            })
            .await
            .unwrap();
        }
    });

    let refused = Cell::new(0);
    let strategy = (
        json_value(),
        prop::collection::vec(mutation(), 0..3),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(ProptestConfig::with_cases(cases));
    runner
        .run(&strategy, |(body, mutations, whole_value)| {
            let envelope = if whole_value && mutations.is_empty() {
                body.clone()
            } else {
                let mut env = match alice.envelope("bob", "test", body) {
                    Value::Object(map) => map,
                    _ => unreachable!(),
                };
                for m in mutations {
                    match m {
                        Mutation::Remove(f) => {
                            env.remove(f);
                        }
                        Mutation::Replace(f, v) => {
                            env.insert(f.into(), v);
                        }
                        Mutation::ReplaceSignature(f, v) => {
                            if let Some(Value::Object(sig)) = env.get_mut("signature") {
                                sig.insert(f.into(), v);
                            }
                        }
                    }
                }
                Value::Object(env)
            };
            let raw = serde_json::to_vec(&envelope).unwrap();
            let outcome = runtime.block_on(hub.send(
                "bob",
                SendInput {
                    raw: &raw,
                    envelope: envelope.clone(),
                    idempotency_key: None,
                    caller: &Caller::Anonymous,
                    caller_agent: None,
                },
            ));
            if let Err(e) = outcome {
                let (status, code) = status_and_code(&e);
                prop_assert!(
                    status.is_client_error(),
                    "{status} {code} for {envelope}: {e}"
                );
                refused.set(refused.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    refused.get()
}

#[test]
fn random_envelopes_get_success_or_a_4xx() {
    let cases = cases(512);
    let refused = envelopes_are_refused_cleanly(cases);
    // Most damage is refused, but valid envelopes (no mutation, or one that
    // only touches unsigned fields) get through.
    assert!(
        refused > 0 && refused < cases,
        "{refused} of {cases} refused"
    );
}
