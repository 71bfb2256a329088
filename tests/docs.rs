//! README.md and docs/: every relative link names a file that exists and, with a
//! `#anchor`, a heading in it; the alerts' runbook links too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// GitHub's anchor for a heading: lowercase, punctuation gone, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            c if c.is_alphanumeric() || c == '_' => Some(c),
            ' ' | '-' => Some('-'),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for l in text.lines() {
        if l.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && l.starts_with('#') && l.trim_start_matches('#').starts_with(' ') {
            out.insert(slug(l));
        }
    }
    out
}

/// `](target)` link targets in a Markdown text, outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for l in text.lines() {
        if l.starts_with("```") {
            fenced = !fenced;
        }
        if fenced || l.starts_with("    ") {
            continue;
        }
        let mut rest = l;
        while let Some(i) = rest.find("](") {
            let tail = &rest[i + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            out.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    out
}

/// Checks `target` (as written in `from`) resolves; the broken ones described.
fn check(from: &Path, target: &str, broken: &mut Vec<String>) {
    if target.contains("://") || target.starts_with("mailto:") {
        return;
    }
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        from.parent().unwrap().join(path)
    };
    if !file.exists() {
        broken.push(format!("{}: {target}: no such file", from.display()));
        return;
    }
    if !anchor.is_empty() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if !anchors(&text).contains(anchor) {
            broken.push(format!(
                "{}: {target}: no heading #{anchor} in {}",
                from.display(),
                file.display()
            ));
        }
    }
}

#[test]
fn every_link_and_anchor_in_readme_and_docs_resolves() {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 6, "{docs:?}");
    files.extend(docs.iter().cloned());
    let mut broken = Vec::new();
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for target in links(&text) {
            check(f, &target, &mut broken);
            checked += 1;
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 20, "{checked}");
    // README maps every file under docs/.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for d in &docs {
        let name = format!("docs/{}", d.file_name().unwrap().to_string_lossy());
        assert!(
            readme.contains(&format!("]({name})")),
            "README's map lacks {name}"
        );
    }
}

#[test]
fn runbook_links_of_the_alerts_resolve() {
    let rules = std::fs::read_to_string(repo().join("alerts/packetpath.rules.yml")).unwrap();
    let mut broken = Vec::new();
    let mut n = 0;
    for l in rules.lines() {
        let Some(url) = l.trim().strip_prefix("runbook_url: ") else {
            continue;
        };
        n += 1;
        // RUNBOOK_URL is a path in the repository by default: resolved from its root.
        check(
            &repo().join("README.md"),
            url.trim_matches('"'),
            &mut broken,
        );
    }
    assert_eq!(n, 13);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("## Fleet: many nodes, one view"),
        "fleet-many-nodes-one-view"
    );
    assert_eq!(
        slug("## Why invalid: the conntrack_invalid collector"),
        "why-invalid-the-conntrack_invalid-collector"
    );
    assert_eq!(
        links("see [a](docs/x.md#y) and [b](#c)\n    [not](code)"),
        vec!["docs/x.md#y".to_owned(), "#c".to_owned()]
    );
}
