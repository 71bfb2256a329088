//! The version of a running Open vSwitch or OVN daemon, asked on its control socket
//! (`unixctl`, JSON-RPC 1.0 over a unix socket, what `ovn-appctl version` does): the
//! daemon's pidfile names it, `<rundir>/<daemon>.<pid>.ctl`. ovn-controller writes its
//! version nowhere else (not to the Open vSwitch database), so this is how a fleet sees it.
//! Asked once per daemon process: the answer is kept until the pid changes.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a daemon may take to answer; a scrape waits at most this.
const TIMEOUT: Duration = Duration::from_millis(500);
/// How long a failed ask is not repeated for the same process.
const RETRY: Duration = Duration::from_secs(60);
/// A version reply is a few lines; anything longer is not one.
const MAX_REPLY: usize = 64 << 10;
/// The unixctl command every Open vSwitch and OVN daemon answers.
const VERSION: &str = "version";

/// The last answer: which process was asked, what it said (or why not), and when.
type Asked = (u32, Result<String, String>, Instant);

/// A daemon's version, asked when its process changes.
pub struct Daemon {
    rundir: PathBuf,
    name: &'static str,
    /// (pid, version or why not, when asked).
    last: Mutex<Option<Asked>>,
}

impl Daemon {
    pub fn new(rundir: PathBuf, name: &'static str) -> Daemon {
        Daemon {
            rundir,
            name,
            last: Mutex::new(None),
        }
    }

    /// The running daemon's version; empty when it does not run here or does not answer.
    pub fn version(&self) -> String {
        let Some(pid) = pid(&self.rundir.join(format!("{}.pid", self.name))) else {
            return String::new();
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some((p, Ok(v), _)) if *p == pid => return v.clone(),
            Some((p, Err(_), at)) if *p == pid && at.elapsed() < RETRY => return String::new(),
            _ => {}
        }
        let socket = self.rundir.join(format!("{}.{pid}.ctl", self.name));
        let answer = ask(&socket, VERSION).and_then(|reply| {
            parse_version(&reply).ok_or_else(|| format!("no version in {reply:?}"))
        });
        if let (Err(why), true) = (&answer, news(last.as_ref(), pid, &answer)) {
            tracing::info!(daemon = self.name, socket = %socket.display(), "cannot read the version: {why}");
        }
        let out = answer.clone().unwrap_or_default();
        *last = Some((pid, answer, Instant::now()));
        out
    }
}

/// Whether `answer` from process `pid` is worth a log line after `last`: a failure is said
/// once per process, not at every retry (a socket the exporter may not open stays so).
fn news(last: Option<&Asked>, pid: u32, answer: &Result<String, String>) -> bool {
    !matches!(
        (last, answer),
        (Some((p, Err(before), _)), Err(now)) if *p == pid && before == now
    )
}

fn pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

/// Sends one unixctl command without arguments; its result text.
pub fn ask(socket: &Path, command: &str) -> Result<String, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let request = json!({"method": command, "params": [], "id": 0});
    s.write_all(request.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(reply) = reply(&buf)? {
            return reply;
        }
        if buf.len() > MAX_REPLY || Instant::now() > deadline {
            return Err("no complete reply".to_owned());
        }
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the daemon closed the connection".to_owned());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// The reply in `buf`, once it is complete: its result, or its error.
pub fn reply(buf: &[u8]) -> Result<Option<Result<String, String>>, String> {
    let v: Value = match serde_json::from_slice(buf) {
        Ok(v) => v,
        Err(e) if e.is_eof() => return Ok(None),
        Err(e) => return Err(format!("a reply that does not parse: {e}")),
    };
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        return Ok(Some(Err(format!("the daemon answered an error: {e}"))));
    }
    Ok(Some(
        v.get("result")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "a reply without a result".to_owned()),
    ))
}

/// `ovn-controller 24.03.2\nOpen vSwitch Library 3.3.0\n…` → `24.03.2`.
pub fn parse_version(text: &str) -> Option<String> {
    let first = text.lines().next()?.trim();
    let v = first
        .rsplit(' ')
        .next()
        .filter(|v| !v.is_empty() && *v != first)?;
    Some(super::host::cut(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_versions() {
        let r = br#"{"id":0,"result":"ovn-controller 24.03.2\nOpen vSwitch Library 3.3.0\nOpenFlow versions 0x6:0x6\nSB DB Schema 20.33.0\n","error":null}"#;
        let text = reply(r).unwrap().unwrap().unwrap();
        assert_eq!(parse_version(&text).as_deref(), Some("24.03.2"));
        assert_eq!(reply(&r[..20]).unwrap(), None);
        assert!(reply(b"{]").is_err());
        assert_eq!(
            reply(br#"{"id":0,"result":null,"error":"unknown command"}"#).unwrap(),
            Some(Err(
                "the daemon answered an error: \"unknown command\"".into()
            ))
        );
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn a_failure_is_said_once_per_process() {
        let denied: Result<String, String> = Err("Permission denied (os error 13)".into());
        let now = Instant::now();
        assert!(news(None, 7, &denied));
        assert!(!news(Some(&(7, denied.clone(), now)), 7, &denied));
        assert!(news(Some(&(8, denied.clone(), now)), 7, &denied));
        let other = Err("the daemon closed the connection".into());
        assert!(news(Some(&(7, denied.clone(), now)), 7, &other));
        assert!(news(Some(&(7, Ok("25.03.0".into()), now)), 7, &denied));
    }

    #[test]
    fn a_daemon_that_answers_is_asked_once_per_process() {
        let dir = std::env::temp_dir().join(format!("pp-unixctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = Daemon::new(dir.clone(), "ovn-controller");
        assert_eq!(d.version(), "", "no pidfile: not running");
        std::fs::write(dir.join("ovn-controller.pid"), "4242\n").unwrap();
        let listener =
            std::os::unix::net::UnixListener::bind(dir.join("ovn-controller.4242.ctl")).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).unwrap();
            let req: Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(req["method"], "version");
            c.write_all(br#"{"id":0,"result":"ovn-controller 23.09.1\nOpen vSwitch Library 3.2.1\n","error":null}"#)
                .unwrap();
            // A second connection would hang here: the version is kept.
        });
        assert_eq!(d.version(), "23.09.1");
        server.join().unwrap();
        assert_eq!(d.version(), "23.09.1");
        // Another process (a restart) with no socket: empty, and said once.
        std::fs::write(dir.join("ovn-controller.pid"), "4243\n").unwrap();
        assert_eq!(d.version(), "");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
