//! The Logging middleware's spans, as a subscriber sees them: one per call
//! on each side, the worker's joined to the host's, and each call's
//! outcome.
//!
//! A test binary of its own: `spans` installs the process's global
//! subscriber, which every thread without a subscriber of its own logs
//! into (the worker thread's included); each test of `outcomes` sets a
//! subscriber for its thread, where host and worker both run.

mod outcomes;
mod spans;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

type Fields = BTreeMap<String, String>;

/// Keeps every `workerbus.call` span's fields, as recorded, in the order
/// the spans began (with their ids, which a later span may reuse).
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<(u64, Fields)>>>,
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _cx: Context<'_, S>) {
        if attrs.metadata().name() == "workerbus.call" {
            let mut fields = Fields::new();
            attrs.record(&mut Visitor(&mut fields));
            self.spans.lock().unwrap().push((id.into_u64(), fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _cx: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap();
        let latest = spans
            .iter_mut()
            .rev()
            .find(|(span, _)| *span == id.into_u64());
        if let Some((_, fields)) = latest {
            values.record(&mut Visitor(fields));
        }
    }
}

impl Recorder {
    /// The outcomes of the spans of `side`, in the order they began.
    fn outcomes(&self, side: &str) -> Vec<String> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .map(|(_, fields)| fields)
            .filter(|fields| fields.get("side").map(String::as_str) == Some(side))
            .map(|fields| fields.get("outcome").cloned().unwrap_or_default())
            .collect()
    }
}
