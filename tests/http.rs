//! Concurrent scrapes share one in-flight collection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use packetpath_exporter::collectors::{CollectError, Collector};
use packetpath_exporter::render::Family;
use packetpath_exporter::scrape::Scraper;
use packetpath_exporter::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Stands in for a netlink dump: slow, and counts how often it runs.
struct Slow {
    calls: Arc<AtomicUsize>,
}

impl Collector for Slow {
    fn collect(&self) -> Result<Vec<Family>, CollectError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::thread::sleep(Duration::from_millis(400));
        let mut f = Family::counter("test_dumps_total", "Dumps performed.", &[]);
        f.push(&[], n as f64);
        Ok(vec![f])
    }
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
    let scraper = Scraper::new(vec![("slow", slow)], Duration::from_secs(5));
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
    let scraper = Scraper::new(vec![("slow", slow)], Duration::from_millis(100));
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
    let scraper = Scraper::new(vec![("slow", slow)], Duration::from_secs(5));
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
