//! The cached copy of the Open vSwitch database's `Interface`, `Bridge`, `Open_vSwitch`
//! and `Datapath` tables (the columns below), kept up to date from the `monitor` reply and
//! `update` notifications (RFC 7047 §4.1.5, §4.1.6): pure, no I/O.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// The Interface columns the exporter asks for; never `statistics`, which ovs-vswitchd
/// rewrites every few seconds.
pub const COLUMNS: [&str; 3] = ["name", "external_ids", "error"];
/// The Bridge columns: ovn-controller keeps each local port's conntrack zone in the
/// integration bridge's external_ids (`ct-zone-<logical port>`); ovs-vswitchd records the
/// version of each bridge's datapath in `datapath_version` (the Datapath table's column of
/// that name is left empty).
pub const BRIDGE_COLUMNS: [&str; 4] = ["name", "external_ids", "datapath_type", "datapath_version"];
/// The Open_vSwitch (one row) columns: what the node runs. `ovs_version` and `db_version`
/// are written by the distribution's start script (ovs-ctl), `datapath_types` and
/// `datapaths` by ovs-vswitchd; `external_ids:system-id` is OVN's chassis name.
pub const SYSTEM_COLUMNS: [&str; 5] = [
    "ovs_version",
    "db_version",
    "datapath_types",
    "datapaths",
    "external_ids",
];
/// The Datapath columns (OVS 2.14 and later; rows exist where something, ovn-controller
/// say, configured a datapath type): ovs-vswitchd records what the datapath supports. It
/// does not write `datapath_version` (up to 3.5 at least): see [`Table::datapath_version`].
pub const DATAPATH_COLUMNS: [&str; 2] = ["datapath_version", "capabilities"];
/// Every table the client follows, with the columns it asks of each; tables and columns
/// the server's schema lacks (older Open vSwitch) are left out of the request.
pub const MONITORED: [(&str, &[&str]); 4] = [
    ("Interface", &COLUMNS),
    ("Bridge", &BRIDGE_COLUMNS),
    ("Open_vSwitch", &SYSTEM_COLUMNS),
    ("Datapath", &DATAPATH_COLUMNS),
];

/// Longest label value kept; longer ones are cut (at a character boundary).
pub const MAX_VALUE: usize = 128;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub external_ids: BTreeMap<String, String>,
    pub error: Option<String>,
}

impl Interface {
    pub fn id(&self, key: &str) -> Option<&str> {
        self.external_ids.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub external_ids: BTreeMap<String, String>,
    /// As configured: empty is `system`.
    pub datapath_type: String,
    pub datapath_version: String,
}

/// The Open_vSwitch row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct System {
    pub ovs_version: String,
    pub db_version: String,
    /// Sorted.
    pub datapath_types: Vec<String>,
    /// Datapath type → the Datapath row's UUID.
    pub datapaths: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Datapath {
    pub version: String,
    pub capabilities: BTreeMap<String, String>,
}

/// Why an update could not be applied; the connection is then synchronised again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("ovsdb: table-updates is not an object")]
    NotObject,
    #[error("ovsdb: {table} row {uuid}: {what}")]
    Row {
        table: &'static str,
        uuid: String,
        what: &'static str,
    },
}

fn cut(s: &str) -> String {
    crate::render::cut(s, MAX_VALUE)
}

/// An OVSDB map, `["map", [[k, v], ...]]`, its values read by `value`.
fn pairs(v: &Value, value: impl Fn(&Value) -> Option<String>) -> Option<BTreeMap<String, String>> {
    let pairs = match v.as_array()?.as_slice() {
        [tag, pairs] if tag == "map" => pairs.as_array()?,
        _ => return None,
    };
    pairs
        .iter()
        .map(|p| match p.as_array()?.as_slice() {
            [k, v] => Some((cut(k.as_str()?), value(v)?)),
            _ => None,
        })
        .collect()
}

/// An OVSDB string map.
fn map(v: &Value) -> Option<BTreeMap<String, String>> {
    pairs(v, |v| v.as_str().map(cut))
}

/// A string set: `["set", [...]]`, or one bare string (RFC 7047 §5.1), sorted.
fn string_set(v: &Value) -> Option<Vec<String>> {
    let mut out: Vec<String> = match v.as_str() {
        Some(one) => vec![cut(one)],
        None => match v.as_array()?.as_slice() {
            [tag, items] if tag == "set" => items
                .as_array()?
                .iter()
                .map(|i| i.as_str().map(cut))
                .collect::<Option<_>>()?,
            _ => return None,
        },
    };
    out.sort();
    Some(out)
}

/// A map from strings to row references: `["map", [[k, ["uuid", u]], ...]]`.
fn uuid_map(v: &Value) -> Option<BTreeMap<String, String>> {
    pairs(v, |r| match r.as_array()?.as_slice() {
        [tag, u] if tag == "uuid" => Some(u.as_str()?.to_owned()),
        _ => None,
    })
}

/// An optional string column: `"text"`, or `["set", []]` when empty.
fn optional_string(v: &Value) -> Option<Option<String>> {
    if let Some(s) = v.as_str() {
        return Some(Some(cut(s)));
    }
    match v.as_array()?.as_slice() {
        [tag, items] if tag == "set" => match items.as_array()?.as_slice() {
            [] => Some(None),
            [one] => Some(Some(cut(one.as_str()?))),
            _ => None,
        },
        _ => None,
    }
}

/// Interfaces, bridges, the Open_vSwitch row and datapaths by row UUID.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    pub rows: HashMap<String, Interface>,
    pub bridges: HashMap<String, Bridge>,
    pub systems: HashMap<String, System>,
    pub datapaths: HashMap<String, Datapath>,
}

/// The rows of one table in `table-updates`, if it has any.
fn rows<'a>(tables: &'a Columns, name: &str) -> Result<Option<&'a Columns>, UpdateError> {
    tables
        .get(name)
        .map(|r| r.as_object().ok_or(UpdateError::NotObject))
        .transpose()
}

type Columns = serde_json::Map<String, Value>;
type Bad<'a> = &'a dyn Fn(&'static str) -> UpdateError;

/// Applies one table's rows of `table-updates` to `into`; `set` reads a row's columns.
fn apply_rows<R: Default>(
    tables: &Columns,
    table: &'static str,
    into: &mut HashMap<String, R>,
    set: impl Fn(&mut R, &Columns, Bad) -> Result<(), UpdateError>,
) -> Result<(), UpdateError> {
    for (uuid, change) in rows(tables, table)?.into_iter().flatten() {
        let bad = |what| UpdateError::Row {
            table,
            uuid: uuid.clone(),
            what,
        };
        let Some(new) = change.get("new") else {
            into.remove(uuid);
            continue;
        };
        let new = new.as_object().ok_or_else(|| bad("new is not an object"))?;
        set(into.entry(uuid.clone()).or_default(), new, &bad)?;
    }
    Ok(())
}

/// The `name` and `external_ids` columns both tables have.
fn name_and_ids(
    name: &mut String,
    ids: &mut BTreeMap<String, String>,
    new: &Columns,
    bad: Bad,
) -> Result<(), UpdateError> {
    if let Some(n) = new.get("name") {
        *name = cut(n.as_str().ok_or_else(|| bad("name is not a string"))?);
    }
    if let Some(v) = new.get("external_ids") {
        *ids = map(v).ok_or_else(|| bad("external_ids is not a map"))?;
    }
    Ok(())
}

impl Table {
    /// Applies `table-updates` (the monitor reply, or an `update`'s second parameter).
    /// A row whose `new` is absent is deleted; columns `new` leaves out keep their value.
    pub fn apply(&mut self, updates: &Value) -> Result<(), UpdateError> {
        let tables = updates.as_object().ok_or(UpdateError::NotObject)?;
        apply_rows(tables, "Interface", &mut self.rows, |row, new, bad| {
            name_and_ids(&mut row.name, &mut row.external_ids, new, bad)?;
            if let Some(e) = new.get("error") {
                row.error = optional_string(e).ok_or_else(|| bad("error is not a string"))?;
            }
            Ok(())
        })?;
        apply_rows(tables, "Bridge", &mut self.bridges, |row, new, bad| {
            name_and_ids(&mut row.name, &mut row.external_ids, new, bad)?;
            for (column, into) in [
                ("datapath_type", &mut row.datapath_type),
                ("datapath_version", &mut row.datapath_version),
            ] {
                if let Some(v) = new.get(column) {
                    *into = optional_string(v)
                        .ok_or_else(|| bad("a datapath column is not a string"))?
                        .unwrap_or_default();
                }
            }
            Ok(())
        })?;
        apply_rows(
            tables,
            "Open_vSwitch",
            &mut self.systems,
            |row, new, bad| {
                let text = |c: &'static str, into: &mut String| -> Result<(), UpdateError> {
                    if let Some(v) = new.get(c) {
                        *into = optional_string(v)
                            .ok_or_else(|| bad("a version is not a string"))?
                            .unwrap_or_default();
                    }
                    Ok(())
                };
                text("ovs_version", &mut row.ovs_version)?;
                text("db_version", &mut row.db_version)?;
                if let Some(v) = new.get("datapath_types") {
                    row.datapath_types =
                        string_set(v).ok_or_else(|| bad("datapath_types is not a string set"))?;
                }
                if let Some(v) = new.get("datapaths") {
                    row.datapaths = uuid_map(v).ok_or_else(|| bad("datapaths is not a map"))?;
                }
                if let Some(v) = new.get("external_ids") {
                    row.external_ids = map(v).ok_or_else(|| bad("external_ids is not a map"))?;
                }
                Ok(())
            },
        )?;
        apply_rows(tables, "Datapath", &mut self.datapaths, |row, new, bad| {
            if let Some(v) = new.get("datapath_version") {
                row.version = optional_string(v)
                    .ok_or_else(|| bad("datapath_version is not a string"))?
                    .unwrap_or_default();
            }
            if let Some(v) = new.get("capabilities") {
                row.capabilities = map(v).ok_or_else(|| bad("capabilities is not a map"))?;
            }
            Ok(())
        })
    }

    /// The Open_vSwitch row (the database has one; the first by UUID if it had more).
    pub fn system(&self) -> Option<&System> {
        self.systems
            .iter()
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, s)| s)
    }

    /// The version of datapath type `kind` (`system`, `netdev`): the Datapath row's own
    /// column when something wrote it, else what ovs-vswitchd recorded on the bridges of
    /// that type (`<unknown>` for the kernel's module, `<built-in>` for the userspace
    /// datapath); empty when neither says, or the bridges disagree.
    pub fn datapath_version(&self, kind: &str, row: &Datapath) -> String {
        if !row.version.is_empty() {
            return row.version.clone();
        }
        let versions: std::collections::BTreeSet<&str> = self
            .bridges
            .values()
            .filter(|b| match b.datapath_type.as_str() {
                "" => kind == "system",
                t => t == kind,
            })
            .map(|b| b.datapath_version.as_str())
            .filter(|v| !v.is_empty())
            .collect();
        match versions.into_iter().collect::<Vec<_>>().as_slice() {
            [one] => (*one).to_owned(),
            _ => String::new(),
        }
    }

    /// The conntrack zone ovn-controller gave a logical port (`ct-zone-<port>` in a
    /// bridge's external_ids); `None` when no bridge names one, or bridges disagree.
    pub fn ct_zone(&self, port: &str) -> Option<u16> {
        let key = format!("ct-zone-{port}");
        let mut zones = self
            .bridges
            .values()
            .filter_map(|b| b.external_ids.get(&key))
            .map(|v| v.parse::<u16>().ok());
        let first = zones.next()??;
        zones.all(|z| z == Some(first)).then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn os_vif(uuid: &str, name: &str) -> Value {
        json!({"Interface": {uuid: {"new": {
            "name": name,
            "external_ids": ["map", [
                ["attached-mac", "fa:16:3e:11:22:33"],
                ["iface-id", "519d7cc4-7593-4944-af80-6a8a9b4f4e9a"],
                ["iface-status", "active"],
                ["vm-uuid", "0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f"]
            ]],
            "error": ["set", []]
        }}}})
    }

    #[test]
    fn rows_are_inserted_changed_and_deleted() {
        let mut t = Table::default();
        t.apply(&os_vif("u1", "tap519d7cc4-75")).unwrap();
        let r = &t.rows["u1"];
        assert_eq!(r.name, "tap519d7cc4-75");
        assert_eq!(
            r.id("iface-id"),
            Some("519d7cc4-7593-4944-af80-6a8a9b4f4e9a")
        );
        assert_eq!(r.error, None);
        // A modify carries the changed columns: the error appears, the rest stays.
        t.apply(&json!({"Interface": {"u1": {
            "old": {"error": ["set", []]},
            "new": {"error": "could not open network device tap519d7cc4-75 (No such device)"}
        }}}))
        .unwrap();
        let r = &t.rows["u1"];
        assert_eq!(r.name, "tap519d7cc4-75");
        assert_eq!(
            r.error.as_deref(),
            Some("could not open network device tap519d7cc4-75 (No such device)")
        );
        t.apply(&json!({"Interface": {"u1": {"old": {"name": "tap519d7cc4-75"}}}}))
            .unwrap();
        assert!(t.rows.is_empty());
        // Other tables are ignored.
        t.apply(&json!({"Port": {"p1": {"new": {"name": "br-int"}}}}))
            .unwrap();
        assert!(t.rows.is_empty() && t.bridges.is_empty());
    }

    #[test]
    fn values_are_cut_and_bad_rows_named() {
        let mut t = Table::default();
        let long = "é".repeat(100);
        t.apply(&json!({"Interface": {"u2": {"new": {"name": long}}}}))
            .unwrap();
        assert_eq!(t.rows["u2"].name.len(), 128);
        let e = t
            .apply(&json!({"Interface": {"u3": {"new": {"external_ids": "x"}}}}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ovsdb: Interface row u3: external_ids is not a map"
        );
        assert_eq!(t.apply(&json!([1])).unwrap_err(), UpdateError::NotObject);
    }

    #[test]
    fn the_open_vswitch_row_and_its_datapaths() {
        let mut t = Table::default();
        // ovs-vswitchd's own columns, before the start script wrote the versions.
        t.apply(&json!({"Open_vSwitch": {"o1": {"new": {
            "datapath_types": "system",
            "datapaths": ["map", []],
            "external_ids": ["map", [["system-id", "compute-1"]]]
        }}}}))
        .unwrap();
        let s = t.system().unwrap();
        assert_eq!((s.ovs_version.as_str(), s.db_version.as_str()), ("", ""));
        assert_eq!(s.datapath_types, ["system"]);
        t.apply(&json!({
            "Open_vSwitch": {"o1": {"new": {
                "ovs_version": "3.1.0", "db_version": "8.3.1",
                "datapath_types": ["set", ["system", "netdev"]],
                "datapaths": ["map", [["system", ["uuid", "d1"]]]]
            }}},
            "Datapath": {"d1": {"new": {
                "datapath_version": "<built-in>",
                "capabilities": ["map", [["ct_state", "true"], ["max_vlan_headers", "2"]]]
            }}}
        }))
        .unwrap();
        let s = t.system().unwrap();
        assert_eq!(s.ovs_version, "3.1.0");
        assert_eq!(s.datapath_types, ["netdev", "system"]);
        assert_eq!(s.datapaths["system"], "d1");
        assert_eq!(s.external_ids["system-id"], "compute-1");
        assert_eq!(t.datapaths["d1"].version, "<built-in>");
        assert_eq!(t.datapaths["d1"].capabilities["max_vlan_headers"], "2");
        assert_eq!(
            t.datapath_version("system", &t.datapaths["d1"]),
            "<built-in>"
        );
        let e = t
            .apply(&json!({"Open_vSwitch": {"o1": {"new": {"datapaths": ["map", [["system", "d1"]]]}}}}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ovsdb: Open_vSwitch row o1: datapaths is not a map"
        );
        let e = t
            .apply(&json!({"Open_vSwitch": {"o1": {"new": {"ovs_version": 3}}}}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ovsdb: Open_vSwitch row o1: a version is not a string"
        );
    }

    #[test]
    fn a_datapath_version_from_the_bridges_of_its_type() {
        let mut t = Table::default();
        // What ovn-controller and ovs-vswitchd leave: a Datapath row without a version,
        // the version on each bridge (br-int's type is the default, system).
        t.apply(&json!({
            "Bridge": {
                "b1": {"new": {"name": "br-int", "datapath_type": "", "datapath_version": "<unknown>"}},
                "b2": {"new": {"name": "br-ex", "datapath_type": "system", "datapath_version": "<unknown>"}},
                "b3": {"new": {"name": "br-dpdk", "datapath_type": "netdev", "datapath_version": "<built-in>"}}
            },
            "Datapath": {"d1": {"new": {"datapath_version": "", "capabilities": ["map", []]}}}
        }))
        .unwrap();
        let row = t.datapaths["d1"].clone();
        assert_eq!(t.datapath_version("system", &row), "<unknown>");
        assert_eq!(t.datapath_version("netdev", &row), "<built-in>");
        assert_eq!(t.datapath_version("afxdp", &row), "");
        // Bridges of one type that disagree say nothing.
        t.apply(&json!({"Bridge": {"b2": {"new": {"datapath_version": "2.17.9"}}}}))
            .unwrap();
        assert_eq!(t.bridges["b2"].datapath_type, "system");
        assert_eq!(t.datapath_version("system", &row), "");
        let e = t
            .apply(&json!({"Bridge": {"b1": {"new": {"datapath_version": 1}}}}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ovsdb: Bridge row b1: a datapath column is not a string"
        );
    }

    #[test]
    fn zones_come_from_bridges_and_disagreement_is_none() {
        let mut t = Table::default();
        t.apply(&json!({"Bridge": {"b1": {"new": {"name": "br-int", "external_ids": ["map", [
            ["ct-zone-vm1", "3"], ["ct-zone-vm3", "4"], ["ct-zone-lr0_dnat", "1"], ["ct-zone-bad", "x"]
        ]]}}}}))
        .unwrap();
        assert_eq!(t.bridges["b1"].name, "br-int");
        assert_eq!(t.ct_zone("vm1"), Some(3));
        assert_eq!(t.ct_zone("vm3"), Some(4));
        assert_eq!(t.ct_zone("vm2"), None);
        assert_eq!(t.ct_zone("bad"), None);
        // A second bridge agreeing changes nothing; one disagreeing makes it unknown.
        t.apply(
            &json!({"Bridge": {"b2": {"new": {"name": "br-ex", "external_ids": ["map", [
                ["ct-zone-vm1", "3"], ["ct-zone-vm3", "9"]
            ]]}}}}),
        )
        .unwrap();
        assert_eq!(t.ct_zone("vm1"), Some(3));
        assert_eq!(t.ct_zone("vm3"), None);
        // A modify replaces the whole map; a delete removes the bridge.
        t.apply(
            &json!({"Bridge": {"b1": {"new": {"external_ids": ["map", [["ct-zone-vm1", "7"]]]}}}}),
        )
        .unwrap();
        assert_eq!(t.bridges["b1"].name, "br-int");
        assert_eq!(t.ct_zone("vm1"), None);
        t.apply(&json!({"Bridge": {"b2": {"old": {}}}})).unwrap();
        assert_eq!(t.ct_zone("vm1"), Some(7));
        let e = t
            .apply(&json!({"Bridge": {"b3": {"new": {"external_ids": 5}}}}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ovsdb: Bridge row b3: external_ids is not a map"
        );
    }
}
