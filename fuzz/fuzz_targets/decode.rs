//! Arbitrary bytes as one chunk of event lines through the decoder of the
//! embedded default pipeline and of a pipeline with every stage, window and
//! aggregate, then through the shards (`freshet::fuzzing::decode_lines`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| freshet::fuzzing::decode_lines(data));
