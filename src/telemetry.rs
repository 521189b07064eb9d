//! Logs as JSON lines in the seed's shape: `{"timestamp","level","message","data":{...}}`.
//!
//! Every `tracing` event becomes one line on stdout; its `message` is the event's message and
//! its other fields go into `data` (field names converted to the seed's camelCase). The level
//! comes from `LOG_LEVEL`. Tokens are never passed to log events: request paths are logged
//! without their query string.
//!
//! Lines are handed to a dedicated writer thread (tracing-appender's non-blocking writer), so a
//! worker never waits on stdout: if the log pipe or journald stalls, up to
//! [`LOG_BUFFER_LINES`] lines queue and further lines are dropped rather than stalling every
//! connection (and tripping the systemd watchdog). The queue is flushed when the guard that
//! [`init`] returns is dropped, at the end of a normal exit.
//!
//! Guarantees: each event is one whole line, written in one write, so lines never interleave;
//! logging never makes a worker wait on stdout.
//! Not guaranteed / not here: that every line is written (overflow is dropped silently; queued
//! lines are lost on an exit that skips the guard, e.g. `std::process::exit`); a second [`init`]
//! keeps the first logger.

use std::io::Write;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::protocol::timestamp;

/// Lines that may wait for the writer thread before new ones are dropped.
pub const LOG_BUFFER_LINES: usize = 100_000;

struct JsonLines {
    out: NonBlocking,
}

#[derive(Default)]
struct Fields {
    message: String,
    data: Map<String, Value>,
}

fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.data.insert(camel(field.name()), Value::String(text));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.data
                .insert(camel(field.name()), Value::String(value.to_string()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.data.insert(camel(field.name()), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.data.insert(camel(field.name()), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let rounded = (value * 1000.0).round() / 1000.0;
        self.data.insert(camel(field.name()), Value::from(rounded));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.data.insert(camel(field.name()), Value::from(value));
    }
}

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        let line = serde_json::json!({
            "timestamp": timestamp::now(),
            "level": level,
            "message": fields.message,
            "data": Value::Object(fields.data),
        });
        // One write per line: the writer thread receives whole lines, never interleaved.
        let mut text = line.to_string();
        text.push('\n');
        let _ = self.out.clone().write_all(text.as_bytes());
    }
}

/// The filter for a `LOG_LEVEL` value (already validated).
pub fn level_filter(level: &str) -> LevelFilter {
    match level.to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "warn" => LevelFilter::WARN,
        "error" => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    }
}

/// Installs the JSON-lines logger for the process. Keep the guard until exit: dropping it
/// flushes the lines still queued.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(level: &str) -> WorkerGuard {
    let (out, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("log")
        .finish(std::io::stdout());
    let _ = tracing_subscriber::registry()
        .with(JsonLines { out }.with_filter(level_filter(level)))
        .try_init();
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_become_camel_case() {
        assert_eq!(camel("user_id"), "userId");
        assert_eq!(camel("chat_count"), "chatCount");
        assert_eq!(camel("port"), "port");
    }
}
