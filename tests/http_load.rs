//! The connection cap cannot be turned against Prometheus: 1,100 clients that ask for a
//! 1.7 MB exposition and never read it, or connect and say nothing, while a normal scrape
//! every second must succeed within 5 s; memory stays bounded and every descriptor comes
//! back afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Exporter, Netns, require_root};

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(lim.rlim_cur >= 4096, "the test needs 4096 descriptors");
}

/// A loopback connection with a 4 KiB receive buffer, set before connecting so that the
/// window stays small: the server cannot park a whole response in the kernel.
fn small_window_connect(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns until handed over.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One scrape the way Prometheus does it; (status line, body length, time taken).
fn scrape(ns: &Netns, port: u16) -> (String, usize, Duration) {
    let start = Instant::now();
    let (head, body) = common::http_get_in(&ns.name, port, "/metrics", &[])
        .unwrap_or_else(|| ("no answer".into(), Vec::new()));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.len(),
        start.elapsed(),
    )
}

#[test]
fn non_reading_and_idle_clients_cannot_keep_prometheus_out() {
    if !require_root("non_reading_and_idle_clients_cannot_keep_prometheus_out") {
        return;
    }
    raise_fd_limit();
    let ns = Netns::new("load");
    let mut batch = String::new();
    for i in 0..2000 {
        batch.push_str(&format!("tuntap add tap{i} mode tap\n"));
    }
    let file = std::env::temp_dir().join(format!("pp-load-{}.batch", std::process::id()));
    std::fs::write(&file, batch).unwrap();
    ns.exec(&format!("ip -batch {}", file.display()));
    let _ = std::fs::remove_file(&file);
    // Send buffers of at most 256 KiB: a response larger than the kernel will hold for a
    // client that does not read stays with the exporter, as on a node with many clients.
    ns.exec("sysctl -qw net.ipv4.tcp_wmem='4096 16384 262144'");

    let port = 19640;
    let e = Exporter::start(
        &ns,
        port,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.interfaces",
            "--web.write-timeout=10s",
        ],
    );
    let pid = e.pid() as u32;
    let (status, size, _) = scrape(&ns, port);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(size > 1_600_000, "the exposition is {size} bytes");
    let baseline = fds(pid);

    // 800 clients ask for the exposition and never read; 300 connect and say nothing.
    let clients: Vec<TcpStream> = ns.enter(move || {
        (0..1100)
            .filter_map(|i| {
                let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
                if i < 800 {
                    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                        .ok()?;
                }
                Some(s)
            })
            .collect()
    });
    assert!(clients.len() >= 1000, "{} clients connected", clients.len());

    // The 800 requests arrive at once: while the exporter answers them, more than
    // --web.max-requests are in flight and a scrape may get 503, as the limit intends.
    // Once they are answered (and left unread), every scrape must get through.
    let settled = Instant::now();
    while !scrape(&ns, port).0.starts_with("HTTP/1.1 200") {
        assert!(
            settled.elapsed() < Duration::from_secs(5),
            "the burst still holds the request limit after 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut worst = Duration::ZERO;
    let mut peak_rss = 0;
    let mut peak_fds = 0;
    for _ in 0..25 {
        let (status, size, took) = scrape(&ns, port);
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "{status} after {took:?}"
        );
        assert!(size > 1_600_000, "{size} bytes");
        assert!(took < Duration::from_secs(5), "a scrape took {took:?}");
        worst = worst.max(took);
        peak_rss = peak_rss.max(common::rss_kib(pid));
        peak_fds = peak_fds.max(fds(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("worst scrape {worst:?}, peak RSS {peak_rss} KiB, peak descriptors {peak_fds}");
    assert!(peak_rss < 256 * 1024, "RSS {peak_rss} KiB");
    assert!(peak_fds <= 1024 + 100, "{peak_fds} descriptors");

    // The clients go; every descriptor they held comes back.
    drop(clients);
    common::wait_for("descriptors back", Duration::from_secs(20), || {
        fds(pid) <= baseline
    });
    let mut s = ns.enter(move || TcpStream::connect(("127.0.0.1", port)).unwrap());
    s.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    e.stop();

    // The write timeout: a client that asks and does not read for longer than it gets its
    // response cut (and the server's slot and buffers back), however long it stays.
    let e = Exporter::start(
        &ns,
        port + 1,
        None,
        &[
            "--collector.disable-defaults",
            "--collector.interfaces",
            "--web.write-timeout=2s",
        ],
    );
    let mut slow = ns.enter(move || small_window_connect(port + 1));
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let mut got = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = slow.read_to_end(&mut got);
    assert!(
        got.len() < size,
        "{} of {size} bytes: the response was not cut",
        got.len()
    );
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // A reader that keeps up gets all of it.
    let (status, whole, _) = scrape(&ns, port + 1);
    assert!(
        status.starts_with("HTTP/1.1 200") && whole > 1_600_000,
        "{status} {whole}"
    );
    e.stop();
}
