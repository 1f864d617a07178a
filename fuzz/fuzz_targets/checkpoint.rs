//! Arbitrary bytes as a checkpoint file: header, length, checksum, payload,
//! then every shard snapshot restored into a fresh shard and run on
//! (`freshet::fuzzing::read_checkpoint`). Errors are fine, panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = freshet::fuzzing::read_checkpoint(data);
});
