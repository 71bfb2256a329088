//! Building const metric families on each scrape, and encoding them.
//!
//! Families are built afresh on every scrape: kernel counters are emitted as read, and
//! the few totals the exporter accumulates itself (OVS drop flows, the conntrack_invalid
//! classifier, the widened 32-bit conntrack statistics) live in their collectors' state,
//! never in Prometheus counter objects.
//!
//! Families hold their samples compactly (label values in one string) and are written
//! straight into the text format, byte for byte what the `prometheus` crate's encoder
//! writes, without its model objects: with thousands of devices those would dominate the
//! exporter's memory and its encoding time.

use prometheus::proto::MetricFamily;
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

    /// Appends the family in the text format 0.0.4, byte for byte what the `prometheus`
    /// crate's `TextEncoder` writes for it (HELP and label values escaped the same way,
    /// values as Rust prints an f64), without building its model objects: a `Metric`
    /// and owned `LabelPair` strings per sample took most of a scrape's encoding time.
    fn write_text(&self, out: &mut Vec<u8>) {
        let name = self.name.as_bytes();
        if !self.help.is_empty() {
            out.extend_from_slice(b"# HELP ");
            out.extend_from_slice(name);
            out.push(b' ');
            escape(&self.help, false, out);
            out.push(b'\n');
        }
        out.extend_from_slice(b"# TYPE ");
        out.extend_from_slice(name);
        out.extend_from_slice(match self.kind {
            Kind::Counter => b" counter\n",
            Kind::Gauge => b" gauge\n",
        });
        let mut start = 0usize;
        let mut ends = self.ends.iter();
        for &value in &self.samples {
            out.extend_from_slice(name);
            let mut separator = b'{';
            for label in self.labels {
                let end = ends.next().map_or(start, |&e| e as usize);
                out.push(separator);
                out.extend_from_slice(label.as_bytes());
                out.extend_from_slice(b"=\"");
                escape(self.values.get(start..end).unwrap_or_default(), true, out);
                out.push(b'"');
                start = end;
                separator = b',';
            }
            if !self.labels.is_empty() {
                out.push(b'}');
            }
            out.push(b' ');
            write_value(value, out);
            out.push(b'\n');
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary: label values from outside
/// (OVSDB, procfs) are bounded.
pub fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

/// Appends `v` with `\` and newline escaped, and `"` too when `quote` (label values).
fn escape(v: &str, quote: bool, out: &mut Vec<u8>) {
    for &b in v.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            _ => out.push(b),
        }
    }
}

/// Appends `v` as f64's Display prints it (`v.to_string()`, what the text encoder writes).
/// Counters and most gauges are whole numbers, which Display prints as integers: below
/// 2^53 they are printed here as integers directly, the same digits faster.
fn write_value(v: f64, out: &mut Vec<u8>) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if v.fract() == 0.0 && v.abs() < EXACT && !(v == 0.0 && v.is_sign_negative()) {
        if v < 0.0 {
            out.push(b'-');
        }
        let mut n = v.abs() as u64;
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            if let Some(d) = digits.get_mut(at) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || at == 0 {
                break;
            }
        }
        out.extend_from_slice(digits.get(at..).unwrap_or_default());
    } else {
        use std::io::Write;
        let _ = write!(out, "{v}");
    }
}

/// Encodes families in the text format 0.0.4, sorted by name, into `out`. Empty families
/// are left out (the format has no way to say "no samples").
pub fn encode_text(mut families: Vec<Family>, out: &mut Vec<u8>) {
    families.retain(|f| !f.is_empty());
    families.sort_by(|a, b| a.name.cmp(&b.name));
    for f in &families {
        if f.name.is_empty() {
            // Only reachable through a bug in a collector; say which.
            tracing::error!(help = %f.help, "encoding metrics failed: a family has no name");
            continue;
        }
        f.write_text(out);
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
    use prometheus::proto::{self, LabelPair, Metric, MetricType};

    /// The protobuf-model family `TextEncoder` takes, built as encode_text did before it
    /// wrote the text itself: the reference the text is compared with.
    fn to_proto(f: &Family) -> MetricFamily {
        let mut mf = MetricFamily::default();
        mf.set_name(f.name.clone());
        mf.set_help(f.help.clone());
        mf.set_field_type(match f.kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
        });
        let n = f.labels.len();
        let mut start = 0usize;
        let mut ends = f.ends.iter();
        let metrics = mf.mut_metric();
        metrics.reserve(f.samples.len());
        for &value in &f.samples {
            let pairs = f
                .labels
                .iter()
                .map(|name| {
                    let end = ends.next().map_or(start, |&e| e as usize);
                    let mut p = LabelPair::default();
                    p.set_name((*name).to_owned());
                    p.set_value(f.values.get(start..end).unwrap_or_default().to_owned());
                    start = end;
                    p
                })
                .collect::<Vec<_>>();
            debug_assert_eq!(pairs.len(), n);
            let mut m = Metric::from_label(pairs);
            match f.kind {
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

    fn reference(families: &[Family]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut sorted: Vec<&Family> = families.iter().filter(|f| !f.is_empty()).collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for f in sorted {
            TextEncoder::new().encode(&[to_proto(f)], &mut out).unwrap();
        }
        out
    }

    #[test]
    fn text_is_what_the_prometheus_encoder_writes() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            42.0,
            0.5,
            -2.25,
            1e-9,
            1.5e300,
            123456789.125,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            9_007_199_254_740_993.0,
            -9_007_199_254_740_991.0,
            1e15,
            1e16,
            1e21,
            1e22,
            u64::MAX as f64,
            18_446_744_073_709_551_615.0,
            0.1 + 0.2,
            1.0 / 3.0,
        ];
        // Counters as the kernel has them, and the neighbours of powers of ten and two.
        let mut x = 1u64;
        while x < u64::MAX / 7 {
            values.extend([x as f64, (x - 1) as f64, (x + 1) as f64, x as f64 + 0.5]);
            x = x * 7 + 3;
        }
        let mut g = Family::gauge(
            "g_bytes",
            "A \\ help\nwith \"quotes\".",
            &["device", "kind"],
        );
        let mut c = Family::counter("c_total", "", &["a"]);
        let mut u = Family::gauge("u", "Unlabelled.", &[]);
        for (i, v) in values.iter().enumerate() {
            let label = ["tap0", "we\"ird\\dev", "new\nline", "", "ünïcödé", "{}=,"][i % 6];
            g.push(&[label, &format!("k{i}")], *v);
            c.push(&[label], *v);
        }
        u.push(&[], 7.0);
        let empty = Family::counter("e_total", "Never.", &["x"]);
        let families = vec![g, c, u, empty];
        let mut out = Vec::new();
        encode_text(families.clone(), &mut out);
        let want = reference(&families);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }

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
