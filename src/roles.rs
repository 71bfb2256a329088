//! Which part of the packet path an interface plays: the tunnel side, a VM's port, OVS
//! itself, or anything else. Shared by every collector that labels devices.

use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Tunnel,
    Vm,
    Ovs,
    Other,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Tunnel => "tunnel",
            Role::Vm => "vm",
            Role::Ovs => "ovs",
            Role::Other => "other",
        }
    }
}

/// Link kinds (IFLA_INFO_KIND) that encapsulate traffic between hypervisors.
const TUNNEL_KINDS: &[&str] = &[
    "geneve", "vxlan", "gre", "gretap", "ip6gre", "erspan", "stt",
];
/// Names OVS gives the tunnel devices it creates (it reports some as plain netdevs).
const TUNNEL_PREFIXES: &[&str] = &["genev_sys_", "vxlan_sys_", "gre_sys", "stt_sys_"];
/// libvirt/nova name VM ports tapXXXX (OpenStack) or vnetN (plain libvirt).
const VM_PREFIXES: &[&str] = &["tap", "vnet"];

#[derive(Debug, Clone, Default)]
pub struct RoleRules {
    /// Replaces the built-in tunnel *name* patterns and wins over every other rule.
    pub tunnel: Option<Regex>,
    /// Replaces the built-in VM name patterns and wins over the kind rules.
    pub vm: Option<Regex>,
}

impl RoleRules {
    pub fn classify(&self, name: &str, kind: Option<&str>) -> Role {
        if self.tunnel.as_ref().is_some_and(|re| re.is_match(name)) {
            return Role::Tunnel;
        }
        if self.vm.as_ref().is_some_and(|re| re.is_match(name)) {
            return Role::Vm;
        }
        if let Some(kind) = kind {
            if TUNNEL_KINDS.contains(&kind) {
                return Role::Tunnel;
            }
            if kind == "openvswitch" {
                return Role::Ovs;
            }
        }
        if self.tunnel.is_none() && TUNNEL_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return Role::Tunnel;
        }
        if self.vm.is_none() && VM_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return Role::Vm;
        }
        Role::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_rules() {
        let r = RoleRules::default();
        assert_eq!(r.classify("genev_sys_6081", None), Role::Tunnel);
        assert_eq!(r.classify("genev_sys_6081", Some("geneve")), Role::Tunnel);
        assert_eq!(r.classify("vx0", Some("vxlan")), Role::Tunnel);
        assert_eq!(r.classify("gre_sys", None), Role::Tunnel);
        assert_eq!(r.classify("tap1a2b3c4d-5e", Some("tun")), Role::Vm);
        assert_eq!(r.classify("vnet12", Some("tun")), Role::Vm);
        assert_eq!(r.classify("ovs-system", Some("openvswitch")), Role::Ovs);
        assert_eq!(r.classify("br-int", Some("openvswitch")), Role::Ovs);
        assert_eq!(r.classify("eth0", None), Role::Other);
        assert_eq!(r.classify("lo", None), Role::Other);
    }

    #[test]
    fn flags_override_patterns() {
        let r = RoleRules {
            tunnel: Some(Regex::new("^uplink").unwrap()),
            vm: Some(Regex::new("^vm-").unwrap()),
        };
        assert_eq!(r.classify("uplink0", None), Role::Tunnel);
        assert_eq!(r.classify("vm-42", Some("tun")), Role::Vm);
        // The replaced name patterns no longer apply; kinds still do.
        assert_eq!(r.classify("tap0", Some("tun")), Role::Other);
        assert_eq!(r.classify("genev_sys_6081", None), Role::Other);
        assert_eq!(r.classify("genev_sys_6081", Some("geneve")), Role::Tunnel);
        // A user regex wins over the kind.
        let r = RoleRules {
            tunnel: None,
            vm: Some(Regex::new("^vx").unwrap()),
        };
        assert_eq!(r.classify("vx0", Some("vxlan")), Role::Vm);
    }
}
