//! Concurrent scrapes share one in-flight collection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use packetpath_exporter::collectors::common::{Resources, Scrape};
use packetpath_exporter::collectors::{CollectError, Collector};
use packetpath_exporter::netlink::{
    ReplayTransport, Request, StreamEnd, Transport, TransportError,
};
use packetpath_exporter::render::Family;
use packetpath_exporter::scrape::Scraper;
use packetpath_exporter::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Stands in for a netlink dump: slow, and counts how often it runs.
struct Slow {
    calls: Arc<AtomicUsize>,
}

impl Collector for Slow {
    fn collect(&self, _: &Scrape) -> Result<Vec<Family>, CollectError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::thread::sleep(Duration::from_millis(400));
        let mut f = Family::counter("test_dumps_total", "Dumps performed.", &[]);
        f.push(&[], n as f64);
        Ok(vec![f])
    }
}

/// Captured replies, with every request counted by name.
struct Counting {
    replay: ReplayTransport,
    requests: std::sync::Mutex<Vec<&'static str>>,
}

impl Transport for Counting {
    fn stream(
        &self,
        req: &Request,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StreamEnd, TransportError> {
        self.requests.lock().unwrap().push(req.name);
        self.replay.stream(req, sink)
    }
}

fn counting() -> Arc<Counting> {
    Arc::new(Counting {
        replay: ReplayTransport {
            dir: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/netlink").into(),
        },
        requests: Default::default(),
    })
}

fn resources() -> Arc<Resources> {
    Resources::for_tests(counting())
}

/// Waits `.0`, reads the scrape's link list, then waits `.1`.
struct SlowLinks(Duration, Duration);

impl Collector for SlowLinks {
    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError> {
        std::thread::sleep(self.0);
        let links = scrape.links()?;
        std::thread::sleep(self.1);
        let mut f = Family::gauge("test_links", "Links seen.", &["scrape"]);
        f.push(&[&scrape.number.to_string()], links.len() as f64);
        Ok(vec![f])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_reads_each_shared_source_once_however_long_it_takes() {
    let kernel = counting();
    let r = Resources::for_tests(kernel.clone());
    let (long, none) = (Duration::from_millis(2_500), Duration::ZERO);
    // Two readers at once, and one that asks 2.5 s into the collection (as one that ran
    // late would): longer than any time window that guessed "the same scrape".
    let collectors: Vec<(&'static str, Arc<dyn Collector>)> = vec![
        ("a", Arc::new(SlowLinks(none, long))),
        ("b", Arc::new(SlowLinks(none, none))),
        ("c", Arc::new(SlowLinks(long, none))),
    ];
    let scraper = Scraper::new(collectors, r, Duration::from_secs(10));
    let links = |k: &Counting| {
        k.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n == "rtnl_getlink")
            .count()
    };
    let first = String::from_utf8(scraper.scrape().await.to_vec()).unwrap();
    assert_eq!(links(&kernel), 1, "one collection, one link dump");
    let n = packetpath_exporter::collectors::common::links::parse(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/netlink/rtnl_getlink.bin"
        ))
        .unwrap(),
    )
    .unwrap()
    .len();
    assert!(n > 1);
    assert!(
        first.contains(&format!("test_links{{scrape=\"1\"}} {n}\n")),
        "{first}"
    );
    assert!(first.contains("packetpath_scrape_collector_success{collector=\"c\"} 1\n"));
    let second = String::from_utf8(scraper.scrape().await.to_vec()).unwrap();
    assert_eq!(links(&kernel), 2, "two collections, two link dumps");
    assert!(
        second.contains(&format!("test_links{{scrape=\"2\"}} {n}\n")),
        "{second}"
    );
    assert_eq!(scraper.collections(), 2);
}

async fn get(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A server on an ephemeral port over one slow collector: (its call count, the scraper,
/// the port).
async fn serve_slow(max_requests: usize) -> (Arc<AtomicUsize>, Arc<Scraper>, u16) {
    let calls = Arc::new(AtomicUsize::new(0));
    let slow: Arc<dyn Collector> = Arc::new(Slow {
        calls: calls.clone(),
    });
    let scraper = Scraper::new(vec![("slow", slow)], resources(), Duration::from_secs(5));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve(
        listener,
        server::router(scraper.clone(), "/metrics", max_requests),
        server::Http::default(),
    ));
    (calls, scraper, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_scrapes_cause_one_collection() {
    let (calls, scraper, port) = serve_slow(40).await;

    let bodies = futures::future::join_all((0..10).map(|_| get(port))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(scraper.collections(), 1);
    for b in &bodies {
        assert!(b.starts_with("HTTP/1.1 200"), "{b}");
        assert!(b.contains("\ntest_dumps_total 1\n"), "{b}");
    }
    // A later scrape runs a fresh collection.
    let later = get(port).await;
    assert!(later.contains("\ntest_dumps_total 2\n"), "{later}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_past_its_timeout_reports_failure_and_is_not_stacked() {
    let calls = Arc::new(AtomicUsize::new(0));
    let slow: Arc<dyn Collector> = Arc::new(Slow {
        calls: calls.clone(),
    });
    let scraper = Scraper::new(
        vec![("slow", slow)],
        resources(),
        Duration::from_millis(100),
    );
    let first = String::from_utf8(scraper.scrape().await.to_vec()).unwrap();
    assert!(
        first.contains("packetpath_scrape_collector_success{collector=\"slow\"} 0"),
        "{first}"
    );
    // Still running: the next scrape must not start a second one.
    let second = String::from_utf8(scraper.scrape().await.to_vec()).unwrap();
    assert!(second.contains("packetpath_scrape_collector_success{collector=\"slow\"} 0"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = String::from_utf8(scraper.scrape().await.to_vec()).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(third.contains("packetpath_scrape_collector_success{collector=\"slow\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_nobody_waited_for_is_not_served_later() {
    let calls = Arc::new(AtomicUsize::new(0));
    let slow: Arc<dyn Collector> = Arc::new(Slow {
        calls: calls.clone(),
    });
    let scraper = Scraper::new(vec![("slow", slow)], resources(), Duration::from_secs(5));
    // The only scraper gives up before the collection ends (Prometheus' scrape timeout).
    assert!(
        tokio::time::timeout(Duration::from_millis(50), scraper.scrape())
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The next scrape starts a collection of its own instead of taking the stale result.
    let text = String::from_utf8(scraper.scrape().await.to_vec()).unwrap();
    assert!(text.contains("\ntest_dumps_total 2\n"), "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_beyond_max_requests_get_503() {
    let (_, _, port) = serve_slow(1).await;
    let first = tokio::spawn(get(port));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = get(port).await;
    assert!(second.starts_with("HTTP/1.1 503"), "{second}");
    assert!(
        second.ends_with("too many concurrent scrapes\n"),
        "{second}"
    );
    assert!(first.await.unwrap().starts_with("HTTP/1.1 200"));
    // The slot is free again once the first scrape is done.
    assert!(get(port).await.starts_with("HTTP/1.1 200"));
}
