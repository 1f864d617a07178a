//! Arbitrary text as a config file: parsed, variables substituted, planned
//! (`freshet::fuzzing::load_config`). Ok or a config error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Config files are read as UTF-8 text; other bytes never reach the parser.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = freshet::fuzzing::load_config(text);
    }
});
