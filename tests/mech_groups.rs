//! Group fan-out on Mech, which has no transactions: a post is complete or
//! absent whether its writes fail (the store cleans up and reports) or the
//! hub dies half-way (the next start rolls the `pending` post back).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use admp::store::mech::{GROUP_POSTS, MESSAGES, MechStore};
use admp::store::*;
use serde_json::json;
use support::mech_emulator::MechEmulator;

const T0: Millis = 1_700_000_000_000;
const G: &str = "group://team-0000abcd";
const MEMBERS: usize = 8;

fn agent(id: &str) -> Agent {
    Agent {
        agent_id: id.to_string(),
        agent_type: "generic".into(),
        metadata: Metadata::new(),
        keys: Vec::new(),
        webhook_url: None,
        webhook_secret: None,
        previous_webhook_secret: None,
        trusted_agents: Vec::new(),
        last_heartbeat: T0,
        online: true,
        heartbeat_interval_ms: 60_000,
        heartbeat_timeout_ms: 300_000,
        created_at: T0,
        updated_at: T0,
    }
}

fn post(id: &str) -> GroupPost {
    GroupPost {
        id: id.to_string(),
        group_id: G.to_string(),
        sender: "m0".into(),
        envelope: json!({"version": "1.0", "from": "agent://m0", "to": G, "subject": id,
            "timestamp": "2023-11-14T22:13:20Z"})
        .into(),
        created_at: T0,
        expires_at: T0 + 3_600_000,
        idempotency_key: None,
        content_hash: String::new(),
        deliveries: Vec::new(),
    }
}

fn fan() -> FanOut {
    FanOut {
        quota: 1000,
        copy_expires_at: T0 + 3_600_000,
        now: T0,
    }
}

async fn open(emulator: &MechEmulator) -> Arc<MechStore> {
    Arc::new(
        MechStore::open(emulator.settings())
            .await
            .expect("opening Mech"),
    )
}

async fn setup(store: &MechStore) {
    for i in 0..MEMBERS {
        store.create_agent(agent(&format!("m{i}"))).await.unwrap();
    }
    let group = Group {
        id: G.into(),
        name: "team".into(),
        created_by: "m0".into(),
        access: GroupAccess::Open,
        join_key_hash: None,
        settings: GroupSettings {
            history_visible: true,
            max_members: 50,
            message_ttl_sec: 3600,
        },
        created_at: T0,
        updated_at: T0,
        member_count: 0,
    };
    store.create_group(group, T0).await.unwrap();
    for i in 1..MEMBERS {
        let member = GroupMember {
            agent_id: format!("m{i}"),
            role: GroupRole::Member,
            joined_at: T0,
        };
        store.add_group_member(G, member).await.unwrap();
    }
}

/// Post id → members holding a copy, from every inbox of `store`.
/// Leases at `now`: each check leases anew after the previous check's leases end.
async fn copies(store: &MechStore, now: Millis) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for i in 1..MEMBERS {
        let leased = store
            .lease(&LeaseRequest {
                recipient: format!("m{i}"),
                now,
                visibility_ms: 60_000,
                max_messages: 1000,
                max_attempts: 10,
            })
            .await
            .unwrap();
        for m in leased {
            let (_, post) = copy_origin(&m).expect("a group copy");
            out.entry(post).or_default().insert(m.recipient);
        }
    }
    out
}

/// Every post in the history has all its copies, and no copy lacks its post.
async fn assert_complete_or_absent(store: &MechStore, now: Millis) -> usize {
    let history: HashSet<String> = store
        .group_history(G, 100, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    let copies = copies(store, now).await;
    for (post, members) in &copies {
        assert!(history.contains(post), "copies of {post} without its post");
        assert_eq!(members.len(), MEMBERS - 1, "{post} is partial: {members:?}");
    }
    for post in &history {
        assert!(copies.contains_key(post), "{post} has no copies");
    }
    history.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_writes_leave_each_post_complete_or_absent() {
    let emulator = MechEmulator::start().await;
    let store = open(&emulator).await;
    setup(&store).await;
    emulator.set_error_rate(0.5);
    let mut created = 0;
    let mut failed = 0;
    for n in 0..12 {
        match store.post_to_group(post(&format!("p{n}")), fan()).await {
            Ok(Posted::Created(_)) => created += 1,
            Ok(Posted::Duplicate(_)) => unreachable!("no keys"),
            Err(_) => failed += 1,
        }
    }
    emulator.set_error_rate(0.0);
    assert_eq!(assert_complete_or_absent(&store, T0).await, created);
    // What Mech holds rebuilds to the same: a restart finds no partial post.
    // The documents stay as they are; releasing the single-instance lock lets the next store open.
    store.close().await;
    let reopened = open(&emulator).await;
    let after = assert_complete_or_absent(&reopened, T0 + 120_000).await;
    assert!(after >= created, "every created post survives a restart");
    println!(
        "mech fan-out under 50% request errors: created={created} failed={failed} after_restart={after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_left_pending_by_a_crash_is_rolled_back_at_start() {
    let emulator = MechEmulator::start().await;
    let store = open(&emulator).await;
    setup(&store).await;
    store.post_to_group(post("done"), fan()).await.unwrap();
    // What a crash half-way leaves: the post `pending` and only some copies.
    let mut half = post("cut");
    let plan = plan_fan_out(
        &mut half,
        &fan(),
        (1..MEMBERS).map(|i| Recipient {
            agent_id: format!("m{i}"),
            push: false,
            full: false,
        }),
    );
    emulator.insert(
        GROUP_POSTS,
        "gp_crashed",
        json!({"complete": false, "post": half}),
    );
    for (seq, copy) in plan.copies.iter().take(3).enumerate() {
        emulator.insert(
            MESSAGES,
            &copy.id,
            json!({"seq": 10_000 + seq, "message": copy}),
        );
    }
    // The documents stay as they are; releasing the single-instance lock lets the next store open.
    store.close().await;
    let reopened = open(&emulator).await;
    assert_eq!(assert_complete_or_absent(&reopened, T0).await, 1);
    assert!(emulator.document(GROUP_POSTS, "gp_crashed").is_none());
    for copy in &plan.copies {
        assert!(
            emulator.document(MESSAGES, &copy.id).is_none(),
            "{}",
            copy.id
        );
        assert!(reopened.get_message(&copy.id).await.unwrap().is_none());
    }
}
