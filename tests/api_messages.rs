//! Black-box tests of sending, pulling, acking and the message lifecycle.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use admp::config::Config;
use admp::hub::Clock;
use admp::signing::keys;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn send_pull_ack_status_round_trip() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;

    let id = send(&alice, "bob", json!({"text": "hi"})).await;
    let leased = pull_one(&bob).await;
    assert_eq!(leased["message_id"], id.as_str());
    assert_eq!(leased["envelope"]["body"]["text"], "hi");
    assert_eq!(leased["envelope"]["from"], "agent://alice");
    assert_eq!(leased["attempts"], 1);
    assert!(leased["lease_until"].as_i64().unwrap() > 0);
    let lease_id = leased["lease_id"].as_str().unwrap();

    let status_path = format!("/api/messages/{id}/status");
    let (status, body) = read(
        alice
            .request(Method::GET, &status_path, None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "leased");

    let (status, body) = read(bob.ack(&id, Some(lease_id)).await.unwrap()).await;
    assert_eq!((status.as_u16(), body), (200, json!({"ok": true})));

    let (_, body) = read(
        bob.request(Method::GET, &status_path, None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["status"], "acked");
    assert!(body["acked_at"].as_i64().is_some());

    let response = bob.pull(&json!({})).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let (_, stats) = read(
        bob.request(Method::GET, &bob.agent_path("inbox/stats"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        stats,
        json!({"total": 1, "queued": 0, "leased": 0, "acked": 1, "failed": 0, "expired": 0, "dead": 0})
    );
}

#[tokio::test]
async fn status_is_private_to_sender_recipient_and_operator() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let eve = hub.agent("eve").await;
    let id = send(&alice, "bob", json!({})).await;
    let path = format!("/api/messages/{id}/status");
    let response = eve.request(Method::GET, &path, None).send().await.unwrap();
    expect_error(response, 403, "FORBIDDEN").await;
    let response = hub.http.get(hub.url(&path)).send().await.unwrap();
    expect_error(response, 401, "AUTH_REQUIRED").await;
    // Without credentials a missing message answers the same: no probing.
    let missing = "/api/messages/00000000-0000-4000-8000-000000000000/status";
    let response = hub.http.get(hub.url(missing)).send().await.unwrap();
    expect_error(response, 401, "AUTH_REQUIRED").await;
    let response = hub.master(Method::GET, &path).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = bob.request(Method::GET, "/api/messages/nope/status", None);
    expect_error(response.send().await.unwrap(), 404, "MESSAGE_NOT_FOUND").await;
}

#[tokio::test]
async fn forty_concurrent_pulls_over_twenty_messages_lease_each_once() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    for i in 0..20 {
        send(&alice, "bob", json!({ "i": i })).await;
    }
    let pulls = (0..40).map(|_| {
        let bob = bob.clone();
        tokio::spawn(async move { read(bob.pull(&json!({})).await.unwrap()).await })
    });
    let mut leased = Vec::new();
    let mut empty = 0;
    for pull in pulls {
        let (status, body) = pull.await.unwrap();
        match status.as_u16() {
            200 => leased.push(body["message_id"].as_str().unwrap().to_string()),
            204 => empty += 1,
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    let distinct: HashSet<_> = leased.iter().collect();
    assert_eq!((leased.len(), distinct.len(), empty), (20, 20, 20));
}

#[tokio::test]
async fn stale_lease_id_cannot_ack_and_unleased_cannot_be_acked() {
    let clock = Clock::manual();
    let hub = TestHub::start_with_clock(test_config(), clock.clone()).await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let id = send(&alice, "bob", json!({})).await;

    let response = bob.ack(&id, None).await.unwrap();
    expect_error(response, 409, "NOT_LEASED").await;

    let first = pull_one(&bob).await;
    clock.advance_ms(61_000);
    // The expired lease is visible again at the very next pull, no sweeper needed.
    let second = pull_one(&bob).await;
    assert_eq!(second["message_id"], id.as_str());
    assert_eq!(second["attempts"], 2);
    assert_ne!(first["lease_id"], second["lease_id"]);

    let response = bob.ack(&id, first["lease_id"].as_str()).await.unwrap();
    expect_error(response, 409, "LEASE_MISMATCH").await;
    let response = bob.ack(&id, second["lease_id"].as_str()).await.unwrap();
    assert_eq!(response.status(), 200);
    let response = bob.ack("no-such-message", None).await.unwrap();
    expect_error(response, 404, "MESSAGE_NOT_FOUND").await;
}

#[tokio::test]
async fn long_poll_wakes_when_a_message_arrives() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let waiting = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let response = bob.pull(&json!({"wait_sec": 10})).await.unwrap();
            (Instant::now(), read(response).await)
        })
    };
    // Give the long-poll time to register before sending: if it has not, the
    // message is simply found on its first look and the test still holds.
    tokio::task::yield_now().await;
    let id = send(&alice, "bob", json!({"wake": true})).await;
    let sent_at = Instant::now();
    let (woke_at, (status, body)) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["message_id"], id.as_str());
    // Woken by the send, not by its 10 s deadline (speed is measured by `admp bench`).
    let latency = woke_at.saturating_duration_since(sent_at);
    assert!(latency < Duration::from_secs(5), "woke after {latency:?}");
}

#[tokio::test]
async fn long_poll_wakes_when_time_makes_a_message_available() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let id = send(&alice, "bob", json!({})).await;

    // A delayed nack: no send will announce the message's return.
    pull_one(&bob).await;
    let nack = bob
        .request(
            Method::POST,
            &bob.agent_path(&format!("messages/{id}/nack")),
            Some(&json!({"delay_sec": 1})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(nack.status(), 200);
    let (status, body) = read(
        bob.pull(&json!({"wait_sec": 10, "visibility_timeout": 1}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), &body["message_id"]), (200, &json!(id)));

    // An expiring lease: the message comes back to the next long-poll.
    let started = Instant::now();
    let (status, body) = read(bob.pull(&json!({"wait_sec": 10})).await.unwrap()).await;
    assert_eq!((status.as_u16(), &body["message_id"]), (200, &json!(id)));
    assert_eq!(body["attempts"], 3);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "returned at the deadline, not when the lease ended"
    );
}

#[tokio::test]
async fn long_poll_returns_empty_at_its_deadline() {
    let hub = TestHub::default().await;
    let bob = hub.agent("bob").await;
    let started = Instant::now();
    let response = bob.pull(&json!({"wait_sec": 1})).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (status, body) = read(
        bob.pull(&json!({"wait_sec": 1, "max_messages": 5}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), body), (200, json!({"messages": []})));
}

#[tokio::test]
async fn shutdown_ends_long_polls_with_an_empty_answer() {
    let hub = TestHub::default().await;
    let bob = hub.agent("bob").await;
    let waiting = tokio::spawn(async move { bob.pull(&json!({"wait_sec": 20})).await });
    // Wait (bounded) until the long-poll is parked in the hub: its notifier is
    // then held by the hub's map, by the waiting pull and by our probe.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::sync::Arc::strong_count(&hub.running.hub.wakers.get("bob")) < 3 {
        assert!(Instant::now() < deadline, "long-poll never parked");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = Instant::now();
    hub.running.shutdown().await.unwrap();
    let response = waiting.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn batch_pull_and_batch_ack() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    for i in 0..5 {
        send(&alice, "bob", json!({ "i": i })).await;
    }
    let (status, body) = read(bob.pull(&json!({"max_messages": 3})).await.unwrap()).await;
    assert_eq!(status, 200);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    let order: Vec<i64> = messages
        .iter()
        .map(|m| m["envelope"]["body"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(order, vec![0, 1, 2], "oldest first");

    let mut acks: Vec<Value> = messages
        .iter()
        .map(|m| json!({"message_id": m["message_id"], "lease_id": m["lease_id"]}))
        .collect();
    acks.push(json!({"message_id": "missing"}));
    acks.push(json!({"message_id": messages[0]["message_id"], "lease_id": "stale"}));
    let (status, body) = read(
        bob.request(
            Method::POST,
            &bob.agent_path("inbox/ack"),
            Some(&json!({ "acks": acks })),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let results = body["results"].as_array().unwrap();
    assert!(results[..3].iter().all(|r| r["ok"] == true));
    assert_eq!(results[3]["error"], "MESSAGE_NOT_FOUND");
    assert_eq!(results[4]["error"], "NOT_LEASED");

    let response = bob
        .request(
            Method::POST,
            &bob.agent_path("inbox/ack"),
            Some(&json!({"acks": []})),
        )
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "INVALID_INPUT").await;
    let response = bob.pull(&json!({"max_messages": 101})).await.unwrap();
    expect_error(response, 400, "INVALID_INPUT").await;
}

#[tokio::test]
async fn nack_requeues_delays_and_extends() {
    let clock = Clock::manual();
    let hub = TestHub::start_with_clock(test_config(), clock.clone()).await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let id = send(&alice, "bob", json!({})).await;
    let nack_path = bob.agent_path(&format!("messages/{id}/nack"));

    let leased = pull_one(&bob).await;
    let lease_until = leased["lease_until"].as_i64().unwrap();
    let (status, body) = read(
        bob.request(
            Method::POST,
            &nack_path,
            Some(&json!({"extend_sec": 30, "lease_id": leased["lease_id"]})),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "leased");
    assert_eq!(body["lease_until"].as_i64().unwrap(), lease_until + 30_000);

    let (_, body) = read(
        bob.request(Method::POST, &nack_path, Some(&json!({"delay_sec": 10})))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["status"], "queued");
    assert_eq!(bob.pull(&json!({})).await.unwrap().status(), 204);
    clock.advance_ms(10_000);
    let again = pull_one(&bob).await;
    assert_eq!(again["message_id"], id.as_str());

    let (_, body) = read(
        bob.request(Method::POST, &nack_path, Some(&json!({"requeue": true})))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["status"], "queued");
    let response = bob
        .request(Method::POST, &nack_path, Some(&json!({})))
        .send()
        .await
        .unwrap();
    expect_error(response, 409, "NOT_LEASED").await;
}

#[tokio::test]
async fn max_attempts_dead_letters_and_requeue_restores() {
    let clock = Clock::manual();
    let config = Config {
        max_delivery_attempts: 2,
        ..test_config()
    };
    let hub = TestHub::start_with_clock(config, clock.clone()).await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let id = send(&alice, "bob", json!({"poison": true})).await;
    for _ in 0..2 {
        let leased = pull_one(&bob).await;
        let path = bob.agent_path(&format!("messages/{id}/nack"));
        let body = json!({"lease_id": leased["lease_id"]});
        let response = bob.request(Method::POST, &path, Some(&body)).send().await;
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(bob.pull(&json!({})).await.unwrap().status(), 204);

    let (status, page) = read(
        bob.request(Method::GET, &bob.agent_path("inbox/dead"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let dead = &page["messages"][0];
    assert_eq!(dead["message_id"], id.as_str());
    assert_eq!(dead["attempts"], 2);
    assert_eq!(dead["dead_reason"], "max_attempts");
    assert!(page["next_cursor"].is_null());

    let requeue = bob.agent_path(&format!("messages/{id}/requeue"));
    let (status, body) = read(
        bob.request(Method::POST, &requeue, None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body),
        (200, json!({"ok": true, "status": "queued"}))
    );
    let leased = pull_one(&bob).await;
    assert_eq!(leased["attempts"], 1, "attempts reset by requeue");
    let response = bob.request(Method::POST, &requeue, None).send().await;
    expect_error(response.unwrap(), 409, "NOT_DEAD").await;
}

#[tokio::test]
async fn dead_letter_listing_pages_with_a_cursor() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    for i in 0..3 {
        send(&alice, "bob", json!({ "i": i })).await;
    }
    // Deleting bob dead-letters his inbox; the operator can still page it.
    let response = bob
        .request(Method::DELETE, &bob.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let mut path = "/api/agents/bob/inbox/dead?limit=2".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = read(hub.master(Method::GET, &path).send().await.unwrap()).await;
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().unwrap() {
            assert_eq!(m["dead_reason"], "recipient_deleted");
            seen.push(m["envelope"]["body"]["i"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, vec![0, 1, 2]);
    let response = hub
        .master(Method::GET, "/api/agents/bob/inbox/dead?cursor=garbage")
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "INVALID_INPUT").await;
}

#[tokio::test]
async fn deleting_an_agent_dead_letters_its_inbox_and_revokes_it() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let id = send(&alice, "bob", json!({})).await;
    let response = bob
        .request(Method::DELETE, &bob.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (_, status) = read(
        alice
            .request(Method::GET, &format!("/api/messages/{id}/status"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status["status"], "dead");
    assert_eq!(status["dead_reason"], "recipient_deleted");
    // Its signature no longer authenticates, and mail to it is refused.
    let response = bob.pull(&json!({})).await.unwrap();
    expect_error(response, 401, "SIGNATURE_INVALID").await;
    let envelope = alice.envelope("bob", "late", json!({}));
    expect_error(
        alice.send("bob", &envelope).await.unwrap(),
        404,
        "RECIPIENT_NOT_FOUND",
    )
    .await;
    // The id is retired: nobody can register it again and reach the old
    // inbox (SECURITY.md, "Deleted agents").
    let key = keys::generate();
    let response = hub
        .http
        .post(hub.url("/api/agents/register"))
        .json(&json!({"agent_id": "bob", "public_key": keys::encode_public_key(&key.verifying_key())}))
        .send()
        .await
        .unwrap();
    expect_error(response, 409, "AGENT_ID_RETIRED").await;
}

#[tokio::test]
async fn idempotent_sends_return_the_original() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let _bob = hub.agent("bob").await;
    let envelope = alice.envelope("bob", "once", json!({"n": 1}));
    let (status, first) = read(alice.send("bob", &envelope).await.unwrap()).await;
    assert_eq!(status, 201);
    assert_eq!(
        first["message_id"], envelope["id"],
        "message id is the envelope id"
    );
    let (status, again) = read(alice.send("bob", &envelope).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["duplicate"], true);

    let conflicting = alice.envelope_with("bob", "once", json!({"n": 2}), |e| {
        e.insert("id".into(), envelope["id"].clone());
    });
    expect_error(
        alice.send("bob", &conflicting).await.unwrap(),
        409,
        "DUPLICATE_MESSAGE_ID",
    )
    .await;

    // The Idempotency-Key header takes precedence over the envelope id.
    let keyed = |n: i64| {
        let envelope = alice.envelope("bob", "keyed", json!({ "n": n }));
        alice
            .request(Method::POST, "/api/agents/bob/messages", Some(&envelope))
            .header("idempotency-key", "k-1")
    };
    let (status, a) = read(keyed(1).send().await.unwrap()).await;
    assert_eq!(status, 201);
    let (status, b) = read(keyed(1).send().await.unwrap()).await;
    assert_eq!((status.as_u16(), &b["message_id"]), (200, &a["message_id"]));
    expect_error(keyed(2).send().await.unwrap(), 409, "DUPLICATE_MESSAGE_ID").await;
}

#[tokio::test]
async fn a_replayed_envelope_without_id_is_never_delivered_twice() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let mut envelope = alice.envelope("bob", "no id", json!({"n": 1}));
    envelope.as_object_mut().unwrap().remove("id");
    let (status, first) = read(alice.send("bob", &envelope).await.unwrap()).await;
    assert_eq!(status, 201);
    let (status, replay) = read(alice.send("bob", &envelope).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(replay["duplicate"], true);
    assert_eq!(replay["message_id"], first["message_id"]);
    pull_one(&bob).await;
    assert_eq!(bob.pull(&json!({})).await.unwrap().status(), 204);
}

#[tokio::test]
async fn same_envelope_id_to_two_recipients_makes_two_messages() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;
    hub.agent("carol").await;
    let id = "shared-envelope-id";
    let to_bob = alice.envelope_with("bob", "s", json!({}), |e| {
        e.insert("id".into(), json!(id));
    });
    let to_carol = alice.envelope_with("carol", "s", json!({}), |e| {
        e.insert("id".into(), json!(id));
    });
    let (s1, a) = read(alice.send("bob", &to_bob).await.unwrap()).await;
    let (s2, b) = read(alice.send("carol", &to_carol).await.unwrap()).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (201, 201));
    assert_ne!(a["message_id"], b["message_id"]);
}

#[tokio::test]
async fn inbox_quota_answers_429_with_retry_after() {
    let config = Config {
        max_messages_per_agent: 2,
        ..test_config()
    };
    let hub = TestHub::start(config).await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;
    send(&alice, "bob", json!({})).await;
    send(&alice, "bob", json!({})).await;
    let envelope = alice.envelope("bob", "over", json!({}));
    let response = alice.send("bob", &envelope).await.unwrap();
    assert!(response.headers().contains_key("retry-after"));
    expect_error(response, 429, "INBOX_FULL").await;
}

#[tokio::test]
async fn oversized_envelope_is_413() {
    let config = Config {
        max_message_size_kb: 1,
        ..test_config()
    };
    let hub = TestHub::start(config).await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;
    let envelope = alice.envelope("bob", "big", json!({"blob": "x".repeat(2048)}));
    expect_error(
        alice.send("bob", &envelope).await.unwrap(),
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
}

#[tokio::test]
async fn reply_round_trip_without_rewriting_signed_fields() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let carol = hub.agent("carol").await;
    let question = send(&alice, "bob", json!({"q": "2+2?"})).await;
    let leased = pull_one(&bob).await;

    // The replier signs exactly what the server will use: from, to = original
    // sender as written there, correlation_id = the original message id.
    let reply = bob.envelope_with("alice", "re: 2+2", json!({"a": 4}), |e| {
        e.insert("to".into(), leased["envelope"]["from"].clone());
        e.insert("correlation_id".into(), json!(question));
    });
    let path = bob.agent_path(&format!("messages/{question}/reply"));
    let (status, body) = read(
        bob.request(Method::POST, &path, Some(&reply))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "queued");
    let answer = pull_one(&alice).await;
    assert_eq!(answer["envelope"]["correlation_id"], question.as_str());
    assert_eq!(answer["envelope"]["body"]["a"], 4);

    // A reply that contradicts the original is refused; so is a non-recipient.
    let wrong = bob.envelope_with("carol", "re", json!({}), |e| {
        e.insert("correlation_id".into(), json!(question));
    });
    let response = bob.request(Method::POST, &path, Some(&wrong)).send().await;
    expect_error(response.unwrap(), 400, "REPLY_MISMATCH").await;
    let carol_path = carol.agent_path(&format!("messages/{question}/reply"));
    let sneaky = carol.envelope_with("alice", "re", json!({}), |e| {
        e.insert("correlation_id".into(), json!(question));
    });
    let response = carol
        .request(Method::POST, &carol_path, Some(&sneaky))
        .send()
        .await;
    expect_error(response.unwrap(), 403, "FORBIDDEN").await;
    let missing = bob.agent_path("messages/nope/reply");
    let response = bob
        .request(Method::POST, &missing, Some(&reply))
        .send()
        .await;
    expect_error(response.unwrap(), 404, "MESSAGE_NOT_FOUND").await;
}

#[tokio::test]
async fn reclaim_ends_only_this_agents_expired_leases() {
    let clock = Clock::manual();
    let hub = TestHub::start_with_clock(test_config(), clock.clone()).await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let carol = hub.agent("carol").await;
    send(&alice, "bob", json!({})).await;
    send(&alice, "carol", json!({})).await;
    pull_one(&bob).await;
    pull_one(&carol).await;
    clock.advance_ms(61_000);
    let (status, body) = read(
        bob.request(Method::POST, &bob.agent_path("inbox/reclaim"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), body), (200, json!({"reclaimed": 1})));
    let (_, stats) = read(
        carol
            .request(Method::GET, &carol.agent_path("inbox/stats"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stats["leased"], 1, "carol's expired lease is untouched");
}

#[tokio::test]
async fn ttl_expired_messages_are_not_delivered() {
    let clock = Clock::manual();
    let hub = TestHub::start_with_clock(test_config(), clock.clone()).await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let envelope = alice.envelope_with("bob", "short", json!({}), |e| {
        e.insert("ttl_sec".into(), json!(5));
    });
    let (_, sent) = read(alice.send("bob", &envelope).await.unwrap()).await;
    clock.advance_ms(6_000);
    assert_eq!(bob.pull(&json!({})).await.unwrap().status(), 204);
    let path = format!(
        "/api/messages/{}/status",
        sent["message_id"].as_str().unwrap()
    );
    let (_, status) = read(
        alice
            .request(Method::GET, &path, None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status["status"], "expired");
}

#[tokio::test]
async fn hub_stats_count_agents_and_messages() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;
    send(&alice, "bob", json!({})).await;
    let (status, stats) = read(hub.http.get(hub.url("/api/stats")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        stats["agents"],
        json!({"total": 2, "online": 2, "offline": 0})
    );
    assert_eq!(stats["messages"]["queued"], 1);
    assert_eq!(stats["messages"]["failed"], 0);
}

/// How many times the hub has asked its store for an agent record.
async fn agent_reads(hub: &TestHub) -> u64 {
    let text = hub
        .http
        .get(hub.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(r#"admp_store_call_duration_seconds_count{op="get_agent"} "#))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn a_signed_send_reads_each_agent_record_once() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;

    let before = agent_reads(&hub).await;
    send(&alice, "bob", json!({"n": 1})).await;
    let after_other = agent_reads(&hub).await;
    // The sender while verifying the HTTP signature (reused for the
    // envelope's), the recipient for its trust list and webhook.
    assert_eq!(after_other - before, 2);

    send(&alice, "alice", json!({"n": 2})).await;
    // Sending to oneself: the one record serves as sender and recipient.
    assert_eq!(agent_reads(&hub).await - after_other, 1);
}
