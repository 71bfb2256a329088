//! The host settings the collector changes (`nf_conntrack_log_invalid` and the nf_log
//! loggers), and the state file that keeps the originals until they are restored, also
//! across a crash.

use std::path::{Path, PathBuf};

/// The host settings this collector changes, as they were before it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub log_invalid: String,
    pub nf_log_v4: String,
    pub nf_log_v6: String,
}

impl Settings {
    fn paths(procfs: &Path) -> [PathBuf; 3] {
        let nf = procfs.join("sys/net/netfilter");
        [
            nf.join("nf_conntrack_log_invalid"),
            nf.join("nf_log/2"),
            nf.join("nf_log/10"),
        ]
    }

    pub fn read(procfs: &Path) -> std::io::Result<Settings> {
        let [a, b, c] = Settings::paths(procfs);
        let read = |p: &Path| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
        Ok(Settings {
            log_invalid: read(&a)?,
            nf_log_v4: read(&b)?,
            nf_log_v6: read(&c)?,
        })
    }

    /// Writes every setting, trying all three even when one fails. Applying, the loggers
    /// go first (so nothing logs to syslog meanwhile); restoring, logging stops first.
    pub fn write(&self, procfs: &Path, restoring: bool) -> Result<(), String> {
        let [a, b, c] = Settings::paths(procfs);
        let mut steps = vec![(b, &self.nf_log_v4), (c, &self.nf_log_v6)];
        if restoring {
            steps.insert(0, (a, &self.log_invalid));
        } else {
            steps.push((a, &self.log_invalid));
        }
        let errors: Vec<String> = steps
            .into_iter()
            .filter_map(|(path, value)| {
                std::fs::write(&path, value)
                    .err()
                    .map(|e| format!("{}: {e}", path.display()))
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    pub fn to_state(&self) -> String {
        format!(
            "nf_conntrack_log_invalid {}\nnf_log/2 {}\nnf_log/10 {}\n",
            self.log_invalid, self.nf_log_v4, self.nf_log_v6
        )
    }

    pub fn from_state(text: &str) -> Option<Settings> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ').map(str::to_owned))
        };
        Some(Settings {
            log_invalid: get("nf_conntrack_log_invalid")?,
            nf_log_v4: get("nf_log/2")?,
            nf_log_v6: get("nf_log/10")?,
        })
    }
}

/// Replaces `{netns}` in the state file path with this network namespace's inode, so
/// exporters in different namespaces (qrouter-…, say) never take each other's settings.
pub fn per_namespace(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    if !text.contains("{netns}") {
        return path.to_path_buf();
    }
    use std::os::unix::fs::MetadataExt;
    let id = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    PathBuf::from(text.replace("{netns}", &id.to_string()))
}

fn log_invalid_path(procfs: &Path) -> PathBuf {
    procfs.join("sys/net/netfilter/nf_conntrack_log_invalid")
}

/// `nf_conntrack_log_invalid` now (the governor checks it is still what it left).
pub fn read_log_invalid(procfs: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(log_invalid_path(procfs)).map(|s| s.trim().to_owned())
}

pub fn write_log_invalid(procfs: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(log_invalid_path(procfs), value)
}
