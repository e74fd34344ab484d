//! `admp export`, `admp import` and `admp migrate`: move agents and messages
//! between backends without loss (see docs/MIGRATION.md).

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;

use crate::config::Config;
use crate::store::Store;
use crate::store::transfer::{self, ImportReport};

/// Where records come from or go to: a running hub (export only) or a storage URL.
pub enum Location {
    /// `http(s)://host:port` of a running hub, read through `GET /api/admin/export`.
    Hub(String),
    /// A storage URL opened directly (`sqlite://…`, `postgres://…`, `memory://`).
    Storage(String),
}

impl Location {
    /// Classifies a command-line location.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("http://") || s.starts_with("https://") {
            Location::Hub(s.trim_end_matches('/').to_string())
        } else {
            Location::Storage(s.to_string())
        }
    }
}

/// Opens the store behind a storage URL with the default settings.
pub async fn open_storage(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    crate::server::open_store_url(url, &Config::default()).await
}

/// Reads every NDJSON line of an export from `source`.
pub async fn read_export(source: &Location, api_key: Option<&str>) -> anyhow::Result<Vec<String>> {
    match source {
        Location::Hub(base) => {
            let key =
                api_key.context("exporting from a running hub needs --api-key (the master key)")?;
            let response = reqwest::Client::new()
                .get(format!("{base}/api/admin/export"))
                .header("x-api-key", key)
                .send()
                .await
                .context("calling the hub's export endpoint")?;
            let status = response.status();
            let text = response.text().await?;
            anyhow::ensure!(
                status.is_success(),
                "hub refused the export: {status} {text}"
            );
            Ok(text.lines().map(str::to_string).collect())
        }
        Location::Storage(url) => {
            let store = open_storage(url).await?;
            let mut lines = Vec::new();
            let mut stream = std::pin::pin!(transfer::export(store));
            while let Some(record) = stream.next().await {
                let line = transfer::to_line(&record?);
                lines.push(line.trim_end().to_string());
            }
            Ok(lines)
        }
    }
}

/// Writes an export to `out` (a file, or stdout when `None`).
pub fn write_export(lines: &[String], out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut writer: Box<dyn Write> = match out {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    for line in lines {
        writeln!(writer, "{line}")?;
    }
    writer.flush()?;
    Ok(())
}

/// Reads an export file (or stdin when `None`).
pub fn read_file(input: Option<&std::path::Path>) -> anyhow::Result<Vec<String>> {
    let reader: Box<dyn BufRead> = match input {
        Some(path) => Box::new(BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(BufReader::new(std::io::stdin())),
    };
    Ok(reader.lines().collect::<Result<_, _>>()?)
}

/// Imports `lines` into the storage at `target`.
pub async fn import_into(
    target: &str,
    lines: Vec<String>,
    merge: bool,
) -> anyhow::Result<ImportReport> {
    let store = open_storage(target).await?;
    Ok(transfer::import(store.as_ref(), lines.into_iter().map(Ok), merge).await?)
}
