//! Black-box tests of the group routes of GROUPS.md: every route, every error
//! code, the signed atomic fan-out and its copies as ordinary messages.

mod support;

use std::sync::Arc;

use admp::client::AgentClient;
use admp::client::groups::group_path;
use admp::config::{AgentAuth, Config};
use admp::hub::Clock;
use admp::signing::{body_hash, envelope as envelope_sig, keys};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

/// Creates a group as `owner` and returns its id (asserting 201).
async fn create(owner: &AgentClient, body: Value) -> String {
    let (status, group) = read(owner.create_group(&body).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    group["id"].as_str().unwrap().to_string()
}

/// Adds `agent` to `group` as `by` (asserting 200).
async fn add(by: &AgentClient, group: &str, agent: &str, role: &str) {
    let response = by
        .request(
            Method::POST,
            &group_path(group, "members"),
            Some(&json!({"agent_id": agent, "role": role})),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 200, "{body}");
}

async fn get(agent: &AgentClient, path: &str) -> reqwest::Response {
    agent.request(Method::GET, path, None).send().await.unwrap()
}

#[tokio::test]
async fn create_returns_the_group_with_its_owner_and_never_the_key() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let (status, group) = read(
        alice
            .create_group(
                &json!({"name": "Ops  Team", "access": {"type": "key-protected", "join_key": "k1"},
                "settings": {"max_members": 5, "history_visible": false, "message_ttl_sec": 60}}),
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    let id = group["id"].as_str().unwrap();
    let hex = id
        .strip_prefix("group://ops-team-")
        .expect("slug of the name");
    assert!(
        hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(group["name"], "Ops  Team");
    assert_eq!(group["created_by"], "alice");
    assert_eq!(group["access"], json!({"type": "key-protected"}));
    assert_eq!(
        group["settings"],
        json!({"history_visible": false, "max_members": 5, "message_ttl_sec": 60})
    );
    assert_eq!(group["members"][0]["agent_id"], "alice");
    assert_eq!(group["members"][0]["role"], "owner");
    assert!(group["created_at"].as_i64().unwrap() > 0);
    let text = group.to_string();
    assert!(!text.contains("k1") && !text.contains("join_key"), "{text}");

    // Defaults (GROUPS.md).
    let (_, group) = read(alice.create_group(&json!({"name": "x"})).await.unwrap()).await;
    assert_eq!(group["access"]["type"], "open");
    assert_eq!(
        group["settings"],
        json!({"history_visible": true, "max_members": 50, "message_ttl_sec": 604800})
    );
}

#[tokio::test]
async fn create_refusals_have_their_codes() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    for (body, status, code) in [
        (json!({}), 400, "INVALID_NAME"),
        (json!({"name": ""}), 400, "INVALID_NAME"),
        (json!({"name": 5}), 400, "INVALID_NAME"),
        (json!({"name": "x".repeat(101)}), 400, "NAME_TOO_LONG"),
        (json!({"name": "a/b"}), 400, "INVALID_NAME_CHARS"),
        (
            json!({"name": "a", "access": {"type": "secret"}}),
            400,
            "INVALID_INPUT",
        ),
        (
            json!({"name": "a", "access": {"type": "key-protected"}}),
            400,
            "INVALID_INPUT",
        ),
        (
            json!({"name": "a", "settings": {"max_members": 0}}),
            400,
            "INVALID_INPUT",
        ),
        (
            json!({"name": "a", "settings": {"max_members": 1001}}),
            400,
            "INVALID_INPUT",
        ),
        (
            json!({"name": "a", "settings": {"message_ttl_sec": 0}}),
            400,
            "INVALID_INPUT",
        ),
    ] {
        expect_error(alice.create_group(&body).await.unwrap(), status, code).await;
    }
    let response = hub
        .http
        .post(hub.url("/api/groups"))
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "AUTH_REQUIRED").await;
    // The operator acts for a named agent only.
    let response = hub
        .master(Method::POST, "/api/groups")
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "INVALID_INPUT").await;
    let response = hub
        .master(Method::POST, "/api/groups")
        .header("x-agent-id", "alice")
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn members_see_the_group_others_a_summary() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let eve = hub.agent("eve").await;
    let id = create(&alice, json!({"name": "team"})).await;
    let (status, full) = read(get(&alice, &group_path(&id, "")).await).await;
    assert_eq!(status, 200);
    assert_eq!(full["members"].as_array().unwrap().len(), 1);
    let (status, summary) = read(get(&eve, &group_path(&id, "")).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        summary,
        json!({"id": id, "name": "team", "access_type": "open", "member_count": 1})
    );
    expect_error(
        get(&alice, &group_path("group://nope-00000000", "")).await,
        404,
        "GROUP_NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn update_and_delete_need_their_roles() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let carol = hub.agent("carol").await;
    let id = create(&alice, json!({"name": "team"})).await;
    add(&alice, &id, "bob", "admin").await;
    add(&alice, &id, "carol", "member").await;

    let put = |who: &AgentClient, body: Value| {
        who.request(Method::PUT, &group_path(&id, ""), Some(&body))
            .send()
    };
    expect_error(
        put(&carol, json!({"name": "mine"})).await.unwrap(),
        403,
        "UPDATE_GROUP_FAILED",
    )
    .await;
    let (status, group) = read(
        put(
            &bob,
            json!({"name": "renamed", "settings": {"max_members": 7}}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{group}");
    assert_eq!(group["name"], "renamed");
    assert_eq!(group["settings"]["max_members"], 7);
    assert_eq!(group["settings"]["history_visible"], true, "untouched");
    expect_error(
        put(&bob, json!({"name": "a/b"})).await.unwrap(),
        400,
        "INVALID_NAME_CHARS",
    )
    .await;

    let delete = |who: &AgentClient| {
        who.request(Method::DELETE, &group_path(&id, ""), None)
            .send()
    };
    expect_error(delete(&bob).await.unwrap(), 403, "DELETE_GROUP_FAILED").await;
    assert_eq!(delete(&alice).await.unwrap().status(), 204);
    expect_error(
        get(&alice, &group_path(&id, "")).await,
        404,
        "GROUP_NOT_FOUND",
    )
    .await;
    expect_error(delete(&alice).await.unwrap(), 404, "GROUP_NOT_FOUND").await;
}

#[tokio::test]
async fn member_management_rules_and_codes() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let carol = hub.agent("carol").await;
    let _dave = hub.agent("dave").await;
    let id = create(
        &alice,
        json!({"name": "team", "access": {"type": "invite-only"},
        "settings": {"max_members": 4}}),
    )
    .await;
    let members_path = group_path(&id, "members");
    let post = |who: &AgentClient, body: Value| {
        who.request(Method::POST, &members_path, Some(&body)).send()
    };

    expect_error(
        post(&alice, json!({})).await.unwrap(),
        400,
        "AGENT_ID_REQUIRED",
    )
    .await;
    expect_error(
        post(&alice, json!({"agent_id": "ghost"})).await.unwrap(),
        404,
        "ADD_MEMBER_FAILED",
    )
    .await;
    expect_error(
        post(&alice, json!({"agent_id": "bob", "role": "owner"}))
            .await
            .unwrap(),
        400,
        "INVALID_INPUT",
    )
    .await;
    expect_error(
        post(&bob, json!({"agent_id": "bob"})).await.unwrap(),
        403,
        "ADD_MEMBER_FAILED",
    )
    .await;
    add(&alice, &id, "bob", "admin").await;
    expect_error(
        post(&bob, json!({"agent_id": "carol", "role": "admin"}))
            .await
            .unwrap(),
        403,
        "ADD_MEMBER_FAILED",
    )
    .await;
    add(&bob, &id, "carol", "member").await;
    expect_error(
        post(&bob, json!({"agent_id": "carol"})).await.unwrap(),
        409,
        "ADD_MEMBER_FAILED",
    )
    .await;
    expect_error(
        post(&carol, json!({"agent_id": "dave"})).await.unwrap(),
        403,
        "ADD_MEMBER_FAILED",
    )
    .await;
    add(&alice, &id, "dave", "member").await;
    let erin = hub.agent("erin").await;
    expect_error(
        post(&alice, json!({"agent_id": "erin"})).await.unwrap(),
        409,
        "ADD_MEMBER_FAILED",
    )
    .await;

    let (status, list) = read(get(&carol, &members_path).await).await;
    assert_eq!(status, 200);
    let roles: Vec<(String, String)> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m["joined_at"].as_i64().unwrap() > 0);
            (
                m["agent_id"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("alice", "owner"),
            ("bob", "admin"),
            ("carol", "member"),
            ("dave", "member")
        ]
        .map(|(a, r)| (a.to_string(), r.to_string()))
    );
    expect_error(get(&erin, &members_path).await, 403, "LIST_MEMBERS_FAILED").await;

    let remove = |who: &AgentClient, agent: &str| {
        who.request(
            Method::DELETE,
            &group_path(&id, &format!("members/{agent}")),
            None,
        )
        .send()
    };
    expect_error(
        remove(&bob, "alice").await.unwrap(),
        403,
        "REMOVE_MEMBER_FAILED",
    )
    .await;
    expect_error(
        remove(&alice, "alice").await.unwrap(),
        403,
        "REMOVE_MEMBER_FAILED",
    )
    .await;
    expect_error(
        remove(&carol, "dave").await.unwrap(),
        403,
        "REMOVE_MEMBER_FAILED",
    )
    .await;
    expect_error(
        remove(&bob, "erin").await.unwrap(),
        404,
        "REMOVE_MEMBER_FAILED",
    )
    .await;
    let (status, group) = read(remove(&bob, "dave").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(group["members"].as_array().unwrap().len(), 3);
    let (status, _) = read(remove(&alice, "bob").await.unwrap()).await;
    assert_eq!(status, 200);
    expect_error(
        remove(&alice, "bob").await.unwrap(),
        404,
        "REMOVE_MEMBER_FAILED",
    )
    .await;
    let ghost = group_path("group://none-00000000", "members/bob");
    let response = alice
        .request(Method::DELETE, &ghost, None)
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "GROUP_NOT_FOUND").await;
}

#[tokio::test]
async fn join_modes_and_leave() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let carol = hub.agent("carol").await;
    let open = create(
        &alice,
        json!({"name": "open", "settings": {"max_members": 2}}),
    )
    .await;
    let invite = create(
        &alice,
        json!({"name": "inv", "access": {"type": "invite-only"}}),
    )
    .await;
    let keyed = create(
        &alice,
        json!({"name": "keyed", "access": {"type": "key-protected", "join_key": "sesame"}}),
    )
    .await;

    let (status, group) = read(bob.join_group(&open, None).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        group["members"][1],
        json!({"agent_id": "bob", "role": "member",
        "joined_at": group["members"][1]["joined_at"]})
    );
    expect_error(
        bob.join_group(&open, None).await.unwrap(),
        409,
        "JOIN_FAILED",
    )
    .await;
    expect_error(
        carol.join_group(&open, None).await.unwrap(),
        409,
        "JOIN_FAILED",
    )
    .await;
    expect_error(
        bob.join_group(&invite, None).await.unwrap(),
        403,
        "JOIN_FAILED",
    )
    .await;
    expect_error(
        bob.join_group(&keyed, None).await.unwrap(),
        403,
        "JOIN_FAILED",
    )
    .await;
    expect_error(
        bob.join_group(&keyed, Some("wrong")).await.unwrap(),
        403,
        "JOIN_FAILED",
    )
    .await;
    assert_eq!(
        bob.join_group(&keyed, Some("sesame"))
            .await
            .unwrap()
            .status(),
        200
    );
    expect_error(
        bob.join_group("group://missing-00000000", None)
            .await
            .unwrap(),
        404,
        "GROUP_NOT_FOUND",
    )
    .await;

    let (status, body) = read(bob.leave_group(&open).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"message": "Left group", "group_id": open}));
    expect_error(bob.leave_group(&open).await.unwrap(), 403, "LEAVE_FAILED").await;
    expect_error(alice.leave_group(&open).await.unwrap(), 403, "LEAVE_FAILED").await;

    let (status, list) = read(get(&bob, &bob.agent_path("groups")).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        list,
        json!({"groups": [{"id": keyed, "name": "keyed", "role": "member", "member_count": 2}],
            "next_cursor": null})
    );
    expect_error(
        get(&carol, &bob.agent_path("groups")).await,
        403,
        "FORBIDDEN",
    )
    .await;
}

/// Verifies a copy's envelope with nothing but the sender's public key.
fn verify_with_public_key(envelope: &Value, public_key_b64: &str) -> bool {
    let key = keys::decode_public_key(public_key_b64).unwrap();
    let text = envelope.to_string();
    let hash = body_hash::envelope_body_hash(&text).unwrap();
    let base = envelope_sig::signing_base(
        envelope["timestamp"].as_str().unwrap(),
        &hash,
        envelope["from"].as_str().unwrap(),
        envelope["to"].as_str().unwrap(),
        envelope["correlation_id"].as_str(),
    );
    envelope_sig::verify(
        &base,
        envelope["signature"]["sig"].as_str().unwrap(),
        &[key],
    )
}

#[tokio::test]
async fn a_signed_post_reaches_every_other_member_as_an_ordinary_message() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let carol = hub.agent("carol").await;
    let eve = hub.agent("eve").await;
    let id = create(&alice, json!({"name": "team"})).await;
    bob.join_group(&id, None).await.unwrap();
    carol.join_group(&id, None).await.unwrap();

    let envelope = alice.group_envelope(&id, "deploy", json!({"v": 1, "10": "x"}));
    let (status, posted) = read(alice.post_group(&id, &envelope).await.unwrap()).await;
    assert_eq!(status, 201, "{posted}");
    let post_id = posted["message_id"].as_str().unwrap().to_string();
    assert_eq!(posted["group_id"], id.as_str());
    assert_eq!(
        (posted["delivered"].as_u64(), posted["failed"].as_u64()),
        (Some(2), Some(0))
    );
    let deliveries = posted["deliveries"].as_array().unwrap();
    let recipients: Vec<&str> = deliveries
        .iter()
        .map(|d| d["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(recipients, ["bob", "carol"], "everyone but the sender");
    assert!(deliveries.iter().all(|d| d["status"] == "delivered"));

    let alice_key = keys::encode_public_key(&alice.key.verifying_key());
    for (member, delivery) in [(&bob, &deliveries[0]), (&carol, &deliveries[1])] {
        let leased = pull_one(member).await;
        assert_eq!(leased["message_id"], delivery["message_id"]);
        assert_eq!(leased["group_id"], id.as_str());
        assert_eq!(leased["group_message_id"], post_id.as_str());
        assert_eq!(
            leased["envelope"], envelope,
            "the sender's envelope, verbatim"
        );
        assert!(verify_with_public_key(&leased["envelope"], &alice_key));
        let message_id = leased["message_id"].as_str().unwrap();
        // Its status, for the recipient and for the sender.
        let path = format!("/api/messages/{message_id}/status");
        let (status, body) = read(get(member, &path).await).await;
        assert_eq!(
            (status.as_u16(), body["status"].as_str()),
            (200, Some("leased"))
        );
        let (status, _) = read(get(&alice, &path).await).await;
        assert_eq!(status, 200);
        let (status, _) = read(
            member
                .ack(message_id, leased["lease_id"].as_str())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        alice.pull(&json!({})).await.unwrap().status(),
        204,
        "no copy for the sender"
    );
    let mut forged = envelope.clone();
    forged["body"] = json!({"v": 2});
    assert!(!verify_with_public_key(&forged, &alice_key));

    // Refusals.
    let from_eve = eve.group_envelope(&id, "x", json!({}));
    expect_error(
        eve.post_group(&id, &from_eve).await.unwrap(),
        403,
        "POST_MESSAGE_FAILED",
    )
    .await;
    let elsewhere = alice.group_envelope("group://other-00000000", "x", json!({}));
    expect_error(
        alice.post_group(&id, &elsewhere).await.unwrap(),
        400,
        "RECIPIENT_MISMATCH",
    )
    .await;
    let mut tampered = alice.group_envelope(&id, "x", json!({"a": 1}));
    tampered["body"] = json!({"a": 2});
    expect_error(
        alice.post_group(&id, &tampered).await.unwrap(),
        403,
        "INVALID_SIGNATURE",
    )
    .await;
    let mut unsigned = alice.group_envelope(&id, "x", json!({}));
    unsigned.as_object_mut().unwrap().remove("signature");
    expect_error(
        alice.post_group(&id, &unsigned).await.unwrap(),
        403,
        "INVALID_SIGNATURE",
    )
    .await;
    // The legacy shape is no envelope outside AGENT_AUTH=legacy.
    let legacy = json!({"subject": "hi", "body": {}});
    expect_error(
        alice.post_group(&id, &legacy).await.unwrap(),
        400,
        "INVALID_ENVELOPE",
    )
    .await;
    let by_bob = bob.group_envelope(&id, "x", json!({}));
    expect_error(
        alice.post_group(&id, &by_bob).await.unwrap(),
        403,
        "SIGNER_MISMATCH",
    )
    .await;
    expect_error(
        alice
            .post_group("group://missing-00000000", &envelope)
            .await
            .unwrap(),
        404,
        "GROUP_NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn idempotency_applies_to_the_post_as_a_whole() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let id = create(&alice, json!({"name": "team"})).await;
    bob.join_group(&id, None).await.unwrap();
    let envelope = alice.group_envelope(&id, "once", json!({"n": 1}));
    let (status, first) = read(alice.post_group(&id, &envelope).await.unwrap()).await;
    assert_eq!(status, 201);
    let (status, again) = read(alice.post_group(&id, &envelope).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["deliveries"], first["deliveries"]);
    let (_, stats) = read(get(&bob, &bob.agent_path("inbox/stats")).await).await;
    assert_eq!(stats["total"], 1, "one copy, not two");

    let mut other = alice.group_envelope(&id, "twice", json!({"n": 2}));
    other["id"] = envelope["id"].clone();
    admp::signing::envelope::sign_envelope(other.as_object_mut().unwrap(), &alice.key);
    expect_error(
        alice.post_group(&id, &other).await.unwrap(),
        409,
        "DUPLICATE_MESSAGE_ID",
    )
    .await;
}

#[tokio::test]
async fn a_full_inbox_fails_only_its_own_copy() {
    let hub = TestHub::start(Config {
        max_messages_per_agent: 1,
        ..test_config()
    })
    .await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let carol = hub.agent("carol").await;
    let id = create(&alice, json!({"name": "team"})).await;
    bob.join_group(&id, None).await.unwrap();
    carol.join_group(&id, None).await.unwrap();
    send(&alice, "bob", json!({"fill": true})).await;
    let envelope = alice.group_envelope(&id, "x", json!({}));
    let (status, posted) = read(alice.post_group(&id, &envelope).await.unwrap()).await;
    assert_eq!(status, 201, "{posted}");
    assert_eq!(
        (posted["delivered"].as_u64(), posted["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(posted["deliveries"][0]["agent_id"], "bob");
    assert_eq!(posted["deliveries"][0]["status"], "failed");
    assert_eq!(posted["deliveries"][0]["reason"], "inbox_full");
    assert_eq!(posted["deliveries"][1]["status"], "delivered");
    let leased = pull_one(&carol).await;
    assert_eq!(leased["group_id"], id.as_str());
}

#[tokio::test]
async fn copies_nack_dead_letter_and_wake_long_polls() {
    let hub = TestHub::start(Config {
        max_delivery_attempts: 1,
        ..test_config()
    })
    .await;
    let alice = hub.agent("alice").await;
    let bob = Arc::new(hub.agent("bob").await);
    let id = create(&alice, json!({"name": "team"})).await;
    bob.join_group(&id, None).await.unwrap();

    let waiter = {
        let bob = bob.clone();
        tokio::spawn(async move { read(bob.pull(&json!({"wait_sec": 10})).await.unwrap()).await })
    };
    // If the long-poll has not registered yet, it finds the copy on its first look.
    tokio::task::yield_now().await;
    let envelope = alice.group_envelope(&id, "x", json!({}));
    alice.post_group(&id, &envelope).await.unwrap();
    let posted_at = std::time::Instant::now();
    let (status, leased) = waiter.await.unwrap();
    assert_eq!(status, 200);
    // Woken by the post, not by its 10 s deadline.
    assert!(posted_at.elapsed() < std::time::Duration::from_secs(5));
    let message_id = leased["message_id"].as_str().unwrap();
    let response = bob
        .request(
            Method::POST,
            &bob.agent_path(&format!("messages/{message_id}/nack")),
            Some(&json!({})),
        )
        .send()
        .await
        .unwrap();
    let (_, body) = read(response).await;
    assert_eq!(body["status"], "dead", "{body}");
    let (_, dead) = read(get(&bob, &bob.agent_path("inbox/dead")).await).await;
    assert_eq!(dead["messages"][0]["message_id"], message_id);
}

#[tokio::test]
async fn history_is_paged_newest_first_and_respects_visibility() {
    let clock = Clock::manual();
    let hub = TestHub::start_with_clock(test_config(), clock.clone()).await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let carol = hub.agent("carol").await;
    let id = create(
        &alice,
        json!({"name": "team", "settings": {"message_ttl_sec": 60}}),
    )
    .await;
    bob.join_group(&id, None).await.unwrap();
    let now = clock.now_system();
    let mut posted = Vec::new();
    for n in 0..3 {
        let envelope = alice.envelope_with(&id, &format!("m{n}"), json!({"n": n}), |env| {
            env.insert("to".into(), json!(id));
            env.insert("timestamp".into(), json!(httpdate_iso(now)));
        });
        let response = alice
            .request_at(
                Method::POST,
                &group_path(&id, "messages"),
                Some(&envelope),
                now,
            )
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, 201, "{body}");
        posted.push(body["message_id"].as_str().unwrap().to_string());
        clock.advance_ms(10);
    }
    // A late joiner sees the history, not copies in its inbox.
    let at = |c: &Clock| c.now_system();
    let response = carol
        .request_at(
            Method::POST,
            &group_path(&id, "join"),
            Some(&json!({})),
            at(&clock),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let history = |who: &AgentClient, query: &str| {
        let path = format!("{}{query}", group_path(&id, "messages"));
        who.request_at(Method::GET, &path, None, at(&clock)).send()
    };
    let (status, page) = read(history(&carol, "?limit=2").await.unwrap()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (page["count"].as_u64(), page["has_more"].as_bool()),
        (Some(2), Some(true))
    );
    let ids: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [posted[2].as_str(), posted[1].as_str()]);
    assert_eq!(page["messages"][0]["from"], "alice");
    assert_eq!(page["messages"][0]["envelope"]["subject"], "m2");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = read(
        history(
            &carol,
            &format!("?limit=2&before={}", urlencoding::encode(cursor)),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(rest["messages"][0]["id"], posted[0].as_str());
    assert_eq!(rest["has_more"], false);
    let response = carol
        .request_at(
            Method::POST,
            &carol.agent_path("inbox/pull"),
            Some(&json!({})),
            at(&clock),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    expect_error(
        history(&carol, "?limit=0").await.unwrap(),
        400,
        "INVALID_INPUT",
    )
    .await;
    expect_error(
        history(&carol, "?before=zzz").await.unwrap(),
        400,
        "INVALID_INPUT",
    )
    .await;
    let eve = hub.agent("eve").await;
    let response = eve
        .request_at(Method::GET, &group_path(&id, "messages"), None, at(&clock))
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "GET_MESSAGES_FAILED").await;

    // Hidden history: members refused, the owner still reads it.
    let response = alice
        .request_at(
            Method::PUT,
            &group_path(&id, ""),
            Some(&json!({"settings": {"history_visible": false}})),
            at(&clock),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    expect_error(history(&bob, "").await.unwrap(), 403, "GET_MESSAGES_FAILED").await;
    let (status, _) = read(history(&alice, "").await.unwrap()).await;
    assert_eq!(status, 200);

    // The sweeper forgets posts after message_ttl_sec.
    clock.advance_ms(61_000);
    let report = admp::jobs::sweeper::sweep_once(&hub.running.hub)
        .await
        .unwrap();
    assert_eq!(report.history_purged, 3);
    let (_, page) = read(history(&alice, "").await.unwrap()).await;
    assert_eq!(page["count"], 0);
}

fn httpdate_iso(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn legacy_clients_post_unsigned_only_in_legacy_mode() {
    let hub = TestHub::start(Config {
        agent_auth: AgentAuth::Legacy,
        ..test_config()
    })
    .await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let id = create(&alice, json!({"name": "team"})).await;
    bob.join_group(&id, None).await.unwrap();
    let response = hub
        .http
        .post(hub.url(&group_path(&id, "messages")))
        .header("x-agent-id", "alice")
        .json(&json!({"subject": "legacy", "body": {"x": 1}, "correlation_id": "c1"}))
        .send()
        .await
        .unwrap();
    let (status, posted) = read(response).await;
    assert_eq!(status, 201, "{posted}");
    assert_eq!(posted["delivered"], 1);
    let leased = pull_one(&bob).await;
    assert_eq!(leased["envelope"]["from"], "agent://alice");
    assert_eq!(leased["envelope"]["to"], id.as_str());
    assert_eq!(leased["envelope"]["subject"], "legacy");
    assert_eq!(leased["envelope"]["correlation_id"], "c1");
    assert!(leased["envelope"].get("signature").is_none());
    // Without X-Agent-ID an unauthenticated legacy call has no actor.
    let response = hub
        .http
        .post(hub.url(&group_path(&id, "messages")))
        .json(&json!({"subject": "legacy"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "AUTH_REQUIRED").await;
}

#[tokio::test]
async fn concurrent_joins_admit_exactly_max_members() {
    let hub = TestHub::default().await;
    let owner = hub.agent("owner").await;
    let id = create(
        &owner,
        json!({"name": "small", "settings": {"max_members": 5}}),
    )
    .await;
    let mut agents = Vec::new();
    for n in 0..20 {
        agents.push(hub.agent(&format!("a{n}")).await);
    }
    let joins = agents.iter().map(|a| {
        let id = id.clone();
        async move { a.join_group(&id, None).await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(joins).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 16);
    let (_, members) = read(get(&owner, &group_path(&id, "members")).await).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn deleting_an_agent_removes_its_memberships_and_owned_groups() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let owned = create(&bob, json!({"name": "bobs"})).await;
    let other = create(&alice, json!({"name": "alices"})).await;
    bob.join_group(&other, None).await.unwrap();
    alice.join_group(&owned, None).await.unwrap();
    let response = bob
        .request(Method::DELETE, &bob.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    expect_error(
        get(&alice, &group_path(&owned, "")).await,
        404,
        "GROUP_NOT_FOUND",
    )
    .await;
    let (_, members) = read(get(&alice, &group_path(&other, "members")).await).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
    let (_, mine) = read(get(&alice, &alice.agent_path("groups")).await).await;
    assert_eq!(mine["groups"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn openapi_describes_every_group_route() {
    let hub = TestHub::default().await;
    let (status, doc) = read(hub.http.get(hub.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    for (method, path) in [
        ("post", "/api/groups"),
        ("get", "/api/groups/{group_id}"),
        ("put", "/api/groups/{group_id}"),
        ("delete", "/api/groups/{group_id}"),
        ("get", "/api/groups/{group_id}/members"),
        ("post", "/api/groups/{group_id}/members"),
        ("delete", "/api/groups/{group_id}/members/{agent_id}"),
        ("post", "/api/groups/{group_id}/join"),
        ("post", "/api/groups/{group_id}/leave"),
        ("post", "/api/groups/{group_id}/messages"),
        ("get", "/api/groups/{group_id}/messages"),
        ("get", "/api/agents/{agent_id}/groups"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from /openapi.json"
        );
        let concrete = path
            .replace("{group_id}", "group%3A%2F%2Fx-00000000")
            .replace("{agent_id}", "bob");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, body) = read(
            hub.http
                .request(method.clone(), hub.url(&concrete))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(
            status != 405 && body["error"] != "NOT_FOUND",
            "{method} {concrete} is not routed: {status} {body}"
        );
    }
}

#[tokio::test]
async fn membership_changes_are_audited() {
    let hub = TestHub::default().await;
    let (alice, bob, carol) = (
        hub.agent("alice").await,
        hub.agent("bob").await,
        hub.agent("carol").await,
    );
    let group = create(
        &alice,
        json!({"name": "audited", "access": {"type": "key-protected", "join_key": "k"}}),
    )
    .await;
    add(&alice, &group, "bob", "admin").await;
    let response = carol
        .request(
            Method::POST,
            &group_path(&group, "join"),
            Some(&json!({"key": "k"})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = alice
        .request(
            Method::PUT,
            &group_path(&group, ""),
            Some(&json!({"settings": {"max_members": 7}})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = bob
        .request(Method::DELETE, &group_path(&group, "members/carol"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = bob
        .request(Method::POST, &group_path(&group, "leave"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = alice
        .request(Method::DELETE, &group_path(&group, ""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    let (status, page) = read(
        hub.master(Method::GET, "/api/audit?limit=100")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let group_events: Vec<(String, String, Value)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("group."))
        .map(|e| {
            assert_eq!(e["detail"]["group_id"], json!(group), "{e}");
            (
                e["kind"].as_str().unwrap().to_string(),
                e["agent_id"].as_str().unwrap().to_string(),
                e["detail"].clone(),
            )
        })
        .collect();
    let who: Vec<(&str, &str)> = group_events
        .iter()
        .map(|(k, a, _)| (k.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("group.created", "alice"),
            ("group.member_added", "alice"),
            ("group.joined", "carol"),
            ("group.updated", "alice"),
            ("group.member_removed", "bob"),
            ("group.left", "bob"),
            ("group.deleted", "alice"),
        ]
    );
    assert_eq!(group_events[1].2["member"], "bob");
    assert_eq!(group_events[1].2["role"], "admin");
    assert_eq!(group_events[2].2["with_key"], true);
    assert_eq!(group_events[3].2["changed"], json!(["max_members"]));
    assert_eq!(group_events[4].2["member"], "carol");
    // The join key never reaches the log.
    assert!(!page.to_string().contains("\"k\""), "{page}");
}

#[tokio::test]
async fn an_agents_groups_come_in_pages() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        ids.push(create(&alice, json!({ "name": name })).await);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => alice.agent_path("groups?limit=2"),
            Some(c) => {
                alice.agent_path(&format!("groups?limit=2&cursor={}", urlencoding::encode(c)))
            }
        };
        let (status, page) = read(get(&alice, &path).await).await;
        assert_eq!(status, 200, "{page}");
        let groups = page["groups"].as_array().unwrap();
        assert!(groups.len() <= 2, "{page}");
        seen.extend(groups.iter().map(|g| g["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    for bad in ["groups?limit=0", "groups?limit=1001", "groups?limit=x"] {
        let (status, body) = read(get(&alice, &alice.agent_path(bad)).await).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let long = "g".repeat(300);
    expect_error(
        get(&alice, &alice.agent_path(&format!("groups?cursor={long}"))).await,
        400,
        "INVALID_INPUT",
    )
    .await;
}
