//! Reading the text exposition format back: what `diagnose` analyses, whether it came from
//! this host's collectors or from a running exporter's `/metrics`.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {what}")]
pub struct ParseError {
    pub line: usize,
    pub what: String,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `{k="v",...}` at the start of `s`; returns the labels and what follows.
fn labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut out = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected '{'")?;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((out, after));
        }
        let (key, after) = rest.split_once('=').ok_or("label without '='")?;
        let key = key.trim();
        if !valid_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut chars = after
            .strip_prefix('"')
            .ok_or("label value not quoted")?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        out.insert(key.to_owned(), value);
        rest = after.get(end + 2..).unwrap_or_default();
    }
}

fn value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Every sample in a text exposition; anything that is not one is an error naming the line.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |what: String| ParseError { line: i + 1, what };
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let (name, rest) = line.split_at(name_end);
        if !valid_name(name) {
            let shown: String = line.chars().take(40).collect();
            return Err(err(format!("not a metric sample: {shown:?}")));
        }
        let (labels, rest) = if rest.starts_with('{') {
            labels(rest).map_err(err)?
        } else {
            (BTreeMap::new(), rest)
        };
        let mut fields = rest.split_whitespace();
        let v = fields
            .next()
            .and_then(value)
            .ok_or_else(|| err(format!("{name}: missing or bad value")))?;
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value: v,
        });
    }
    if out.is_empty() {
        return Err(ParseError {
            line: 0,
            what: "no metric samples at all".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_escapes_and_specials() {
        let s = parse(
            "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
             b{device=\"we\\\"ird\\\\x\",role=\"vm\"} 1.5e3 1700000000\nc{} +Inf\nd NaN\n",
        )
        .unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("device"), "we\"ird\\x");
        assert_eq!(s[1].label("role"), "vm");
        assert_eq!(s[1].value, 1500.0);
        assert_eq!(s[2].value, f64::INFINITY);
        assert!(s[3].value.is_nan());
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        assert_eq!(
            parse("<html>\n").unwrap_err().to_string(),
            "line 1: not a metric sample: \"<html>\""
        );
        assert!(parse("a{x=\"1} 2\n").is_err());
        assert!(parse("a{x=1} 2\n").is_err());
        assert!(
            parse("a banana\n")
                .unwrap_err()
                .to_string()
                .contains("bad value")
        );
        assert!(parse("# only comments\n").is_err());
        // Never a panic, whatever the bytes.
        for s in [
            "{",
            "a{",
            "a{=",
            "a{\"",
            "a{b=\"\\",
            "\u{feff}x 1",
            "a{b=\"c\"",
            "é 1",
        ] {
            let _ = parse(s);
        }
    }
}
