//! A small OVSDB client (RFC 7047, JSON-RPC over the database's unix socket): the
//! schema first (`get_schema`), then one `monitor` of the columns in
//! [`MONITORED`] that the schema has (the Interface table's identity columns, the Bridge
//! table's external_ids, what the Open_vSwitch and Datapath rows say the node runs),
//! `update` notifications applied as they come, the server's `echo` answered. A scrape reads the cache and never queries
//! the database. When the server goes away the client reconnects with backoff and
//! synchronises in full again.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::table::{MONITORED, Table};

/// The id of our one monitor request; replies to anything else are not ours.
const MONITOR_ID: u64 = 1;
/// The id of the `get_schema` request that comes before it.
const SCHEMA_ID: u64 = 2;
const DATABASE: &str = "Open_vSwitch";
/// A monitor reply or an update larger than this is refused (and the connection made
/// again): 4,096 ports are well under 8 MiB.
const MAX_MESSAGE: usize = 64 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What scrapes see.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub table: Table,
    /// Why there is no synchronised copy now: (sentence, the source is simply absent).
    pub down: Option<(String, bool)>,
    /// Changes with every change of the copy, so readers can tell when to look again.
    pub generation: u64,
}

pub struct Client {
    pub view: Mutex<View>,
    pub stop: AtomicBool,
    socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Connect(String, bool),
    #[error("ovsdb-server at {0} closed the connection (restarted or stopped?)")]
    Closed(String),
    #[error("reading from ovsdb-server at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("ovsdb-server at {path} sent {what}")]
    Protocol { path: String, what: String },
}

impl SessionError {
    fn absent(&self) -> bool {
        matches!(self, SessionError::Connect(_, true))
    }
}

fn connect_error(path: &Path, e: &std::io::Error) -> SessionError {
    let p = path.display();
    match e.kind() {
        ErrorKind::NotFound => SessionError::Connect(
            format!(
                "no ovsdb-server socket at {p} (Open vSwitch not running here, or another --collector.ovsdb.socket)"
            ),
            true,
        ),
        ErrorKind::PermissionDenied => SessionError::Connect(
            format!(
                "permission denied on {p}: the socket is 0770 root:openvswitch on Debian; run as root or in group openvswitch"
            ),
            false,
        ),
        ErrorKind::ConnectionRefused => SessionError::Connect(
            format!("nothing listens on {p} (ovsdb-server stopped and left its socket)"),
            false,
        ),
        _ => SessionError::Connect(format!("connecting to {p}: {e}"), false),
    }
}

impl Client {
    pub fn new(socket: PathBuf) -> Arc<Client> {
        Arc::new(Client {
            view: Mutex::new(View {
                table: Table::default(),
                // Starting up is not a failure worth a warning.
                down: Some(("not connected to ovsdb-server yet".to_owned(), true)),
                generation: 0,
            }),
            stop: AtomicBool::new(false),
            socket,
        })
    }

    pub fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection thread: connects, synchronises, follows updates; on any failure
    /// says why (once, in the view) and tries again with backoff.
    pub fn run(self: Arc<Self>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                self.view().down = Some((format!("cannot start the OVSDB client: {e}"), false));
                return;
            }
        };
        rt.block_on(async {
            let mut backoff = BACKOFF_MIN;
            while !self.stop.load(Ordering::Relaxed) {
                let err = self.session(&mut backoff).await;
                {
                    let mut v = self.view();
                    v.table = Table::default();
                    v.down = Some((err.to_string(), err.absent()));
                    v.generation += 1;
                }
                // Sleep in short steps, so a stop is seen.
                let mut slept = Duration::ZERO;
                while slept < backoff && !self.stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    slept += Duration::from_millis(100);
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        });
    }

    async fn session(&self, backoff: &mut Duration) -> SessionError {
        let path = self.socket.display().to_string();
        let mut s = match UnixStream::connect(&self.socket).await {
            Ok(s) => s,
            Err(e) => return connect_error(&self.socket, &e),
        };
        let io = |source| SessionError::Io {
            path: path.clone(),
            source,
        };
        let request = json!({
            "method": "get_schema",
            "params": [DATABASE],
            "id": SCHEMA_ID,
        });
        if let Err(e) = s.write_all(request.to_string().as_bytes()).await {
            return io(e);
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return SessionError::Closed(path);
            }
            let n = match tokio::time::timeout(Duration::from_millis(500), s.read(&mut chunk)).await
            {
                Err(_) => continue,
                Ok(Err(e)) => return io(e),
                Ok(Ok(0)) => return SessionError::Closed(path),
                Ok(Ok(n)) => n,
            };
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            let (messages, used) = match split_messages(&buf) {
                Ok(x) => x,
                Err(what) => return SessionError::Protocol { path, what },
            };
            buf.drain(..used);
            if buf.len() > MAX_MESSAGE {
                return SessionError::Protocol {
                    path,
                    what: format!("a message over {MAX_MESSAGE} bytes"),
                };
            }
            for m in messages {
                match self.handle(&m) {
                    Ok(Some(reply)) => {
                        if let Err(e) = s.write_all(reply.to_string().as_bytes()).await {
                            return io(e);
                        }
                    }
                    Ok(None) => {}
                    Err(what) => return SessionError::Protocol { path, what },
                }
            }
            // The server answers: a later failure starts its backoff afresh.
            *backoff = BACKOFF_MIN;
        }
    }

    /// Applies one message; returns what to answer, if anything.
    fn handle(&self, m: &Value) -> Result<Option<Value>, String> {
        match m.get("method").and_then(Value::as_str) {
            Some("echo") => Ok(Some(json!({
                "id": m.get("id").cloned().unwrap_or(Value::Null),
                "result": m.get("params").cloned().unwrap_or(Value::Null),
                "error": null,
            }))),
            Some("update") => {
                let updates = m
                    .get("params")
                    .and_then(|p| p.get(1))
                    .ok_or("an update without table-updates")?;
                let mut v = self.view();
                if v.down.is_some() {
                    return Ok(None);
                }
                v.table.apply(updates).map_err(|e| e.to_string())?;
                v.generation += 1;
                Ok(None)
            }
            Some(_) => Ok(None),
            None if m.get("id").and_then(Value::as_u64) == Some(SCHEMA_ID) => {
                if let Some(e) = m.get("error").filter(|e| !e.is_null()) {
                    return Err(format!("an error to the get_schema request: {e}"));
                }
                let schema = m.get("result").ok_or("a get_schema reply without result")?;
                Ok(Some(monitor_request(schema)))
            }
            None if m.get("id").and_then(Value::as_u64) == Some(MONITOR_ID) => {
                if let Some(e) = m.get("error").filter(|e| !e.is_null()) {
                    return Err(format!("an error to the monitor request: {e}"));
                }
                let mut table = Table::default();
                table
                    .apply(m.get("result").ok_or("a monitor reply without result")?)
                    .map_err(|e| e.to_string())?;
                let mut v = self.view();
                v.table = table;
                v.down = None;
                v.generation += 1;
                Ok(None)
            }
            None => Ok(None),
        }
    }
}

/// The `monitor` request for the tables and columns of [`MONITORED`] that `schema` (a
/// `get_schema` result) has; a schema without tables asks for them all.
pub fn monitor_request(schema: &Value) -> Value {
    let tables = schema.get("tables").and_then(Value::as_object);
    let mut monitor = serde_json::Map::new();
    for (table, columns) in MONITORED {
        let have = tables.map(|t| t.get(table).and_then(|t| t.get("columns")));
        let columns: Vec<&str> = match have {
            None => columns.to_vec(),
            Some(None) => continue,
            Some(Some(have)) => columns
                .iter()
                .copied()
                .filter(|c| have.get(c).is_some())
                .collect(),
        };
        if !columns.is_empty() {
            monitor.insert(table.into(), json!({ "columns": columns }));
        }
    }
    json!({
        "method": "monitor",
        "params": [DATABASE, null, monitor],
        "id": MONITOR_ID,
    })
}

/// The complete JSON values at the start of `buf` (the server writes them back to back)
/// and how many bytes they took; an incomplete one at the end waits for more bytes.
pub fn split_messages(buf: &[u8]) -> Result<(Vec<Value>, usize), String> {
    let mut out = Vec::new();
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    let mut used = 0;
    loop {
        match it.next() {
            None => return Ok((out, buf.len())),
            Some(Ok(v)) => {
                out.push(v);
                used = it.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => return Ok((out, used)),
            Some(Err(e)) => return Err(format!("JSON that does not parse: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_written_back_to_back_are_split_and_a_partial_one_waits() {
        let buf = br#"{"id":1,"result":{}}{"method":"echo","params":[],"id":"echo"}{"met"#;
        let (msgs, used) = split_messages(buf).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(&buf[used..], br#"{"met"#);
        assert!(split_messages(b"{]").is_err());
    }

    #[test]
    fn the_monitor_asks_only_for_what_the_schema_has() {
        // An Open vSwitch 2.13 schema: no Datapath table, no datapaths column.
        let old = json!({"tables": {
            "Interface": {"columns": {"name": {}, "external_ids": {}, "error": {}, "mtu": {}}},
            "Bridge": {"columns": {"name": {}, "external_ids": {}}},
            "Open_vSwitch": {"columns": {"ovs_version": {}, "db_version": {}, "datapath_types": {}, "external_ids": {}}}
        }});
        let m = monitor_request(&old);
        assert_eq!(
            m["params"],
            json!(["Open_vSwitch", null, {
                "Interface": {"columns": ["name", "external_ids", "error"]},
                "Bridge": {"columns": ["name", "external_ids"]},
                "Open_vSwitch": {"columns": ["ovs_version", "db_version", "datapath_types", "external_ids"]}
            }])
        );
        assert_eq!(m["id"], 1);
        // A schema that says nothing of tables: everything is asked for.
        let all = monitor_request(&json!({}));
        assert_eq!(
            all["params"][2]["Datapath"]["columns"],
            json!(["datapath_version", "capabilities"])
        );
    }

    #[test]
    fn echo_is_answered_and_updates_wait_for_the_first_sync() {
        let c = Client::new("/nonexistent".into());
        let reply = c
            .handle(&json!({"method": "echo", "params": ["x"], "id": "echo"}))
            .unwrap()
            .unwrap();
        assert_eq!(reply, json!({"id": "echo", "result": ["x"], "error": null}));
        // Before the monitor reply an update has nothing to apply to.
        let update = json!({"method": "update", "params": [null, {"Interface": {"u": {"new": {"name": "tap1"}}}}], "id": null});
        c.handle(&update).unwrap();
        assert!(c.view().table.rows.is_empty());
        // The schema's answer is the monitor request.
        let monitor = c
            .handle(&json!({"id": 2, "result": {"tables": {}}, "error": null}))
            .unwrap()
            .unwrap();
        assert_eq!(monitor["method"], "monitor");
        c.handle(&json!({"id": 1, "result": {}, "error": null}))
            .unwrap();
        assert!(c.view().down.is_none());
        c.handle(&update).unwrap();
        assert_eq!(c.view().table.rows["u"].name, "tap1");
        assert!(
            c.handle(&json!({"id": 1, "result": null, "error": "unknown database"}))
                .is_err()
        );
    }
}
