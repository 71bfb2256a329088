//! Shared test support: privilege gates, network namespaces, the exporter under test,
//! raw packet senders and a small exposition parser.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_packetpath-exporter");

/// Boots the OVS test bed (tests/vm/run.sh, with the options `configure` adds) into `out`
/// and returns its results.txt. Without qemu, run.sh installs it, which needs root: only
/// then, and never under CI=true, is the test skipped (None).
pub fn boot_ovs_bed(
    test: &str,
    out: &std::path::Path,
    configure: impl FnOnce(&mut Command),
) -> Option<std::path::PathBuf> {
    let have_qemu = Command::new("sh")
        .args(["-c", "command -v qemu-system-x86_64"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_qemu && !require_root(&format!("{test} (installs qemu)")) {
        return None;
    }
    let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/run.sh"));
    cmd.arg("--out").arg(out);
    configure(&mut cmd);
    let status = cmd.status().expect("run tests/vm/run.sh");
    let results = out.join("results.txt");
    assert!(
        status.success(),
        "{test}: the OVS test bed failed ({status}); see {} and {}",
        results.display(),
        out.join("console.log").display()
    );
    Some(results)
}

/// Boots the bed with `scenario` on `release`, killed after `timeout` seconds, into a
/// directory of its own; its results.txt.
pub fn boot_release(scenario: &str, release: &str, timeout: u32) -> Option<std::path::PathBuf> {
    let out = std::env::temp_dir().join(format!("pp-{scenario}-{release}-{}", std::process::id()));
    // The bed's own static build of the exporter and pptraffic serves every release.
    boot_ovs_bed(&format!("{scenario} on {release}"), &out, |cmd| {
        cmd.args(["--release", release, "--scenario", scenario])
            .args(["--timeout", &timeout.to_string()]);
    })
}

/// An exposition the bed handed back, checked by promtool, parsed.
pub fn checked_metrics(text: &str) -> Metrics {
    promtool_check(text);
    Metrics::parse(text)
}

/// True when the test may run. Without root it skips locally but fails under CI=true,
/// so a CI machine that lost its privileges cannot pass silently.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root (network namespaces) and CI=true: refusing to skip");
    }
    eprintln!("skipping {test}: needs root");
    false
}

/// Runs a command and returns stdout; panics with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the binary; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("spawn exporter");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the binary stops with `code` and one line on stderr that contains `contains`;
/// returns that line.
pub fn one_line_error(args: &[&str], code: i32, contains: &str) -> String {
    let (c, out, err) = run(args);
    assert_eq!(c, code, "{args:?}: {err}");
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{args:?} printed:\n{err}");
    assert!(err.starts_with("packetpath-exporter: "), "{err}");
    assert!(err.contains(contains), "{args:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"));
    err
}

/// What a finished command printed: stdout, then stderr.
pub fn said(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Asserts that a checker (promtool, hadolint, systemd-analyze) passed and printed nothing.
pub fn assert_silent(out: &std::process::Output, what: &str) {
    let said = said(out);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{what}:\n{said}"
    );
}

/// A child process that is killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Debian's prometheus on `dir`/prometheus.yml with its data under `dir`/data,
/// listening on 127.0.0.1:`port`; `wrapper` runs it (e.g. `ip netns exec NS`).
pub fn spawn_prometheus(wrapper: &[&str], dir: &std::path::Path, port: u16) -> KillOnDrop {
    let (program, args) = match wrapper.split_first() {
        Some((p, rest)) => (*p, rest.iter().copied().chain(["prometheus"]).collect()),
        None => ("prometheus", Vec::new()),
    };
    let child = Command::new(program)
        .args(args)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting prometheus (Debian package prometheus): {e}"));
    KillOnDrop(child)
}

/// A network namespace that is deleted (with everything in it) when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("pp-{tag}-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&format!("ip netns add {name}"));
        let ns = Netns { name };
        // No IPv6: its router solicitations and DAD would add packets the test did not send.
        ns.exec("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
        ns.exec("ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace (with its own /sys mounted).
    pub fn exec(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// Runs `f` on a thread that has joined this namespace; sockets it opens stay in it.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        Netns::enter_by_name(&self.name, f)
    }

    /// Every counter under /sys/class/net/*/statistics, as seen inside the namespace.
    pub fn sysfs_stats(&self) -> BTreeMap<(String, String), u64> {
        let out = self.exec("grep -r . /sys/class/net/*/statistics/");
        out.lines()
            .filter_map(|l| {
                let (path, v) = l.rsplit_once(':')?;
                let mut parts = path.trim_start_matches("/sys/class/net/").split('/');
                let dev = parts.next()?.to_owned();
                let stat = parts.nth(1)?.to_owned();
                Some(((dev, stat), v.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The exporter running inside a namespace; killed when dropped.
pub struct Exporter {
    child: Child,
    ns: String,
    pub port: u16,
}

impl Exporter {
    /// Starts the binary in `ns` on 127.0.0.1:`port`; `user` runs it unprivileged via setpriv.
    pub fn start(ns: &Netns, port: u16, user: Option<&str>, args: &[&str]) -> Exporter {
        Exporter::start_on(ns, "127.0.0.1", port, user, args)
    }

    /// The same on `ip`:`port` (0.0.0.0 for every address of the namespace).
    pub fn start_on(
        ns: &Netns,
        ip: &str,
        port: u16,
        user: Option<&str>,
        args: &[&str],
    ) -> Exporter {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name]);
        if let Some(u) = user {
            cmd.args([
                "setpriv",
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--clear-groups",
            ]);
        }
        let listen = format!("--web.listen-address={ip}:{port}");
        cmd.arg(BIN).arg(listen).args(args);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn exporter");
        let e = Exporter {
            child,
            ns: ns.name.clone(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if e.try_get("/-/healthy").is_some() {
                return e;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("exporter did not become healthy in {}", ns.name);
    }

    /// GET `path` from inside the namespace: (status line + headers, body).
    pub fn try_get(&self, path: &str) -> Option<(String, Vec<u8>)> {
        http_get_in(&self.ns, self.port, path, &[])
    }

    pub fn get(&self, path: &str, headers: &[&str]) -> (String, Vec<u8>) {
        http_get_in(&self.ns, self.port, path, headers)
            .unwrap_or_else(|| panic!("GET {path} failed in {}", self.ns))
    }

    /// One scrape of /metrics, parsed.
    pub fn scrape(&self) -> Metrics {
        let (head, body) = self.get("/metrics", &[]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        Metrics::parse(&String::from_utf8(body).expect("utf-8 exposition"))
    }

    pub fn scrape_text(&self) -> String {
        String::from_utf8(self.get("/metrics", &[]).1).expect("utf-8 exposition")
    }

    /// Stops the exporter with SIGTERM, checks it exits cleanly, and returns what it logged.
    pub fn stop(mut self) -> String {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut log = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut log);
        }
        let status = self.child.wait().expect("wait for exporter");
        assert!(
            status.success(),
            "exporter exited with {status} after SIGTERM:\n{log}"
        );
        assert!(log.contains("SIGTERM received, shutting down"), "{log}");
        log
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Joins the namespace `ns` on a fresh thread and runs `f` there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    Netns::enter_by_name(ns, f)
}

impl Netns {
    fn enter_by_name<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{name}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: a valid namespace fd; CLONE_NEWNET affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

/// Percent-encodes `q` for a URL's query string (all but RFC 3986's unreserved bytes).
pub fn url_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A minimal HTTP/1.1 GET over loopback inside a namespace.
pub fn http_get_in(ns: &str, port: u16, path: &str, headers: &[&str]) -> Option<(String, Vec<u8>)> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    in_netns(ns, move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        Some((head, raw[split + 4..].to_vec()))
    })
}

/// Parsed exposition: every sample by metric name and label set, plus HELP/TYPE.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE line");
                m.types.insert(name.to_owned(), ty.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            m.samples.push((name.to_owned(), labels, value));
        }
        m
    }

    /// The value of the one sample of `name` whose labels include all of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self.select(name, labels).map(|(_, v)| v).collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} series",
            found.len()
        );
        found.first().copied()
    }

    /// Like [`get`], but the series must exist.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?}"))
    }

    /// Every sample of `name` whose labels include all of `labels`.
    pub fn select(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> std::vec::IntoIter<(BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))
            })
            .map(|(_, l, v)| (l.clone(), *v))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
    }
    out
}

/// Sends `count` Ethernet frames of `len` bytes out of `ifname` with an AF_PACKET socket.
/// Must run inside the device's namespace (see [`Netns::enter`]).
pub fn send_frames(ifname: &str, count: usize, len: usize) {
    let fd = packet_socket();
    let ifindex = ifindex(ifname);
    // Broadcast, from a locally administered MAC, with the IEEE "local experimental"
    // ethertype that no protocol handles.
    let mut frame = vec![0u8; len.max(60)];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    // SAFETY: zeroed sockaddr_ll filled with valid values.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    send_to(&fd, std::iter::repeat_n(&frame[..], count), &addr, ifname);
}

/// sendto(2) of every buffer to one socket address; each must go out whole.
fn send_to<'a, A>(fd: &OwnedFd, bufs: impl Iterator<Item = &'a [u8]>, addr: &A, what: &str) {
    for buf in bufs {
        // SAFETY: valid fd and buffer; `addr` is a sockaddr_* of its own size.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (addr as *const A).cast(),
                std::mem::size_of::<A>() as u32,
            )
        };
        assert_eq!(
            n,
            buf.len() as isize,
            "send ({what}): {}",
            std::io::Error::last_os_error()
        );
    }
}

fn packet_socket() -> OwnedFd {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just returned by socket(2).
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn ifindex(ifname: &str) -> i32 {
    let c = std::ffi::CString::new(ifname).expect("ifname");
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i > 0, "no interface {ifname}");
    i as i32
}

/// Creates a TAP device in the current thread's namespace and returns its open fd: the
/// "VM" end. The device stays as long as the fd is open.
pub fn open_tap(name: &str) -> OwnedFd {
    let path = std::ffi::CString::new("/dev/net/tun").expect("path");
    // SAFETY: open(2) on a constant path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just opened.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: TUNSETIFF takes a struct ifreq, which IfReq lays out.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    fd
}

/// Writes `count` frames into a TAP fd: the VM transmitting, which the host receives.
pub fn write_tap(fd: &OwnedFd, count: usize, len: usize) {
    let mut frame = vec![0u8; len.max(60)];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    for _ in 0..count {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        assert_eq!(
            n,
            frame.len() as isize,
            "tap write: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Reads `count` frames from a TAP fd: the VM taking delivery. The kernel counts a TAP's
/// transmit only when the guest side reads the frame.
pub fn read_tap(fd: &OwnedFd, count: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..count {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(ready, 1, "tap: nothing to read");
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0, "tap read: {}", std::io::Error::last_os_error());
        sizes.push(n as usize);
    }
    sizes
}

/// Addresses of the client and server namespaces in the conntrack test beds.
pub const CLIENT: [u8; 4] = [10, 201, 0, 1];
pub const SERVER: [u8; 4] = [10, 201, 0, 2];

/// A 20-byte TCP SYN; the checksum is right unless `corrupt`.
pub fn tcp_syn(sport: u16, dport: u16, corrupt: bool) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&0x1000_0000u32.wrapping_add(u32::from(sport)).to_be_bytes());
    h[12] = 5 << 4; // data offset
    h[13] = 0x02; // SYN
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    // Pseudo-header (src, dst, zero, protocol, length) + segment, ones' complement sum.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&CLIENT);
    pseudo.extend_from_slice(&SERVER);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&h);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut csum = !(sum as u16);
    if corrupt {
        csum ^= 0x5a5a;
    }
    h[16..18].copy_from_slice(&csum.to_be_bytes());
    h
}

/// Sends segments from a raw IPPROTO_TCP socket; the kernel adds the IP header and leaves
/// the TCP checksum as given. Must run inside the client namespace.
pub fn send_segments(segments: &[Vec<u8>]) {
    send_l4(libc::IPPROTO_TCP, segments);
}

/// A server namespace with conntrack active (nftables drops ct state invalid) and a
/// client namespace that sends it raw TCP segments over a veth pair.
pub struct ConntrackBed {
    pub srv: Netns,
    pub cli: Netns,
    next_port: u16,
}

impl ConntrackBed {
    pub fn new() -> ConntrackBed {
        let srv = Netns::new("ctsrv");
        let cli = Netns::new("ctcli");
        sh(&format!(
            "ip -n {} link add c0 type veth peer name s0 netns {}",
            cli.name, srv.name
        ));
        cli.exec("ip addr add 10.201.0.1/30 dev c0 && ip link set c0 up");
        srv.exec("ip addr add 10.201.0.2/30 dev s0 && ip link set s0 up");
        let rules = std::env::temp_dir().join(format!("{}.nft", srv.name));
        std::fs::write(
            &rules,
            "table inet pp {\n chain input {\n  type filter hook input priority 0; policy accept;\n  ct state invalid counter drop\n }\n}\n",
        )
        .expect("write ruleset");
        srv.exec(&format!("nft -f {}", rules.display()));
        let _ = std::fs::remove_file(&rules);
        ConntrackBed {
            srv,
            cli,
            next_port: 40000,
        }
    }

    /// A second link into the server, on its own subnet: c1 (10.201.1.1/30) in the
    /// client, s1 (10.201.1.2/30) in the server.
    pub fn add_second_link(&self) {
        sh(&format!(
            "ip -n {} link add c1 type veth peer name s1 netns {}",
            self.cli.name, self.srv.name
        ));
        self.cli
            .exec("ip addr add 10.201.1.1/30 dev c1 && ip link set c1 up");
        self.srv
            .exec("ip addr add 10.201.1.2/30 dev s1 && ip link set s1 up");
    }

    pub fn set_checksum(&self, on: bool) {
        self.srv.exec(&format!(
            "sysctl -qw net.netfilter.nf_conntrack_checksum={}",
            u8::from(on)
        ));
    }

    /// Packets the nftables rule dropped as ct state invalid.
    pub fn nft_invalid_drops(&self) -> u64 {
        let out = self.srv.exec("nft list chain inet pp input");
        let after = out
            .split("counter packets ")
            .nth(1)
            .expect("counter in ruleset");
        after.split_whitespace().next().unwrap().parse().unwrap()
    }

    pub fn s0_rx_packets(&self) -> u64 {
        self.srv
            .exec("cat /sys/class/net/s0/statistics/rx_packets")
            .trim()
            .parse()
            .unwrap()
    }

    /// Sends `bad` corrupt-checksum SYNs and `good` valid SYNs, each on a fresh source port,
    /// and waits until the server's interface has received all of them.
    pub fn send(&mut self, bad: u16, good: u16) {
        let mut segs = Vec::new();
        for i in 0..bad + good {
            segs.push(tcp_syn(self.next_port, 80, i < bad));
            self.next_port += 1;
        }
        let before = self.s0_rx_packets();
        self.cli.enter(move || send_segments(&segs));
        let want = before + u64::from(bad + good);
        wait_for("segments at the server", Duration::from_secs(10), || {
            self.s0_rx_packets() >= want
        });
    }

    /// Sum of the `invalid` column of /proc/net/stat/nf_conntrack in the server namespace.
    pub fn proc_invalid(&self) -> u64 {
        let text = self.srv.exec("cat /proc/net/stat/nf_conntrack");
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let col = header.iter().position(|h| *h == "invalid").unwrap();
        lines
            .map(|l| u64::from_str_radix(l.split_whitespace().nth(col).unwrap(), 16).unwrap())
            .sum()
    }
}

/// `promtool check metrics` must print nothing and succeed. Under CI=true a missing
/// promtool is a failure, not a skip.
pub fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("promtool not available ({e}); install Debian's prometheus package");
            return;
        }
        Err(e) => panic!("promtool is required under CI=true: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_silent(&out, "promtool check metrics");
}

/// Polls `f` until it returns true or the deadline passes.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// TCP flag bits for [`tcp_segment`].
pub mod nflog;
pub mod ovsdb;

pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Internet checksum (ones' complement of the ones' complement sum) of `bytes`.
pub fn inet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP segment from [`CLIENT`] to [`SERVER`] with a 20-byte header, any `flags` and
/// `payload`; the checksum is right unless `corrupt`. Send it with [`send_segments`]: the IP
/// packet is 40 + `payload.len()` bytes, the Ethernet frame 14 more.
pub fn tcp_segment(sport: u16, dport: u16, flags: u8, payload: &[u8], corrupt: bool) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&0x1000_0000u32.wrapping_add(u32::from(sport)).to_be_bytes());
    if flags & tcp::ACK != 0 {
        h[8..12].copy_from_slice(&0x2000_0001u32.to_be_bytes());
    }
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h.extend_from_slice(payload);
    let csum = l4_checksum(libc::IPPROTO_TCP as u8, &h) ^ if corrupt { 0x5a5a } else { 0 };
    h[16..18].copy_from_slice(&csum.to_be_bytes());
    h
}

/// A UDP datagram from [`CLIENT`] to [`SERVER`]; the checksum is right unless `corrupt`.
/// Send it with [`send_l4`] and `libc::IPPROTO_UDP`.
pub fn udp_datagram(sport: u16, dport: u16, payload: &[u8], corrupt: bool) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    let mut csum = l4_checksum(libc::IPPROTO_UDP as u8, &d) ^ if corrupt { 0x5a5a } else { 0 };
    if csum == 0 {
        csum = 0xffff; // 0 means "no checksum" in UDP over IPv4
    }
    d[6..8].copy_from_slice(&csum.to_be_bytes());
    d
}

/// An ICMP echo request; the checksum is right unless `corrupt`. Send it with [`send_l4`]
/// and `libc::IPPROTO_ICMP`.
pub fn icmp_echo(id: u16, seq: u16, payload: &[u8], corrupt: bool) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let csum = inet_checksum(&m) ^ if corrupt { 0x5a5a } else { 0 };
    m[2..4].copy_from_slice(&csum.to_be_bytes());
    m
}

/// TCP/UDP checksum over the IPv4 pseudo-header ([`CLIENT`] to [`SERVER`]) and `segment`.
fn l4_checksum(proto: u8, segment: &[u8]) -> u16 {
    let mut b = Vec::with_capacity(12 + segment.len());
    b.extend_from_slice(&CLIENT);
    b.extend_from_slice(&SERVER);
    b.extend_from_slice(&[0, proto]);
    b.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    b.extend_from_slice(segment);
    inet_checksum(&b)
}

/// Sends payloads of IP protocol `proto` (headers and checksums as given) to [`SERVER`]
/// from a raw socket; the kernel adds the IP header. Must run inside the client namespace.
pub fn send_l4(proto: i32, packets: &[Vec<u8>]) {
    send_raw_to(
        std::net::Ipv4Addr::from(SERVER).into(),
        proto,
        packets,
        None,
    );
}

/// Raw packets of IP protocol `proto` to `dst` (v4 or v6) from this thread's namespace; the
/// kernel adds the IP header and, for IPv6 with `ipv6_dest_opts`, that Destination Options
/// header after it.
pub fn send_raw_to(
    dst: std::net::IpAddr,
    proto: i32,
    packets: &[Vec<u8>],
    ipv6_dest_opts: Option<&[u8]>,
) {
    let family = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, proto) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let bufs = packets.iter().map(Vec::as_slice);
    match dst {
        std::net::IpAddr::V4(a) => {
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            send_to(&fd, bufs, &addr, "raw IPv4");
        }
        std::net::IpAddr::V6(a) => {
            if let Some(opts) = ipv6_dest_opts {
                // SAFETY: valid fd; opts is a whole extension header of its own length.
                let rc = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::IPPROTO_IPV6,
                        libc::IPV6_DSTOPTS,
                        opts.as_ptr().cast(),
                        opts.len() as u32,
                    )
                };
                assert_eq!(rc, 0, "IPV6_DSTOPTS: {}", std::io::Error::last_os_error());
            }
            let addr = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            send_to(&fd, bufs, &addr, "raw IPv6");
        }
    }
}

/// A sysctl under /proc/sys/net/netfilter/ (`name` like `nf_log/2`) inside a namespace.
pub fn netfilter_sysctl(ns: &Netns, name: &str) -> String {
    ns.exec(&format!("cat /proc/sys/net/netfilter/{name}"))
        .trim()
        .to_owned()
}

pub fn set_netfilter_sysctl(ns: &Netns, name: &str, value: &str) {
    ns.exec(&format!("echo {value} > /proc/sys/net/netfilter/{name}"));
}

impl ConntrackBed {
    /// Sends raw packets of IP protocol `proto` from the client and waits until the
    /// server's interface has received all of them.
    pub fn send_raw(&self, proto: i32, packets: Vec<Vec<u8>>) {
        let want = self.s0_rx_packets() + packets.len() as u64;
        self.cli.enter(move || send_l4(proto, &packets));
        wait_for("packets at the server", Duration::from_secs(10), || {
            self.s0_rx_packets() >= want
        });
    }
}

/// VmRSS of process `pid` in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

impl Exporter {
    /// The exporter's process id (`ip netns exec` execs it, so it is the child's own).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

/// Every document of a YAML file, as JSON (parsed by PyYAML, the Debian python3-yaml).
pub fn yaml_docs(path: impl AsRef<std::path::Path>) -> Vec<serde_json::Value> {
    let path = path.as_ref();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("python3 with PyYAML (Debian python3-yaml)");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The document of kind `k`.
pub fn kind<'a>(docs: &'a [serde_json::Value], k: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

/// The exporter built fully static in release (what the image and the Debian package
/// ship), in a target directory of its own under .cache, so this build does not wait on the
/// one running the tests.
pub fn static_binary() -> std::path::PathBuf {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = repo.join(".cache/static-target");
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo)
        .output()
        .expect("cargo build");
    assert!(out.status.success(), "static build:\n{}", said(&out));
    target.join("x86_64-unknown-linux-gnu/release/packetpath-exporter")
}
