//! Prints what a `server_dispatch` or `named_peer` input means (its options,
//! then its frames or structured steps), to read a crash artifact; an input
//! under a `named_peer` directory is read as one of that target's:
//!
//! ```text
//! RUSTFLAGS="--cfg fuzzing" cargo run --example describe -- artifacts/server_dispatch/crash-...
//! ```

fn main() -> std::io::Result<()> {
    for path in std::env::args_os().skip(1) {
        let data = std::fs::read(&path)?;
        let name = path.to_string_lossy();
        println!("{name}:");
        if name.contains("named_peer") {
            print!("{}", workerbus_fuzz::named_peer::describe(&data));
        } else {
            print!("{}", workerbus_fuzz::server::describe(&data));
        }
    }
    Ok(())
}
