//! The `loadtest` binary: everything it does is in the library (`lib.rs`), so that
//! `cargo xtask` can read the reports it writes with the types that wrote them.

fn main() {
    roomcast_loadtest::main();
}
