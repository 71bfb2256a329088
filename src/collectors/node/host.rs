//! What the node's kernel says it runs: its release and version (procfs) and the
//! `openvswitch` module's identity (sysfs), read through `--path.procfs`/`--path.sysfs`.
//! Pure reads: a file that is not there is an empty value.

use std::path::Path;

/// Longest value kept; longer ones are cut at a character boundary.
pub const MAX_VALUE: usize = 128;
/// The kernel module of the OVS datapath.
pub const OVS_MODULE: &str = "openvswitch";
/// The taint flag of a module built outside the kernel tree (`TAINT_OOT_MODULE`).
const TAINT_OUT_OF_TREE: char = 'O';

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// `uname -v`: the build, which on Debian names the package version.
    pub version: String,
}

/// The OVS kernel module, all empty when it is not loaded as a module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Module {
    /// `in_tree`, `out_of_tree` (the module taints the kernel with `O`), or empty.
    pub origin: String,
    /// The checksum of the module's sources (`modinfo -F srcversion`): the build. Only
    /// modules with a `MODULE_VERSION` (out-of-tree Open vSwitch) or kernels built with
    /// `CONFIG_MODULE_SRCVERSION_ALL` have one; Debian's in-tree module does not, and
    /// the kernel's version string (the Debian package) names its build.
    pub srcversion: String,
    /// `MODULE_VERSION`, which out-of-tree builds of Open vSwitch set and the kernel's own
    /// module does not.
    pub version: String,
}

/// A file's first line, cut to [`MAX_VALUE`]; empty when it cannot be read.
pub fn line(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    cut(text.lines().next().unwrap_or("").trim())
}

pub fn cut(s: &str) -> String {
    crate::render::cut(s, MAX_VALUE)
}

pub fn kernel(procfs: &Path) -> Kernel {
    Kernel {
        release: line(&procfs.join("sys/kernel/osrelease")),
        version: line(&procfs.join("sys/kernel/version")),
    }
}

pub fn module(sysfs: &Path) -> Module {
    let dir = sysfs.join("module").join(OVS_MODULE);
    // A loadable module has `initstate`; a built-in one shows here only if it has
    // parameters, and the OVS module has none.
    if !dir.join("initstate").exists() {
        return Module::default();
    }
    let taint = line(&dir.join("taint"));
    Module {
        origin: if taint.contains(TAINT_OUT_OF_TREE) {
            "out_of_tree"
        } else {
            "in_tree"
        }
        .to_owned(),
        srcversion: line(&dir.join("srcversion")),
        version: line(&dir.join("version")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (p, text) in files {
            let p = d.0.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "pp-node-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_debian_kernel_and_its_in_tree_module() {
        let d = tree(&[
            ("proc/sys/kernel/osrelease", "6.1.0-28-cloud-amd64\n"),
            (
                "proc/sys/kernel/version",
                "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)\n",
            ),
            ("sys/module/openvswitch/initstate", "live\n"),
            (
                "sys/module/openvswitch/srcversion",
                "D0E6D3EB3A4F2C1B9E8A7F6\n",
            ),
            ("sys/module/openvswitch/taint", "\n"),
        ]);
        assert_eq!(
            kernel(&d.0.join("proc")),
            Kernel {
                release: "6.1.0-28-cloud-amd64".into(),
                version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)".into(),
            }
        );
        assert_eq!(
            module(&d.0.join("sys")),
            Module {
                origin: "in_tree".into(),
                srcversion: "D0E6D3EB3A4F2C1B9E8A7F6".into(),
                version: String::new(),
            }
        );
    }

    #[test]
    fn an_out_of_tree_module_without_srcversion_and_nothing_at_all() {
        let d = tree(&[
            ("sys/module/openvswitch/initstate", "live\n"),
            ("sys/module/openvswitch/taint", "OE\n"),
            ("sys/module/openvswitch/version", "2.17.9\n"),
        ]);
        assert_eq!(
            module(&d.0.join("sys")),
            Module {
                origin: "out_of_tree".into(),
                srcversion: String::new(),
                version: "2.17.9".into(),
            }
        );
        let empty = tree(&[]);
        assert_eq!(kernel(&empty.0), Kernel::default());
        assert_eq!(module(&empty.0), Module::default());
    }

    #[test]
    fn values_are_cut_and_invalid_utf8_replaced() {
        let d = tree(&[]);
        let p = d.0.join("v");
        std::fs::write(
            &p,
            [b'a'; 300]
                .iter()
                .chain(b"\n2nd")
                .copied()
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(line(&p), "a".repeat(MAX_VALUE));
        std::fs::write(&p, b"6.1\xff-x\n").unwrap();
        assert_eq!(line(&p), "6.1\u{fffd}-x");
        assert_eq!(cut(&"é".repeat(100)).len(), 128);
    }
}
