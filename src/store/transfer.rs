//! Export and import of a whole store as NDJSON, the path between backends
//! (`admp export`, `admp import`, `admp migrate`, `GET /api/admin/export`).
//!
//! The stream is one JSON object per line: a header, every agent, then every
//! message, then a trailer with the counts. Import inserts each record as is
//! (state, attempts, lease, idempotency key) and skips ids the target already
//! has, so running it twice duplicates nothing and an interrupted run can
//! simply be run again.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::{Agent, Message, Store, StoreError};

/// Records fetched per store call while exporting.
pub const EXPORT_PAGE: usize = 500;
/// Format name written in the header.
pub const FORMAT: &str = "admp-export";
/// Format version written in the header.
pub const FORMAT_VERSION: u32 = 1;

/// One line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// First line: what follows.
    Header {
        format: String,
        version: u32,
    },
    Agent(Box<Agent>),
    Message(Box<Message>),
    /// Last line: how many records came before, to detect a truncated file.
    Trailer {
        agents: u64,
        messages: u64,
    },
}

/// Why an export or import stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("line {line}: {message}")]
    Format { line: usize, message: String },
    #[error("the target already holds data; pass --merge to import into it anyway")]
    TargetNotEmpty,
    #[error("verification failed: {0}")]
    Verification(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub agents_inserted: u64,
    pub agents_skipped: u64,
    pub messages_inserted: u64,
    pub messages_skipped: u64,
}

/// Streams every record of `store` as [`Record`]s, paging through it.
pub fn export(store: Arc<dyn Store>) -> impl Stream<Item = Result<Record, StoreError>> + Send {
    enum Phase {
        Header,
        Agents(Option<String>),
        Messages(Option<String>),
        Trailer,
        Done,
    }
    struct State {
        phase: Phase,
        agents: u64,
        messages: u64,
    }
    let start = State {
        phase: Phase::Header,
        agents: 0,
        messages: 0,
    };
    futures::stream::unfold(start, move |mut state| {
        let store = store.clone();
        async move {
            let batch: Result<Vec<Record>, StoreError> =
                match std::mem::replace(&mut state.phase, Phase::Done) {
                    Phase::Header => {
                        state.phase = Phase::Agents(None);
                        Ok(vec![Record::Header {
                            format: FORMAT.into(),
                            version: FORMAT_VERSION,
                        }])
                    }
                    Phase::Agents(after) => {
                        match store.export_agents(after.as_deref(), EXPORT_PAGE).await {
                            Ok(page) => {
                                state.agents += page.len() as u64;
                                state.phase = match page.last() {
                                    Some(last) if page.len() == EXPORT_PAGE => {
                                        Phase::Agents(Some(last.agent_id.clone()))
                                    }
                                    _ => Phase::Messages(None),
                                };
                                Ok(page
                                    .into_iter()
                                    .map(|a| Record::Agent(Box::new(a)))
                                    .collect())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Phase::Messages(after) => {
                        match store.export_messages(after.as_deref(), EXPORT_PAGE).await {
                            Ok(page) => {
                                state.messages += page.len() as u64;
                                state.phase = match page.last() {
                                    Some(last) if page.len() == EXPORT_PAGE => {
                                        Phase::Messages(Some(last.id.clone()))
                                    }
                                    _ => Phase::Trailer,
                                };
                                Ok(page
                                    .into_iter()
                                    .map(|m| Record::Message(Box::new(m)))
                                    .collect())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Phase::Trailer => Ok(vec![Record::Trailer {
                        agents: state.agents,
                        messages: state.messages,
                    }]),
                    Phase::Done => return None,
                };
            let items: Vec<Result<Record, StoreError>> = match batch {
                Ok(records) => records.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            Some((futures::stream::iter(items), state))
        }
    })
    .flatten()
}

/// Renders one record as an NDJSON line (with the newline).
pub fn to_line(record: &Record) -> String {
    let mut line = serde_json::to_string(record).unwrap_or_default();
    line.push('\n');
    line
}

/// Imports NDJSON `lines` into `store`. Refuses a non-empty target unless
/// `merge`; checks the trailer counts and that every record is present at the end.
pub async fn import<I>(
    store: &dyn Store,
    lines: I,
    merge: bool,
) -> Result<ImportReport, TransferError>
where
    I: IntoIterator<Item = std::io::Result<String>>,
{
    if !merge {
        let stats = store.stats().await?;
        if stats.agents_total > 0 || stats.messages.total > 0 {
            return Err(TransferError::TargetNotEmpty);
        }
    }
    let mut report = ImportReport::default();
    let mut seen_agents = Vec::new();
    let mut seen_messages = Vec::new();
    let mut trailer = None;
    let mut header = false;
    for (index, line) in lines.into_iter().enumerate() {
        let line_no = index + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line).map_err(|e| TransferError::Format {
            line: line_no,
            message: e.to_string(),
        })?;
        let format_error = |message: &str| TransferError::Format {
            line: line_no,
            message: message.to_string(),
        };
        match record {
            Record::Header { format, version } => {
                if format != FORMAT || version != FORMAT_VERSION {
                    return Err(format_error("unknown export format or version"));
                }
                header = true;
            }
            _ if !header => return Err(format_error("missing header line")),
            Record::Agent(agent) => {
                seen_agents.push(agent.agent_id.clone());
                if store.import_agent(*agent).await? {
                    report.agents_inserted += 1;
                } else {
                    report.agents_skipped += 1;
                }
            }
            Record::Message(message) => {
                seen_messages.push(message.id.clone());
                if store.import_message(*message).await? {
                    report.messages_inserted += 1;
                } else {
                    report.messages_skipped += 1;
                }
            }
            Record::Trailer { agents, messages } => trailer = Some((agents, messages)),
        }
    }
    let Some((agents, messages)) = trailer else {
        return Err(TransferError::Verification(
            "no trailer: the export is truncated".into(),
        ));
    };
    if (agents, messages) != (seen_agents.len() as u64, seen_messages.len() as u64) {
        return Err(TransferError::Verification(format!(
            "trailer says {agents} agents and {messages} messages, the stream held {} and {}",
            seen_agents.len(),
            seen_messages.len()
        )));
    }
    for id in &seen_agents {
        if store.get_agent(id).await?.is_none() {
            return Err(TransferError::Verification(format!(
                "agent {id} missing after import"
            )));
        }
    }
    for id in &seen_messages {
        if store.get_message(id).await?.is_none() {
            return Err(TransferError::Verification(format!(
                "message {id} missing after import"
            )));
        }
    }
    Ok(report)
}
