//! The `freshet` binary: the allocator, then the command line of the
//! `freshet` library (`src/lib.rs`).

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    freshet::main()
}
