//! A PostgreSQL server that crashes and comes back under load: the hub keeps
//! running (no restart), refuses what it cannot store while the database is
//! away, and afterwards serves again with nothing lost and nothing resurrected.
//!
//! The test runs a private cluster of the installed PostgreSQL server
//! (`initdb` and `pg_ctl` from `PATH` or `PG_BIN`) in a temporary directory on
//! a free loopback port, so stopping it disturbs nobody else. Producers send
//! and consumers pull and ack through one `admp serve` the whole time; midway
//! the server is stopped with `pg_ctl stop -m immediate` (no shutdown
//! checkpoint: recovery replays the WAL, as after a crash) and started again.
//!
//! - every send answered 201 is delivered and acked afterwards;
//! - no message is handed out again after an ack answered 200.
//!
//! Skipped (with a message) when no PostgreSQL binaries are installed.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use admp::client::AgentClient;
use parking_lot::Mutex;
use serde_json::{Value, json};

use support::storage::{HubProcess, TempDir};

const PRODUCERS: usize = 4;
const CONSUMERS: usize = 2;
/// Load before the crash, and again after the restart.
const LOAD_PHASE: Duration = Duration::from_secs(3);
/// Bound on draining everything afterwards.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

/// A throwaway cluster, stopped (immediately) when dropped.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Run the server tools as this user (`initdb` refuses root).
    run_as: Option<&'static str>,
    _dir: TempDir,
}

impl Cluster {
    /// `initdb` into a fresh directory, then start it. `None` without binaries.
    fn create() -> Option<Cluster> {
        let bin = find_bin()?;
        let dir = TempDir::new();
        let data = dir.path().join("data");
        let run_as = is_root().then_some("postgres");
        if let Some(user) = run_as {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the cluster directory");
        }
        let cluster = Cluster {
            bin,
            data,
            port: free_port(),
            run_as,
            _dir: dir,
        };
        let data = cluster.data.to_str().unwrap().to_string();
        cluster.tool(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        cluster.start();
        Some(cluster)
    }

    fn tool(&self, name: &str, args: &[&str]) {
        let program = self.bin.join(name);
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let output = command.args(args).output().expect("running a server tool");
        assert!(
            output.status.success(),
            "{name} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start(&self) {
        let data = self.data.to_str().unwrap();
        let log = self.data.with_file_name("server.log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=on",
            self.port
        );
        self.tool(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// As a crash: no shutdown checkpoint, recovery replays the WAL.
    fn stop_immediately(&self) {
        self.tool(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(match self.run_as {
            Some(_) => "runuser".into(),
            None => self.bin.join("pg_ctl"),
        })
        .args(match self.run_as {
            Some(user) => vec![
                "-u".to_string(),
                user.to_string(),
                "--".to_string(),
                self.bin.join("pg_ctl").to_string_lossy().into_owned(),
            ],
            None => Vec::new(),
        })
        .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
        .output();
    }
}

/// The directory holding `initdb` and `pg_ctl`: `PG_BIN`, else `PATH`.
fn find_bin() -> Option<PathBuf> {
    let candidates = std::env::var_os("PG_BIN")
        .map(|p| vec![PathBuf::from(p)])
        .unwrap_or_else(|| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default()
        });
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .map(|dir| std::fs::canonicalize(dir.join("initdb")).map_or(dir, |p| parent(&p)))
}

fn parent(path: &Path) -> PathBuf {
    path.parent().unwrap_or(path).to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// What the clients saw: sends answered 201, acks answered 200, and every
/// message id handed out after its ack (there must be none).
#[derive(Default)]
struct Ledger {
    accepted: HashSet<String>,
    acked: HashSet<String>,
    resurrected: Vec<String>,
    /// Sends the hub refused (or could not answer) while the database was away.
    refused: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_under_load_loses_nothing_accepted_and_resurrects_nothing_acked() {
    let Some(cluster) = Cluster::create() else {
        eprintln!("skipped: no initdb/pg_ctl found (set PG_BIN)");
        return;
    };
    let cwd = TempDir::new();
    let url = cluster.url();
    let hub = HubProcess::start(
        cwd.path(),
        &[
            "--storage-backend",
            "postgres",
            "--database-url",
            url.as_str(),
            "--database-max-connections",
            "8",
        ],
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let sender = AgentClient::register(http.clone(), &hub.url, Some("sender"))
        .await
        .unwrap();
    let receiver = AgentClient::register(http.clone(), &hub.url, Some("receiver"))
        .await
        .unwrap();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producing = Arc::new(AtomicBool::new(true));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let client = AgentClient::new(http.clone(), &hub.url, "sender", sender.key.clone());
        producers.push(tokio::spawn(produce(
            client,
            p,
            ledger.clone(),
            producing.clone(),
        )));
    }
    let consuming = Arc::new(AtomicBool::new(true));
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let client = AgentClient::new(http.clone(), &hub.url, "receiver", receiver.key.clone());
        consumers.push(tokio::spawn(consume(
            client,
            ledger.clone(),
            consuming.clone(),
        )));
    }

    tokio::time::sleep(LOAD_PHASE).await;
    let before_crash = ledger.lock().accepted.len();
    tokio::task::block_in_place(|| cluster.stop_immediately());
    // The hub stays up while its database is away; its requests fail meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| cluster.start());
    let restarted = Instant::now();
    tokio::time::sleep(LOAD_PHASE).await;
    producing.store(false, Ordering::SeqCst);
    for p in producers {
        p.await.unwrap();
    }
    let (accepted_after, refused) = {
        let l = ledger.lock();
        (l.accepted.len(), l.refused)
    };
    assert!(refused > 0, "the outage was seen by the hub's clients");
    assert!(
        before_crash > 0 && accepted_after > before_crash,
        "sends were accepted before the crash ({before_crash}) and after the restart \
         ({accepted_after} in all): the hub recovered without a restart"
    );

    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let (missing, resurrected) = {
            let l = ledger.lock();
            (
                l.accepted.difference(&l.acked).count(),
                l.resurrected.clone(),
            )
        };
        assert!(
            resurrected.is_empty(),
            "handed out again after an ack: {resurrected:?}"
        );
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} accepted messages never acked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    consuming.store(false, Ordering::SeqCst);
    for c in consumers {
        c.await.unwrap();
    }
    let l = ledger.lock();
    assert!(l.resurrected.is_empty(), "resurrected: {:?}", l.resurrected);
    println!(
        "postgres restart: {} accepted ({before_crash} before the crash), {refused} refused \
         during the outage, {} acked, 0 resurrected; all acked {:.1} s after the restart",
        l.accepted.len(),
        l.acked.len(),
        restarted.elapsed().as_secs_f64()
    );
}

/// Sends until told to stop; a 201 is a promise the message is stored.
/// Failures while the database is away are expected and not retried.
async fn produce(client: AgentClient, p: usize, ledger: Arc<Mutex<Ledger>>, on: Arc<AtomicBool>) {
    let mut n = 0;
    while on.load(Ordering::SeqCst) {
        n += 1;
        let envelope = client.envelope("receiver", "load", json!({"p": p, "n": n}));
        let id = envelope["id"].as_str().unwrap().to_string();
        match client.send("receiver", &envelope).await {
            Ok(r) if r.status() == 201 => {
                ledger.lock().accepted.insert(id);
            }
            Ok(r) => {
                assert!(
                    r.status().is_server_error(),
                    "a refused send is the database's absence, got {}",
                    r.status()
                );
                ledger.lock().refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {
                ledger.lock().refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Pulls and batch-acks until told to stop. A short visibility timeout
/// brings back what an ack lost in the outage left leased.
async fn consume(client: AgentClient, ledger: Arc<Mutex<Ledger>>, on: Arc<AtomicBool>) {
    while on.load(Ordering::SeqCst) {
        let pulled = client
            .pull(&json!({"max_messages": 20, "wait_sec": 1, "visibility_timeout": 2}))
            .await;
        let body: Value = match pulled {
            Ok(r) if r.status() == 200 => r.json().await.unwrap(),
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut acks = Vec::new();
        for m in body["messages"].as_array().unwrap() {
            let id = m["message_id"].as_str().unwrap().to_string();
            {
                let mut l = ledger.lock();
                if l.acked.contains(&id) {
                    l.resurrected.push(id.clone());
                }
            }
            let lease = m["lease_id"].as_str().unwrap().to_string();
            acks.push(json!({"message_id": id, "lease_id": lease}));
        }
        if acks.is_empty() {
            continue;
        }
        let acked = client
            .request(
                reqwest::Method::POST,
                &client.agent_path("inbox/ack"),
                Some(&json!({ "acks": acks })),
            )
            .send()
            .await;
        let Ok(response) = acked else { continue };
        if response.status() != 200 {
            continue;
        }
        let body: Value = response.json().await.unwrap();
        let mut l = ledger.lock();
        for result in body["results"].as_array().unwrap() {
            if result["ok"] == true {
                l.acked
                    .insert(result["message_id"].as_str().unwrap().to_string());
            }
        }
    }
}
