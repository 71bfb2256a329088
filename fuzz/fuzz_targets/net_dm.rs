#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| packetpath_exporter::fuzzing::net_dm(data));
