//! Building const metric families on each scrape, and encoding them.
//!
//! Families are built afresh on every scrape: kernel counters are emitted as read, and
//! the few totals the exporter accumulates itself (OVS drop flows, the conntrack_invalid
//! classifier, the widened 32-bit conntrack statistics) live in their collectors' state,
//! never in Prometheus counter objects.
//!
//! Families hold their samples compactly (label values in one string) and become
//! `prometheus` protobuf-model families only one at a time, while being encoded: with
//! thousands of devices the model objects would otherwise dominate the exporter's memory.

use prometheus::proto::{self, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family with a fixed list of label names.
#[derive(Debug, Clone)]
pub struct Family {
    name: String,
    help: String,
    kind: Kind,
    labels: &'static [&'static str],
    /// Every sample's label values, concatenated; `ends` marks where each value stops.
    values: String,
    ends: Vec<u32>,
    samples: Vec<f64>,
}

impl Family {
    fn new(kind: Kind, name: &str, help: &str, labels: &'static [&'static str]) -> Family {
        Family {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            labels,
            values: String::new(),
            ends: Vec::new(),
            samples: Vec::new(),
        }
    }

    pub fn counter(name: &str, help: &str, labels: &'static [&'static str]) -> Family {
        Family::new(Kind::Counter, name, help, labels)
    }

    pub fn gauge(name: &str, help: &str, labels: &'static [&'static str]) -> Family {
        Family::new(Kind::Gauge, name, help, labels)
    }

    /// A counter family with one unlabelled sample.
    pub fn single_counter(name: &str, help: &str, value: f64) -> Family {
        let mut f = Family::counter(name, help, &[]);
        f.push(&[], value);
        f
    }

    /// A gauge family with one unlabelled sample.
    pub fn single_gauge(name: &str, help: &str, value: f64) -> Family {
        let mut f = Family::gauge(name, help, &[]);
        f.push(&[], value);
        f
    }

    /// Adds one sample; `values` pairs up with the family's label names in order.
    pub fn push(&mut self, values: &[&str], value: f64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        for v in values {
            self.values.push_str(v);
            self.ends.push(self.values.len() as u32);
        }
        self.samples.push(value);
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The protobuf-model family the encoder takes.
    fn to_proto(&self) -> MetricFamily {
        let mut mf = MetricFamily::default();
        mf.set_name(self.name.clone());
        mf.set_help(self.help.clone());
        mf.set_field_type(match self.kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
        });
        let n = self.labels.len();
        let mut start = 0usize;
        let mut ends = self.ends.iter();
        let metrics = mf.mut_metric();
        metrics.reserve(self.samples.len());
        for &value in &self.samples {
            let pairs = self
                .labels
                .iter()
                .map(|name| {
                    let end = ends.next().map_or(start, |&e| e as usize);
                    let mut p = LabelPair::default();
                    p.set_name((*name).to_owned());
                    p.set_value(self.values.get(start..end).unwrap_or_default().to_owned());
                    start = end;
                    p
                })
                .collect::<Vec<_>>();
            debug_assert_eq!(pairs.len(), n);
            let mut m = Metric::from_label(pairs);
            match self.kind {
                Kind::Counter => {
                    let mut c = proto::Counter::default();
                    c.set_value(value);
                    m.set_counter(c);
                }
                Kind::Gauge => {
                    let mut g = proto::Gauge::default();
                    g.set_value(value);
                    m.set_gauge(g);
                }
            }
            metrics.push(m);
        }
        mf
    }
}

/// Encodes families in the text format 0.0.4, sorted by name, into `out`. Empty families
/// are left out (the format has no way to say "no samples").
pub fn encode_text(mut families: Vec<Family>, out: &mut Vec<u8>) {
    families.retain(|f| !f.is_empty());
    families.sort_by(|a, b| a.name.cmp(&b.name));
    let encoder = TextEncoder::new();
    for f in &families {
        if let Err(e) = encoder.encode(&[f.to_proto()], out) {
            // Only reachable through a bug in a collector (an invalid name); say which.
            tracing::error!(family = %f.name, error = %e, "encoding metrics failed");
        }
    }
}

/// Appends families the `prometheus` crate built itself (its process collector) in the
/// same text format.
pub fn encode_proto(families: &[MetricFamily], out: &mut Vec<u8>) {
    if let Err(e) = TextEncoder::new().encode(families, out) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_sorted_families_with_escaped_labels() {
        let mut g = Family::gauge("b_info", "Info.", &["device", "kind"]);
        g.push(&["tap0", "tun"], 1.0);
        g.push(&["we\"ird\\dev", ""], 1.0);
        let mut c = Family::counter("a_total", "Things.", &[]);
        c.push(&[], 42.0);
        let empty = Family::counter("c_total", "Never.", &["x"]);
        let mut out = Vec::new();
        encode_text(vec![g, empty, c], &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total 42\n\
             # HELP b_info Info.\n# TYPE b_info gauge\n\
             b_info{device=\"tap0\",kind=\"tun\"} 1\n\
             b_info{device=\"we\\\"ird\\\\dev\",kind=\"\"} 1\n"
        );
    }
}
