//! Reading an inbox stream (`GET …/inbox/stream`): a minimal Server-Sent
//! Events parser over the response body, as the CLI's `listen`, the
//! benchmark and the tests use it.

use anyhow::Context;
use reqwest::Method;

use super::AgentClient;

/// Largest event the reader buffers (a message event holds one envelope,
/// bounded by the hub's `MAX_MESSAGE_SIZE_KB`, at most 64 MiB).
const MAX_EVENT_BYTES: usize = 65 * 1024 * 1024;

/// One item of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    /// An event: its type (`message` when unnamed), id and data.
    Event {
        event: String,
        id: Option<String>,
        data: String,
    },
    /// A comment line (the hub's heartbeats).
    Comment(String),
}

/// Reads SSE items from a response body as they arrive.
pub struct SseReader {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl SseReader {
    /// Reads `response` (already checked to be a 200 `text/event-stream`).
    pub fn new(response: reqwest::Response) -> Self {
        SseReader {
            response,
            buf: Vec::new(),
        }
    }

    /// The next item; `None` when the hub closed the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseItem>> {
        loop {
            if let Some(end) = block_end(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                let text = String::from_utf8_lossy(&block[..end.0]);
                if let Some(item) = parse_block(&text) {
                    return Ok(Some(item));
                }
                continue;
            }
            let Some(chunk) = self.response.chunk().await.context("reading the stream")? else {
                return Ok(None);
            };
            self.buf.extend_from_slice(&chunk);
            anyhow::ensure!(self.buf.len() <= MAX_EVENT_BYTES, "stream event too large");
        }
    }
}

/// Where the first block ends: (content end, end including the blank line).
fn block_end(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\n\n") {
            Some((i, i + 2))
        } else if buf[i..].starts_with(b"\r\n\r\n") {
            Some((i, i + 4))
        } else {
            None
        }
    })
}

/// One block of lines: an event, or a comment when it holds only comments.
fn parse_block(block: &str) -> Option<SseItem> {
    let (mut event, mut id, mut data, mut comment) = (None, None, Vec::new(), None);
    for line in block.lines() {
        if let Some(text) = line.strip_prefix(':') {
            comment.get_or_insert_with(|| text.trim_start().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_string()),
            "id" => id = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if event.is_none() && id.is_none() && data.is_empty() {
        return comment.map(SseItem::Comment);
    }
    Some(SseItem::Event {
        event: event.unwrap_or_else(|| "message".into()),
        id,
        data: data.join("\n"),
    })
}

impl AgentClient {
    /// Opens this agent's inbox stream; `query` is e.g. `max_in_flight=5`,
    /// `last_event_id` the id of the last event a previous stream delivered.
    pub async fn stream(
        &self,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut path = self.agent_path("inbox/stream");
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let mut request = self
            .request(Method::GET, &path, None)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_into_events_and_comments() {
        assert_eq!(
            parse_block("event: message\nid: a:1\ndata: {\"x\":1}"),
            Some(SseItem::Event {
                event: "message".into(),
                id: Some("a:1".into()),
                data: "{\"x\":1}".into()
            })
        );
        assert_eq!(
            parse_block(": heartbeat"),
            Some(SseItem::Comment("heartbeat".into()))
        );
        assert_eq!(block_end(b"data: x\n\nrest"), Some((7, 9)));
        assert_eq!(block_end(b"data: x\r\n\r\n"), Some((7, 11)));
        assert_eq!(block_end(b"data: x\n"), None);
    }
}
