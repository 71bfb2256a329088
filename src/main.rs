use std::process::ExitCode;

use packetpath_exporter::cli::{self, Exit};
use packetpath_exporter::{logging, scrape::Scraper, server, web};

fn main() -> ExitCode {
    fixed_mmap_threshold();
    let mut argv = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|a| a == "diagnose") {
        return packetpath_exporter::diagnose::main(argv.by_ref().skip(2).collect());
    }
    let cli = match cli::parse_from(std::env::args_os()) {
        Ok(c) => c,
        Err(Exit::Info(text)) => {
            // A closed pipe (`| head`) is no reason to panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(Exit::Usage(line)) => {
            eprintln!("packetpath-exporter: {line}");
            return ExitCode::from(2);
        }
    };
    logging::init(cli.args.log_level, cli.args.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("packetpath-exporter: {line}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("start runtime: {e}"))?;
    runtime.block_on(async {
        let signals = server::Signals::register().map_err(|e| format!("signal handlers: {e}"))?;
        let web = match &cli.args.web_config_file {
            Some(file) => web::load(file).map_err(|e| e.to_string())?,
            None => web::WebConfig::default(),
        };
        // Bind first: a port in use must fail before any collector changes the host.
        let listener = server::bind(&cli.args.listen_address).await?;
        let (collectors, resources) = cli.build()?;
        if collectors.is_empty() {
            tracing::warn!(
                "no collector is enabled (--collector.disable-defaults and no --collector.<name>): only the exporter's own series will be served"
            );
        }
        let scraper = Scraper::new(collectors, resources, cli.args.scrape_timeout);
        // What cannot run (no OVS module, no ovsdb-server) is said at start, not at the
        // first scrape, which may come minutes later: one collection a second in, once the
        // OVSDB client has had its first try; a reason is said again only when it changes.
        let first = scraper.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let _ = first.scrape().await;
        });
        // Whatever happens from here (an error, a panic), collectors undo their changes.
        let _guard = RestoreOnDrop(scraper.clone());
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(
            address = %addr,
            path = %cli.args.telemetry_path,
            tls = web.tls.is_some(),
            basic_auth = web.guard.requires_auth(),
            collectors = %scraper.names().join(","),
            version = packetpath_exporter::scrape::VERSION,
            "listening"
        );
        let app = web.guard.protect(server::router(
            scraper.clone(),
            &cli.args.telemetry_path,
            cli.args.max_requests as usize,
        ));
        let restore = || scraper.shutdown();
        let http = server::Http {
            header_timeout: cli.args.read_header_timeout,
        };
        let slots = packetpath_exporter::connections::Slots::new(
            server::connection_cap(),
            cli.args.write_timeout,
        );
        match web.tls {
            Some(tls) => {
                let listener = web::TlsListener::new(listener, tls, slots)
                    .map_err(|e| format!("listen: {e}"))?;
                server::serve_until_signal(listener, app, http, signals, restore).await
            }
            None => {
                let listener = server::PlainListener::new(listener, slots);
                server::serve_until_signal(listener, app, http, signals, restore).await
            }
        }
    })
}

/// Keeps glibc's mmap threshold at its initial 128 KiB. By default glibc raises it to the
/// size of any mmapped block freed (up to 32 MiB), and the trim threshold to twice that.
/// A scrape's large buffers (the exposition, 1.8 MB at 2,000 devices; the link list)
/// then come from the malloc arena of whichever thread builds them, a collector's or a
/// runtime worker's, and each arena keeps that memory after the scrape: with a dozen
/// threads the peak grew by several MB. With the threshold fixed, blocks of 128 KiB and
/// more are mapped when allocated and returned to the kernel when freed.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Runs every collector's shutdown when dropped; shutdown is idempotent.
struct RestoreOnDrop(std::sync::Arc<Scraper>);

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}
