//! `drops` (in progress, not in the registry yet): every packet the kernel drops, by device
//! and reason, from the kernel's drop monitor (generic netlink family `NET_DM`).

pub mod alert;
