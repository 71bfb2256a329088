//! Which devices are exported and the role each plays: the device filter
//! (`--collector.interfaces.device-include/exclude`) and the role rules, the same for
//! every collector that labels devices.

use regex::Regex;

use crate::roles::{Role, RoleRules};

/// The flags behind [`Devices`]; they keep the `interfaces` collector's names, where they
/// began, but apply to every collector that labels devices.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// Only export devices whose name matches this regex (unanchored).
    #[arg(id = "collector.interfaces.device-include", long = "collector.interfaces.device-include", value_name = "REGEX", value_parser = parse_regex)]
    pub include: Option<Regex>,

    /// Do not export devices whose name matches this regex (unanchored).
    #[arg(id = "collector.interfaces.device-exclude", long = "collector.interfaces.device-exclude", value_name = "REGEX", value_parser = parse_regex)]
    pub exclude: Option<Regex>,

    /// Devices matching this regex have role "tunnel"; replaces the built-in tunnel name patterns.
    #[arg(id = "collector.interfaces.tunnel-regex", long = "collector.interfaces.tunnel-regex", value_name = "REGEX", value_parser = parse_regex)]
    pub tunnel_regex: Option<Regex>,

    /// Devices matching this regex have role "vm"; replaces the built-in tap*/vnet* patterns.
    #[arg(id = "collector.interfaces.vm-regex", long = "collector.interfaces.vm-regex", value_name = "REGEX", value_parser = parse_regex)]
    pub vm_regex: Option<Regex>,
}

/// A regex flag's value; regex errors span lines (a caret diagram), the CLI promises one.
pub fn parse_regex(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| {
        e.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// The device filter and the role rules.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    pub include: Option<Regex>,
    pub exclude: Option<Regex>,
    pub roles: RoleRules,
}

impl From<&DeviceArgs> for Devices {
    fn from(a: &DeviceArgs) -> Self {
        Devices {
            include: a.include.clone(),
            exclude: a.exclude.clone(),
            roles: RoleRules {
                tunnel: a.tunnel_regex.clone(),
                vm: a.vm_regex.clone(),
            },
        }
    }
}

impl Devices {
    /// Whether a device passes the include/exclude filter.
    pub fn wants(&self, device: &str) -> bool {
        self.include.as_ref().is_none_or(|re| re.is_match(device))
            && !self.exclude.as_ref().is_some_and(|re| re.is_match(device))
    }

    /// The device's role from its name and link kind.
    pub fn role(&self, name: &str, kind: Option<&str>) -> Role {
        self.roles.classify(name, kind)
    }
}
