//! A private ovsdb-server from Debian's openvswitch-switch, on a database and socket of its
//! own (no ovs-vswitchd, no kernel module, no root needed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::wait_for;

/// A private ovsdb-server.
pub struct Db {
    pub dir: PathBuf,
}

impl Db {
    pub fn new(tag: &str) -> Db {
        let dir = std::env::temp_dir().join(format!("pp-ovsdb-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db { dir };
        run(
            "ovsdb-tool",
            &[
                "create",
                &db.path("conf.db"),
                "/usr/share/openvswitch/vswitch.ovsschema",
            ],
        );
        db.serve();
        db.vsctl(&["init"]);
        db.vsctl(&["add-br", "br-int"]);
        db
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    pub fn socket(&self) -> String {
        self.path("db.sock")
    }

    pub fn serve(&self) {
        run(
            "ovsdb-server",
            &[
                &self.path("conf.db"),
                &format!("--remote=punix:{}", self.socket()),
                &format!("--pidfile={}", self.path("ovsdb.pid")),
                &format!("--log-file={}", self.path("ovsdb.log")),
                &format!("--unixctl={}", self.path("ovsdb.ctl")),
                "--no-chdir",
                "--detach",
            ],
        );
        wait_for("ovsdb-server's socket", Duration::from_secs(10), || {
            Path::new(&self.socket()).exists()
        });
    }

    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path("ovsdb.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_for("ovsdb-server to exit", Duration::from_secs(10), || {
                // SAFETY: signal 0 only checks that the process exists.
                unsafe { libc::kill(pid, 0) != 0 }
            });
        }
        let _ = std::fs::remove_file(self.path("ovsdb.pid"));
    }

    /// Adds port `device` to br-int with these `column=value` settings on its Interface
    /// (`external_ids:iface-id=...`, as os-vif or libvirt write them).
    pub fn plug(&self, device: &str, settings: &[&str]) {
        let mut args = vec![
            "add-port",
            "br-int",
            device,
            "--",
            "set",
            "Interface",
            device,
        ];
        args.extend_from_slice(settings);
        self.vsctl(&args);
    }

    pub fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.socket());
        let mut all = vec![db.as_str(), "--no-wait"];
        all.extend_from_slice(args);
        run("ovs-vsctl", &all)
    }

    /// A Datapath row for datapath type `kind`, with `columns` (`capabilities:ct_state=true`,
    /// `datapath_version="…"`), named in the Open_vSwitch row's `datapaths`.
    pub fn add_datapath(&self, kind: &str, columns: &[&str]) {
        let mut args = vec!["--", "--id=@dp", "create", "Datapath"];
        args.extend_from_slice(columns);
        let set = format!("datapaths:{kind}=@dp");
        args.extend_from_slice(&["--", "set", "Open_vSwitch", ".", &set]);
        self.vsctl(&args);
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (Debian's openvswitch-switch is needed)"));
    let said = super::said(&out);
    assert!(out.status.success(), "{cmd} {args:?}: {said}");
    said
}

/// Whether ovsdb-server is here; under CI=true it must be.
pub fn available(test: &str) -> bool {
    let have = Path::new("/usr/sbin/ovsdb-server").exists();
    assert!(
        have || std::env::var("CI").as_deref() != Ok("true"),
        "{test}: ovsdb-server is required under CI=true (openvswitch-switch)"
    );
    have
}
