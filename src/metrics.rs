//! The names of the series that code other than their collector reads back (`diagnose`
//! and the tests), defined once: the collectors export them under these names.

pub const INTERFACE_RECEIVE_PACKETS: &str = "packetpath_interface_receive_packets_total";
pub const INTERFACE_TRANSMIT_PACKETS: &str = "packetpath_interface_transmit_packets_total";
pub const INTERFACE_RECEIVE_ERRORS: &str = "packetpath_interface_receive_errors_total";
pub const INTERFACE_TRANSMIT_ERRORS: &str = "packetpath_interface_transmit_errors_total";
pub const INTERFACE_RECEIVE_DROPPED: &str = "packetpath_interface_receive_dropped_total";
pub const INTERFACE_TRANSMIT_DROPPED: &str = "packetpath_interface_transmit_dropped_total";
pub const INTERFACE_OFFLOAD_ACTIVE: &str = "packetpath_interface_offload_active";

pub const CONNTRACK_INVALID: &str = "packetpath_conntrack_invalid_total";
pub const CONNTRACK_DROP: &str = "packetpath_conntrack_drop_total";
pub const CONNTRACK_INSERT_FAILED: &str = "packetpath_conntrack_insert_failed_total";
pub const CONNTRACK_EARLY_DROP: &str = "packetpath_conntrack_early_drop_total";
pub const CONNTRACK_SYSCTL: &str = "packetpath_conntrack_sysctl";
pub const CONNTRACK_SOURCE_INFO: &str = "packetpath_conntrack_source_info";

/// The `conntrack_invalid` collector's series share this prefix (with nothing else but
/// [`CONNTRACK_INVALID`], the `conntrack` collector's).
pub const CONNTRACK_INVALID_PREFIX: &str = "packetpath_conntrack_invalid_";
pub const CONNTRACK_INVALID_PACKETS: &str = "packetpath_conntrack_invalid_packets_total";

pub const OVS_DATAPATH_LOOKUPS: &str = "packetpath_ovs_datapath_lookups_total";
pub const OVS_DROP_FLOW_PACKETS: &str = "packetpath_ovs_drop_flow_packets_total";

pub const VM_PORT_INFO: &str = "packetpath_vm_port_info";
/// Drop-flow packets attributed to the VM port they were heading to (`ovs_flows`).
pub const VM_PORT_INBOUND_DROP_PACKETS: &str = "packetpath_vm_port_inbound_drop_packets_total";
pub const VM_PORT_INBOUND_DROP_BYTES: &str = "packetpath_vm_port_inbound_drop_bytes_total";
/// Drop-flow packets that resolve to no single VM port (`ovs_flows`).
pub const VM_PORT_INBOUND_DROP_UNATTRIBUTED_PACKETS: &str =
    "packetpath_vm_port_inbound_drop_unattributed_packets_total";
pub const VM_PORT_INBOUND_DROP_UNATTRIBUTED_BYTES: &str =
    "packetpath_vm_port_inbound_drop_unattributed_bytes_total";
/// Conntrack-invalid packets attributed to a VM port through their conntrack zone
/// (`conntrack_invalid`).
pub const VM_PORT_CONNTRACK_INVALID_PACKETS: &str =
    "packetpath_vm_port_conntrack_invalid_packets_total";

/// Packets the kernel dropped, by device, role and the kernel's reason (`drops`).
pub const KERNEL_DROP_PACKETS: &str = "packetpath_kernel_drop_packets_total";
/// Packets a device's hardware dropped, as its driver reported them (`drops`).
pub const KERNEL_HARDWARE_DROP_PACKETS: &str = "packetpath_kernel_hardware_drop_packets_total";
/// Drop reports the kernel could not queue for the exporter (`drops`).
pub const KERNEL_DROP_REPORTS_LOST: &str = "packetpath_kernel_drop_reports_lost_total";
/// Times the exporter's socket overflowed and lost drop reports (`drops`).
pub const KERNEL_DROP_SOCKET_OVERRUNS: &str = "packetpath_kernel_drop_socket_overruns_total";
/// Whether the exporter's drop monitor session is running (`drops`).
pub const KERNEL_DROP_MONITOR_ACTIVE: &str = "packetpath_kernel_drop_monitor_active";

/// What the node runs: kernel, OVS module, Open vSwitch and OVN versions (`node`).
pub const NODE_INFO: &str = "packetpath_node_info";

pub const SCRAPE_COLLECTOR_SUCCESS: &str = "packetpath_scrape_collector_success";
