//! The OpenAPI document against the running router: every operation of
//! `/openapi.json` is driven with valid and broken credentials, ids and
//! bodies, and every answer must have a documented status and a body that
//! matches the documented schema (an error's code must be in that status's
//! enum). A second check walks every documented error code through
//! `admp error-codes`, so the document, the code table and
//! docs/ERROR-CODES.md cannot drift apart.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use admp::client::AgentClient;
use admp::config::Config;
use admp::signing::keys;
use reqwest::Method;
use serde_json::{Value, json};
use support::{MASTER_KEY, TestHub, test_config};

/// A JSON value against an OpenAPI 3.1 schema, for the keywords utoipa and
/// `api::openapi` emit: `$ref`, `type` (one or a list), `properties`,
/// `required`, `additionalProperties`, `items`, `enum`, `oneOf`, `anyOf`,
/// `allOf`, `minimum`, `nullable`. Unknown keywords (format, description…)
/// constrain nothing here.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: unsupported $ref {reference}"))?;
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: dangling $ref {reference}"));
        }
        return validate(doc, target, value, at);
    }
    if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let fits = |t: &str| match t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => true,
        };
        if !allowed.iter().any(|t| fits(t)) {
            return Err(format!("{at}: {value} is not of type {types}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return Err(format!(
            "{at}: {value} is not one of {}",
            Value::from(options.clone())
        ));
    }
    if let (Some(minimum), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n < minimum
    {
        return Err(format!("{at}: {n} is below the minimum {minimum}"));
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            validate(doc, part, value, at)?;
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && !any
            .iter()
            .any(|part| validate(doc, part, value, at).is_ok())
    {
        return Err(format!("{at}: {value} matches none of anyOf"));
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = one
            .iter()
            .filter(|part| validate(doc, part, value, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!(
                "{at}: {value} matches {matching} of oneOf, not exactly one"
            ));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(name) {
                return Err(format!("{at}: required `{name}` missing from {value}"));
            }
        }
        for (name, member) in object {
            let path = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(property) => validate(doc, property, member, &path)?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(format!("{path}: not allowed by the schema"));
                    }
                    Some(extra @ Value::Object(_)) => validate(doc, extra, member, &path)?,
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn the_validator_refuses_what_it_should() {
    let doc = json!({"components": {"schemas": {"M": {"type": "object", "required": ["id"],
        "properties": {"id": {"type": "string"}, "n": {"type": ["integer", "null"], "minimum": 0}}}}}});
    let m = json!({"$ref": "#/components/schemas/M"});
    assert!(validate(&doc, &m, &json!({"id": "a", "n": 1}), "$").is_ok());
    assert!(validate(&doc, &m, &json!({"id": "a", "n": null}), "$").is_ok());
    assert!(validate(&doc, &m, &json!({"n": 1}), "$").is_err());
    assert!(validate(&doc, &m, &json!({"id": "a", "n": -1}), "$").is_err());
    assert!(validate(&doc, &m, &json!({"id": 5}), "$").is_err());
    let batch = json!({"type": "object", "required": ["messages"],
        "properties": {"messages": {"type": "array", "items": m}}});
    let either = json!({"oneOf": [m, batch]});
    assert!(validate(&doc, &either, &json!({"messages": [{"id": "a"}]}), "$").is_ok());
    assert!(validate(&doc, &either, &json!({"messages": [{"n": 1}]}), "$").is_err());
    let code = json!({"type": "object", "properties": {"error": {"enum": ["A"]}}});
    assert!(validate(&doc, &code, &json!({"error": "B"}), "$").is_err());
}

/// The credentials a probe carries.
#[derive(Debug, Clone, Copy)]
enum Creds {
    None,
    Master,
    /// The path agent's HTTP signature.
    Alice,
    /// Another agent's HTTP signature.
    Bob,
    /// The path agent's session token.
    AliceSession,
    WrongKey,
    MalformedSignature,
    ForgedToken,
}

const ALL_CREDS: [Creds; 8] = [
    Creds::None,
    Creds::Master,
    Creds::Alice,
    Creds::Bob,
    Creds::AliceSession,
    Creds::WrongKey,
    Creds::MalformedSignature,
    Creds::ForgedToken,
];

/// The world one operation is probed in: a fresh hub, two agents, a
/// message from bob leased by alice, one dead-lettered, one queued.
struct World {
    hub: TestHub,
    alice: AgentClient,
    alice_session: AgentClient,
    bob: AgentClient,
    message_id: String,
    dead_id: String,
    /// Groups: alice owns both; carol is in the first, bob in the second.
    groups: Vec<String>,
}

impl World {
    async fn new(mut config: Config) -> Self {
        // One attempt: a nack dead-letters, so requeue has something to do.
        config.max_delivery_attempts = 1;
        // The probed webhook URL is a closed loopback port (never off the machine).
        config.webhook_allow_private = true;
        let hub = TestHub::start(config).await;
        let alice = hub.agent("alice").await;
        let bob = hub.agent("bob").await;
        let message_id = support::send(&bob, "alice", json!({"n": 1})).await;
        let dead_id = support::send(&bob, "alice", json!({"n": 2})).await;
        support::send(&bob, "alice", json!({"n": 3})).await;
        assert_eq!(
            support::pull_one(&alice).await["message_id"],
            message_id.as_str()
        );
        assert_eq!(
            support::pull_one(&alice).await["message_id"],
            dead_id.as_str()
        );
        let nack = alice
            .request(
                Method::POST,
                &alice.agent_path(&format!("messages/{dead_id}/nack")),
                Some(&json!({})),
            )
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(nack["status"], "dead");
        let mut alice_session = alice.clone();
        alice_session.open_session().await.unwrap();
        let carol = hub.agent("carol").await;
        let mut groups = Vec::new();
        // Under the tight rate limit of one probe run these may be refused: then
        // the group routes are probed with an unknown group only.
        for (name, member) in [("probe team", &carol), ("probe open", &bob)] {
            let response = alice.create_group(&json!({ "name": name })).await.unwrap();
            if response.status() != 201 {
                continue;
            }
            let group: Value = response.json().await.unwrap();
            let id = group["id"].as_str().unwrap().to_string();
            member.join_group(&id, None).await.unwrap();
            groups.push(id);
        }
        World {
            hub,
            alice,
            alice_session,
            bob,
            message_id,
            dead_id,
            groups,
        }
    }

    /// Bodies worth trying on every operation, plus a signed envelope fit
    /// for the send and reply routes.
    fn bodies(&self, template: &str) -> Vec<String> {
        let mut bodies = vec![
            String::new(),
            "{".into(),
            "[]".into(),
            "{}".into(),
            json!({"max_messages": 2}).to_string(),
            json!({"agent_id": "bob"}).to_string(),
            json!({"agent_id": "DID:spoofed"}).to_string(),
            json!({"agent_id": 5, "max_messages": "x", "public_key": 5, "limit": -1}).to_string(),
            json!({"acks": [{"message_id": self.message_id}, {"message_id": "nope"}]}).to_string(),
            json!({"public_key": keys::encode_public_key(&keys::generate().verifying_key())})
                .to_string(),
            json!({"webhook_url": "http://127.0.0.1:9/hook"}).to_string(),
            json!({"extend_sec": 999_999}).to_string(),
            "x".repeat(self.hub.running.hub.config.max_body_bytes() + 1),
        ];
        if template.ends_with("/messages") {
            bodies.push(self.bob.envelope("alice", "probe", json!({})).to_string());
            bodies.push(self.bob.envelope("ghost", "probe", json!({})).to_string());
        }
        if template == "/api/groups" {
            bodies.push(json!({"name": "probe group"}).to_string());
        }
        if template == "/api/groups/{group_id}/messages" {
            let envelope = self
                .alice
                .group_envelope(&self.groups[0], "probe", json!({}));
            bodies.push(envelope.to_string());
        }
        if template.ends_with("/reply") {
            let envelope = self.alice.envelope_with("bob", "re", json!({}), |e| {
                e.insert("correlation_id".into(), json!(self.message_id));
            });
            bodies.push(envelope.to_string());
        }
        bodies
    }

    /// The concrete paths of a template: real ids, unknown ones, a reserved
    /// prefix, and a segment that does not decode.
    fn paths(&self, template: &str) -> Vec<String> {
        let mut paths = vec![template.to_string()];
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| urlencoding::encode(g).into_owned())
            .chain(["group%3A%2F%2Fnone-00000000".to_string()])
            .collect();
        let agents = if template.contains("{group_id}") {
            vec!["carol", "bob", "alice", "ghost"]
        } else {
            vec!["alice", "ghost", "DID:x", "%FF"]
        };
        for (param, values) in [
            ("{group_id}", groups.iter().map(String::as_str).collect()),
            ("{agent_id}", agents),
            (
                "{message_id}",
                vec![self.message_id.as_str(), self.dead_id.as_str(), "nope"],
            ),
            ("{other}", vec!["bob"]),
        ] {
            if template.contains(param) {
                paths = paths
                    .iter()
                    .flat_map(|p| values.iter().map(move |v| p.replace(param, v)))
                    .collect();
            }
        }
        // Parameters other helpers' routes add: one plausible value each.
        paths
            .into_iter()
            .map(|p| {
                let mut out = String::new();
                let mut rest = p.as_str();
                while let Some(open) = rest.find('{') {
                    let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
                    out.push_str(&rest[..open]);
                    out.push_str("probe");
                    rest = &rest[close..];
                }
                out.push_str(rest);
                out
            })
            .collect()
    }

    fn request(
        &self,
        method: &Method,
        path: &str,
        creds: Creds,
        body: &str,
    ) -> reqwest::RequestBuilder {
        let builder = match creds {
            Creds::Alice => self.alice.request(method.clone(), path, None),
            Creds::Bob => self.bob.request(method.clone(), path, None),
            Creds::AliceSession => self.alice_session.request(method.clone(), path, None),
            _ => self.hub.http.request(method.clone(), self.hub.url(path)),
        };
        let builder = match creds {
            Creds::Master => builder.header("x-api-key", MASTER_KEY),
            Creds::WrongKey => builder.header("x-api-key", "not-the-key"),
            Creds::MalformedSignature => builder.header("signature", "garbage"),
            Creds::ForgedToken => builder.bearer_auth("admpst_e30.AAAA"),
            _ => builder,
        };
        if body.is_empty() {
            builder
        } else {
            builder
                .header("content-type", "application/json")
                .body(body.to_string())
        }
    }
}

/// What was observed, for the report and the coverage checks.
#[derive(Default)]
struct Findings {
    failures: Vec<String>,
    /// (operation, status) pairs seen.
    seen: BTreeSet<(String, u16)>,
    requests: usize,
}

impl Findings {
    fn check(
        &mut self,
        doc: &Value,
        op: &str,
        responses: &Value,
        probe: &str,
        status: u16,
        body: &[u8],
    ) {
        self.requests += 1;
        self.seen.insert((op.to_string(), status));
        let Some(documented) = responses.get(status.to_string()) else {
            self.failures.push(format!(
                "{op}: {status} is not documented ({probe}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
            return;
        };
        let content = documented.get("content");
        match content.and_then(|c| c.get("application/json")) {
            Some(json_content) => {
                let value: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(_) => {
                        self.failures
                            .push(format!("{op}: {status} body is not JSON ({probe})"));
                        return;
                    }
                };
                if let Some(schema) = json_content.get("schema")
                    && let Err(e) = validate(doc, schema, &value, "$")
                {
                    self.failures.push(format!("{op}: {status} ({probe}): {e}"));
                }
            }
            None if content.is_none() && !body.is_empty() => self.failures.push(format!(
                "{op}: {status} documents no body but one came ({probe})"
            )),
            None => {}
        }
    }
}

/// Drives every operation of the served document in a fresh world per
/// operation; returns the findings.
async fn probe_all(config: Config, thorough: bool) -> (Value, Findings) {
    let doc: Value = {
        let world = World::new(config.clone()).await;
        world
            .hub
            .http
            .get(world.hub.url("/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let mut findings = Findings::default();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let op = format!("{method} {template}");
            let responses = &operation["responses"];
            let world = World::new(config.clone()).await;
            let paths = world.paths(template);
            let primary = paths[0].clone();
            // Every id variant with every credential, and an empty body.
            let mut probes: Vec<(String, Creds, String)> = Vec::new();
            for path in &paths {
                for creds in ALL_CREDS {
                    probes.push((path.clone(), creds, String::new()));
                }
            }
            // Every body with the operator's and the agent's credentials.
            if thorough {
                for body in world.bodies(template) {
                    for creds in [Creds::Master, Creds::Alice, Creds::None] {
                        probes.push((primary.clone(), creds, body.clone()));
                    }
                }
            }
            for (path, creds, body) in probes {
                let response = world
                    .request(&method, &path, creds, &body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                // An event stream never ends by itself: its first frame will do.
                let event_stream = response
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let bytes = if event_stream {
                    let mut response = response;
                    response.chunk().await.unwrap().unwrap_or_default()
                } else {
                    response.bytes().await.unwrap()
                };
                let probe = format!("{path} {creds:?} body {}", &body[..body.len().min(60)]);
                findings.check(&doc, &op, responses, &probe, status, &bytes);
            }
        }
    }
    (doc, findings)
}

fn report(findings: &Findings) {
    assert!(
        findings.failures.is_empty(),
        "{} of {} answers disagree with /openapi.json:\n{}",
        findings.failures.len(),
        findings.requests,
        findings
            .failures
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn quiet(mut config: Config) -> Config {
    config.rate_limit_enabled = false;
    config
}

#[tokio::test]
async fn every_answer_is_documented_with_its_schema() {
    let (doc, findings) = probe_all(quiet(test_config()), true).await;
    report(&findings);
    // The probes reach real work, not only refusals: every operation
    // answered at least one success and one documented error.
    let operations: BTreeSet<&String> = findings.seen.iter().map(|(op, _)| op).collect();
    let paths = doc["paths"].as_object().unwrap();
    let count: usize = paths
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(operations.len(), count, "every operation was probed");
    for op in operations {
        let statuses: Vec<u16> = findings
            .seen
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            statuses.iter().any(|s| (200..300).contains(s)),
            "{op} never succeeded: {statuses:?}"
        );
        if !op.ends_with("/health") && !op.ends_with("/ready") && !op.ends_with("/metrics") {
            assert!(
                statuses.iter().any(|s| *s >= 400),
                "{op} never refused: {statuses:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_api_key_gate_and_rate_limits_are_documented_too() {
    let mut gated = quiet(test_config());
    gated.api_key_required = true;
    let (_, findings) = probe_all(gated, false).await;
    report(&findings);
    assert!(
        findings
            .seen
            .iter()
            .any(|(op, s)| op.ends_with("/api/stats") && *s == 401)
    );

    let mut limited = test_config();
    limited.rate_limit_per_sec = 1;
    limited.rate_limit_burst = 4;
    let (_, findings) = probe_all(limited, false).await;
    report(&findings);
    assert!(
        findings.seen.iter().any(|(_, s)| *s == 429),
        "the limiter answered"
    );
}

/// Code → statuses of every row of the `admp error-codes` table (GROUPS.md's
/// `*_FAILED` codes have several).
fn error_code_table() -> BTreeMap<String, BTreeSet<u16>> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_admp"))
        .arg("error-codes")
        .output()
        .expect("admp error-codes runs");
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        table,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ERROR-CODES.md"))
            .unwrap(),
        "docs/ERROR-CODES.md is `admp error-codes`"
    );
    let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for line in table.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(status), Some(code)) = (cells.get(1).and_then(|s| s.parse().ok()), cells.get(2))
        else {
            continue;
        };
        out.entry(code.trim_matches('`').to_string())
            .or_default()
            .insert(status);
    }
    out
}

#[test]
fn every_documented_error_code_is_in_the_code_table() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(admp::api::ApiDoc::openapi()).unwrap();
    let table = error_code_table();
    let mut documented = BTreeSet::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let status: u16 = status.parse().unwrap();
                let schema = &response["content"]["application/json"]["schema"];
                let Some(codes) = schema["properties"]["error"]["enum"].as_array() else {
                    assert!(
                        status < 400 || template == "/ready",
                        "{method} {template}: {status} has no code enum"
                    );
                    continue;
                };
                for code in codes.iter().map(|c| c.as_str().unwrap()) {
                    assert!(
                        table.get(code).is_some_and(|s| s.contains(&status)),
                        "{method} {template}: {code} documented as {status}"
                    );
                    documented.insert(code.to_string());
                }
            }
        }
    }
    // Every code the hub has is answered by some route; the router's own
    // fallbacks (no route, wrong method) belong to no operation.
    for code in table.keys() {
        assert!(
            documented.contains(code)
                || ["NOT_FOUND", "METHOD_NOT_ALLOWED"].contains(&code.as_str()),
            "{code} is in ERROR_CODES but no route documents it"
        );
    }
}
