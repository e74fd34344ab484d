//! Test fixtures shared by the storage tests: a throwaway PostgreSQL schema
//! per test and a throwaway directory per SQLite database.
//!
//! PostgreSQL is the real server (127.0.0.1:5432, trust auth, database
//! `test`, or `ADMP_TEST_DATABASE_URL`); each fixture creates its own schema
//! with a random name, so tests running in parallel, and CI runs sharing the
//! server, never see each other's tables. The schema is dropped afterwards.

use std::path::{Path, PathBuf};

use admp::store::scratch::ScratchSchema;

/// The database the PostgreSQL tests create their schemas in.
pub fn postgres_admin_url() -> String {
    std::env::var("ADMP_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema of its own in the test database (dropped even when the test fails).
pub struct PgSchema(ScratchSchema);

impl PgSchema {
    /// Creates `admp_test_<random>`; panics with a hint when the server is not running.
    pub async fn create() -> PgSchema {
        let admin_url = postgres_admin_url();
        let schema = ScratchSchema::create(&admin_url, "admp_test")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {admin_url} is needed by the storage tests ({e}); start it with \
                     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
                )
            });
        PgSchema(schema)
    }

    /// `DATABASE_URL` whose connections work inside this schema.
    pub fn url(&self) -> String {
        self.0.url()
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        self.0
            .drop_schema()
            .await
            .expect("dropping the test schema");
    }
}

/// A directory removed (with its contents) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory under the system temp dir.
    pub fn new() -> TempDir {
        let path =
            std::env::temp_dir().join(format!("admp-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `DATABASE_URL` of a SQLite file in this directory (created on first open).
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.0.join("admp.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An `admp serve` child process, killed (SIGKILL) when dropped.
pub struct HubProcess {
    child: std::process::Child,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
}

impl HubProcess {
    /// Starts the `admp` binary with `args` after `serve` on 127.0.0.1, port 0
    /// (the OS picks a free port), and waits, bounded, until it logs the address
    /// it listens on. The working directory is `cwd`, so no `.env` of the
    /// repository leaks in, and the environment is cleared for the same reason.
    /// Rate limits are off: these hubs carry load tests from one client
    /// address, which the limiter would (rightly) throttle.
    pub fn start(cwd: &Path, args: &[&str]) -> HubProcess {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        let mut child = Command::new(env!("CARGO_BIN_EXE_admp"))
            .arg("serve")
            .args(["--host", "127.0.0.1", "--port", "0", "--log-format", "json"])
            .args(["--rate-limit-enabled", "false"])
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .env("RUST_LOG", "warn,admp::server=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning admp serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log until the process exits, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if record["fields"]["message"] == "admp hub listening" {
                    let addr = record["fields"]["addr"].as_str().unwrap_or_default();
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(addr) => HubProcess {
                child,
                url: format!("http://{addr}"),
            },
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("admp serve did not report its address ({e}); exit: {status:?}");
            }
        }
    }

    /// SIGKILL: no graceful shutdown, no flush, as a crash or OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
