//! The report as text (tables that fit the terminal, colour only on a terminal) or JSON.

use super::analysis::{Report, Severity};
use std::collections::BTreeMap;

/// How the text is drawn: a terminal gets colour and tables cut to its width.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub colour: bool,
    /// Columns available; None when piped (no limit).
    pub width: Option<usize>,
}

const RED: &str = "\x1b[1;31m";
const GREEN: &str = "\x1b[1;32m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("{code}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Label values may come from a remote exporter: control characters (escape sequences
/// that would drive the terminal) are shown as '?'.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Cuts `s` to `max` characters, marking the cut.
fn cut(s: &str, max: usize) -> String {
    let s = clean(s);
    if chars(&s) <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The offload table's columns.
const OFFLOAD_HEADER: [&str; 8] = [
    "DEVICE",
    "ROLE",
    "RX-CSUM",
    "TX-CSUM",
    "TSO",
    "GSO",
    "GRO",
    "UDP-TNL-CSUM",
];

/// The narrowest a table's first column (device names) is cut to.
const MIN_NAME: usize = 8;

/// A table with a header row; numeric columns (all but the first) right-aligned. When it
/// is wider than the terminal, the first column (device names) gives up the room, then
/// headers wider than their values are cut; when even that does not fit, each row is
/// written as its name and then `HEADER value` pairs, wrapped to the width.
fn table(out: &mut String, style: &Style, header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        out.push_str("  (none)\n");
        return;
    }
    let n = header.len();
    let mut values: Vec<usize> = vec![0; n];
    for r in rows {
        for (w, c) in values.iter_mut().zip(r) {
            *w = (*w).max(chars(c));
        }
    }
    let mut widths: Vec<usize> = header
        .iter()
        .zip(&values)
        .map(|(h, v)| chars(h).max(*v))
        .collect();
    if let Some(limit) = style.width {
        let total = |w: &[usize]| 2 + w.iter().sum::<usize>() + 2 * n.saturating_sub(1);
        let over = total(&widths).saturating_sub(limit);
        if let Some(first) = widths.first_mut() {
            *first = first.saturating_sub(over).max(MIN_NAME.min(*first));
        }
        // Headers give up what their values do not need, the widest first.
        while total(&widths) > limit {
            let Some((i, _)) = widths
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(i, w)| **w > values[*i].max(3))
                .max_by_key(|(_, w)| **w)
            else {
                break;
            };
            widths[i] -= 1;
        }
        if total(&widths) > limit {
            return stacked(out, style, header, rows, limit);
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = String::from(" ");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let c = cut(c, *w);
            l.push(' ');
            if i == 0 {
                l.push_str(&format!("{c:<w$}"));
            } else {
                l.push_str(&format!(" {c:>w$}"));
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    let head = line(header.iter().map(|h| (*h).to_owned()).collect());
    out.push_str(&style.paint(BOLD, head.trim_end()));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
    }
}

/// A table too wide for the terminal as lines: each row's name, then its columns as
/// `HEADER value` pairs wrapped under it.
fn stacked(out: &mut String, style: &Style, header: &[&str], rows: &[Vec<String>], width: usize) {
    for r in rows {
        let name = r.first().map_or("", String::as_str);
        out.push_str("  ");
        out.push_str(&style.paint(BOLD, &cut(name, width.saturating_sub(2))));
        out.push('\n');
        let pairs: Vec<String> = header
            .iter()
            .zip(r)
            .skip(1)
            .map(|(h, v)| format!("{h}\u{a0}{}", clean(v)))
            .collect();
        let mut text = String::new();
        wrap(&mut text, "    ", &pairs.join(", "), Some(width));
        out.push_str(&text.replace('\u{a0}', " "));
    }
}

/// Wraps `text` to the terminal width: the first line after `first`, the rest indented
/// to line up with it.
fn wrap(out: &mut String, first: &str, text: &str, width: Option<usize>) {
    let Some(width) = width else {
        out.push_str(first);
        out.push_str(&clean(text));
        out.push('\n');
        return;
    };
    // `first` may carry colour codes: indent by what shows.
    let shown = strip_escapes(first);
    let indent = " ".repeat(chars(&shown));
    let room = width.saturating_sub(chars(&shown)).max(10);
    let mut prefix = first.to_owned();
    let mut line = String::new();
    let text = clean(text);
    for word in text.split(' ') {
        if !line.is_empty() && chars(&line) + 1 + chars(word) > room {
            out.push_str(&prefix);
            out.push_str(&line);
            out.push('\n');
            line.clear();
            prefix = indent.clone();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&prefix);
        out.push_str(&line);
        out.push('\n');
    }
}

/// `s` without its SGR colour codes: what a terminal shows.
pub fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn on(v: Option<bool>) -> String {
    match v {
        Some(true) => "on".into(),
        Some(false) => "off".into(),
        None => "-".into(),
    }
}

/// What the node runs, in words, from `packetpath_node_info`'s labels (what a bug report
/// needs): the parts the node has.
fn node_line(l: &BTreeMap<String, String>) -> String {
    let get = |k: &str| l.get(k).map_or("", String::as_str);
    let mut parts = vec![match (get("kernel_release"), get("kernel_version")) {
        ("", _) => "kernel unknown".to_owned(),
        (release, "") => format!("kernel {release}"),
        (release, build) => format!("kernel {release} ({build})"),
    }];
    match (
        get("ovs_module"),
        get("ovs_module_srcversion"),
        get("ovs_module_version"),
    ) {
        ("", _, _) => parts.push("no openvswitch module loaded".to_owned()),
        (origin, src, ver) => {
            let mut m = format!("openvswitch module {}", origin.replace('_', "-"));
            for (k, v) in [("version", ver), ("srcversion", src)] {
                if !v.is_empty() {
                    m.push_str(&format!(" {k} {v}"));
                }
            }
            parts.push(m);
        }
    }
    if !get("ovs_version").is_empty() {
        parts.push(format!("Open vSwitch {}", get("ovs_version")));
    }
    if !get("ovn_chassis").is_empty() || !get("ovn_version").is_empty() {
        let v = get("ovn_version");
        let v = if v.is_empty() { "version unknown" } else { v };
        parts.push(format!("OVN {v} (chassis {})", get("ovn_chassis")));
    }
    parts.join(", ")
}

pub fn text(r: &Report, style: &Style) -> String {
    let mut o = String::new();
    let iv = format!("{} s", (r.interval_seconds * 10.0).round() / 10.0);
    o.push_str(&style.paint(
        BOLD,
        &format!("packetpath diagnose: {}, two samples {iv} apart", r.source),
    ));
    o.push_str("\n\n");

    let sources: Vec<String> = r
        .sources
        .iter()
        .map(|s| {
            let state = if s.ok { "ok" } else { "unavailable" };
            match &s.note {
                Some(n) => format!("{} {state} ({n})", s.collector),
                None => format!("{} {state}", s.collector),
            }
        })
        .collect();
    wrap(&mut o, "Sources: ", &sources.join(", "), style.width);
    if let Some(node) = &r.node {
        wrap(&mut o, "Node: ", &node_line(node), style.width);
    }
    o.push('\n');

    o.push_str(&style.paint(BOLD, &format!("Tunnel to VM, packets in {iv}")));
    o.push('\n');
    let rows: Vec<Vec<String>> = r
        .tunnels
        .iter()
        .chain(&r.vm_ports)
        .map(|p| {
            vec![
                p.display(),
                p.role.clone(),
                p.received.to_string(),
                p.transmitted.to_string(),
                p.receive_dropped.to_string(),
                p.transmit_dropped.to_string(),
                p.receive_errors.to_string(),
                p.transmit_errors.to_string(),
            ]
        })
        .collect();
    table(
        &mut o,
        style,
        &[
            "DEVICE", "ROLE", "RECEIVED", "SENT", "RX-DROP", "TX-DROP", "ERRORS",
        ],
        &rows,
    );
    wrap(
        &mut o,
        "  ",
        "(a tunnel receives what arrives from other hypervisors; a VM port sends what it delivers to the VM)",
        style.width,
    );
    o.push('\n');

    o.push_str(&style.paint(BOLD, "Datapath flows that dropped packets"));
    o.push('\n');
    let rows: Vec<Vec<String>> = r
        .drops
        .iter()
        .map(|x| vec![x.flow(), x.reason.clone(), x.packets.to_string()])
        .collect();
    table(&mut o, style, &["FLOW", "REASON", "PACKETS"], &rows);
    o.push('\n');

    o.push_str(&style.paint(BOLD, "VM ports that lost packets on their way in"));
    o.push('\n');
    if r.vm_attribution {
        let mut rows: Vec<Vec<String>> = Vec::new();
        for v in &r.vm_losses {
            for k in &v.invalid {
                rows.push(vec![
                    v.display(),
                    "invalid in its conntrack zone".to_owned(),
                    k.reason.clone(),
                    k.packets.to_string(),
                ]);
            }
            for k in &v.dropped {
                rows.push(vec![
                    v.display(),
                    format!("dropped, from {}", k.from_role),
                    k.reason.clone(),
                    k.packets.to_string(),
                ]);
            }
        }
        for k in &r.unattributed_drops {
            rows.push(vec![
                "(no single VM port)".to_owned(),
                format!("dropped, from {}", k.from_role),
                k.reason.clone(),
                k.packets.to_string(),
            ]);
        }
        table(
            &mut o,
            style,
            &["VM PORT", "COUNTED AS", "REASON", "PACKETS"],
            &rows,
        );
        wrap(
            &mut o,
            "  ",
            "(drops are a lower bound: packets handled in the slow path are in no datapath flow's counters)",
            style.width,
        );
    } else {
        wrap(
            &mut o,
            "  ",
            "(not attributed: this source has no per-VM drop or invalid series)",
            style.width,
        );
    }
    o.push('\n');

    kernel_drops(&mut o, r, style, &iv);

    o.push_str(&style.paint(BOLD, "Conntrack"));
    o.push('\n');
    let c = &r.conntrack;
    match &c.stats {
        Some(st) => o.push_str(&format!(
            "  invalid {}, drop {}, insert_failed {}, early_drop {}\n",
            st.invalid, st.drop, st.insert_failed, st.early_drop
        )),
        None => o.push_str("  (conntrack statistics unavailable)\n"),
    }
    wrap(&mut o, "  why invalid: ", &c.classifier, style.width);
    if !c.classified.is_empty() {
        let rows: Vec<Vec<String>> = c
            .classified
            .iter()
            .map(|k| {
                vec![
                    k.reason.clone(),
                    format!("{} {}", k.family, k.protocol),
                    k.size_class.clone(),
                    k.tcp_flags.clone(),
                    k.packets.to_string(),
                ]
            })
            .collect();
        table(
            &mut o,
            style,
            &["REASON", "PROTOCOL", "SIZE", "TCP-FLAGS", "PACKETS"],
            &rows,
        );
    }
    o.push('\n');

    o.push_str(&style.paint(BOLD, "Settings"));
    o.push('\n');
    let settings: Vec<String> = r.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if settings.is_empty() {
        o.push_str("  (none read)\n");
    } else {
        wrap(&mut o, "  ", &settings.join("  "), style.width);
    }
    o.push('\n');

    o.push_str(&style.paint(BOLD, "Offload"));
    o.push('\n');
    let feature = |off: &super::analysis::Offload, f: &str| on(off.features.get(f).copied());
    let rows: Vec<Vec<String>> = r
        .offload
        .iter()
        .map(|x| {
            vec![
                x.device.clone(),
                x.role.clone(),
                on(x.rx_checksum()),
                on(x.tx_checksum()),
                feature(x, "tx-tcp-segmentation"),
                feature(x, "tx-generic-segmentation"),
                feature(x, "rx-gro"),
                feature(x, "tx-udp_tnl-csum-segmentation"),
            ]
        })
        .collect();
    table(&mut o, style, &OFFLOAD_HEADER, &rows);
    o.push('\n');

    if !r.findings.is_empty() {
        o.push_str(&style.paint(BOLD, "Findings"));
        o.push('\n');
        for f in &r.findings {
            let tag = match f.severity {
                Severity::Loss => style.paint(RED, "LOSS"),
                Severity::Warning => style.paint(YELLOW, "WARN"),
                Severity::Info => "INFO".to_owned(),
            };
            wrap(&mut o, &format!("  {tag} "), &f.text, style.width);
        }
        o.push('\n');
    }

    let head = if r.verdict.loss {
        style.paint(RED, "Verdict: packets are being lost")
    } else {
        style.paint(GREEN, "Verdict: no loss signal")
    };
    o.push_str(&head);
    o.push('\n');
    wrap(&mut o, "  ", &r.verdict.summary, style.width);
    if let Some(fix) = &r.verdict.fix {
        wrap(&mut o, "  Likely fix: ", fix, style.width);
    }
    o
}

/// The kernel's drops on the tunnel and VM ports, the busiest first, and the monitor's
/// health.
fn kernel_drops(o: &mut String, r: &Report, style: &Style, iv: &str) {
    o.push_str(&style.paint(
        BOLD,
        &format!("Kernel drops on the tunnel and VM ports, packets in {iv}"),
    ));
    o.push('\n');
    let Some(k) = &r.kernel_drops else {
        wrap(
            o,
            "  ",
            "(not counted: this source has no drops collector)",
            style.width,
        );
        o.push('\n');
        return;
    };
    let rows: Vec<Vec<String>> = k
        .top
        .iter()
        .map(|d| {
            vec![
                d.display(),
                d.role.clone(),
                d.reason.clone(),
                d.packets.to_string(),
            ]
        })
        .collect();
    table(o, style, &["DEVICE", "ROLE", "REASON", "PACKETS"], &rows);
    let mut notes = Vec::new();
    if k.more > 0 {
        notes.push(format!("{} more device and reason pairs", k.more));
    }
    notes.push(match k.monitor_active {
        Some(true) => "drop monitor running".to_owned(),
        Some(false) => "drop monitor NOT running".to_owned(),
        None => "drop monitor state unknown".to_owned(),
    });
    notes.push(format!(
        "{} reports lost, {} socket overruns",
        k.reports_lost, k.socket_overruns
    ));
    wrap(o, "  ", &format!("({})", notes.join("; ")), style.width);
    o.push('\n');
}

pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_the_terminal_by_cutting_names() {
        let mut out = String::new();
        let rows = vec![vec![
            "a-very-long-device-name-indeed".to_owned(),
            "12".to_owned(),
        ]];
        let style = Style {
            colour: false,
            width: Some(24),
        };
        table(&mut out, &style, &["DEVICE", "PACKETS"], &rows);
        for l in out.lines() {
            assert!(chars(l) <= 24, "{l:?}");
        }
        assert!(out.contains("a-very-long-…       12"), "{out}");
        let mut wide = String::new();
        table(
            &mut wide,
            &Style {
                colour: false,
                width: None,
            },
            &["DEVICE", "PACKETS"],
            &rows,
        );
        assert!(
            wide.contains("a-very-long-device-name-indeed       12"),
            "{wide}"
        );
    }

    #[test]
    fn tables_fit_narrow_terminals_cutting_headers_then_stacking() {
        let header = OFFLOAD_HEADER;
        let row = |d: &str| -> Vec<String> {
            [d, "tunnel", "on", "off", "on", "on", "on", "off"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        };
        let rows = vec![row("genev_sys_6081"), row("tap519d7cc4-75")];
        for width in [40, 60, 70, 80, 200] {
            let mut out = String::new();
            let style = Style {
                colour: false,
                width: Some(width),
            };
            table(&mut out, &style, &header, &rows);
            for l in out.lines() {
                assert!(chars(l) <= width, "{width}: {l:?}\n{out}");
            }
            // Nothing but names and headers is cut: every value is there, and the names
            // whole where the room allows.
            for d in ["genev_sys_6081", "tap519d7cc4-75"] {
                assert!(
                    out.contains(d) || (45..80).contains(&width),
                    "{width}: {out}"
                );
            }
            assert_eq!(out.matches("off").count(), 4, "{width}: {out}");
        }
        let mut narrow = String::new();
        table(
            &mut narrow,
            &Style {
                colour: false,
                width: Some(40),
            },
            &header,
            &rows,
        );
        assert!(
            narrow.contains("  genev_sys_6081\n    ROLE tunnel, RX-CSUM on,"),
            "{narrow}"
        );
        let mut sixty = String::new();
        table(
            &mut sixty,
            &Style {
                colour: false,
                width: Some(60),
            },
            &header,
            &rows,
        );
        assert!(sixty.lines().nth(1).unwrap().contains("tunnel"), "{sixty}");
    }

    #[test]
    fn the_node_in_words() {
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            node_line(&l(&[
                ("kernel_release", "6.1.0-28-cloud-amd64"),
                (
                    "kernel_version",
                    "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)"
                ),
                ("ovs_module", "in_tree"),
                ("ovs_version", "3.1.0"),
                ("ovn_chassis", "ch1"),
                ("ovn_version", "23.03.1"),
            ])),
            "kernel 6.1.0-28-cloud-amd64 (#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)), openvswitch module in-tree, Open vSwitch 3.1.0, OVN 23.03.1 (chassis ch1)"
        );
        assert_eq!(
            node_line(&l(&[
                ("kernel_release", "5.10.0-33-cloud-amd64"),
                ("ovs_module", "out_of_tree"),
                ("ovs_module_version", "2.17.9"),
                ("ovs_module_srcversion", "5A6D1C0B"),
            ])),
            "kernel 5.10.0-33-cloud-amd64, openvswitch module out-of-tree version 2.17.9 srcversion 5A6D1C0B"
        );
        assert_eq!(
            node_line(&l(&[])),
            "kernel unknown, no openvswitch module loaded"
        );
    }

    #[test]
    fn wrapping_keeps_words() {
        let mut out = String::new();
        wrap(&mut out, "  ", "one two three four five", Some(12));
        assert_eq!(out, "  one two\n  three four\n  five\n");
        let mut out = String::new();
        wrap(
            &mut out,
            "\x1b[1mX:\x1b[0m ",
            "one two three four",
            Some(13),
        );
        assert_eq!(out, "\x1b[1mX:\x1b[0m one two\n   three four\n");
    }
}
