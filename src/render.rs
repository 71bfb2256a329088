//! Building const metric families on each scrape, and encoding them.
//!
//! Collectors never keep Prometheus counters of their own: every value is read from the
//! kernel at scrape time and emitted as-is, so a restart of the exporter changes nothing.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

/// One metric family with a fixed list of label names.
pub struct Family {
    inner: MetricFamily,
    kind: MetricType,
    labels: &'static [&'static str],
}

impl Family {
    fn new(kind: MetricType, name: &str, help: &str, labels: &'static [&'static str]) -> Family {
        let mut inner = MetricFamily::default();
        inner.set_name(name.to_owned());
        inner.set_help(help.to_owned());
        inner.set_field_type(kind);
        Family {
            inner,
            kind,
            labels,
        }
    }

    pub fn counter(name: &str, help: &str, labels: &'static [&'static str]) -> Family {
        Family::new(MetricType::COUNTER, name, help, labels)
    }

    pub fn gauge(name: &str, help: &str, labels: &'static [&'static str]) -> Family {
        Family::new(MetricType::GAUGE, name, help, labels)
    }

    /// Adds one sample; `values` pairs up with the family's label names in order.
    pub fn push(&mut self, values: &[&str], value: f64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.inner.name());
        let pairs = self
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut p = LabelPair::default();
                p.set_name((*name).to_owned());
                p.set_value((*value).to_owned());
                p
            })
            .collect();
        let mut m = Metric::from_label(pairs);
        match self.kind {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.inner.mut_metric().push(m);
    }

    pub fn is_empty(&self) -> bool {
        self.inner.get_metric().is_empty()
    }

    pub fn name(&self) -> &str {
        self.inner.name()
    }

    pub fn into_inner(self) -> MetricFamily {
        self.inner
    }
}

/// Encodes families in the text format 0.0.4, sorted by name; empty families are left out
/// (the format has no way to say "no samples").
pub fn encode_text(mut families: Vec<MetricFamily>) -> Vec<u8> {
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::with_capacity(64 * 1024);
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        // Only reachable through a bug in a collector (an invalid name); say which.
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}
