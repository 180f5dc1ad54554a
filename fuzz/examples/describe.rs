//! Prints what a `server_dispatch` input means (its serve options, then its
//! frames or structured steps), to read a crash artifact:
//!
//! ```text
//! RUSTFLAGS="--cfg fuzzing" cargo run --example describe -- artifacts/server_dispatch/crash-...
//! ```

fn main() -> std::io::Result<()> {
    for path in std::env::args_os().skip(1) {
        let data = std::fs::read(&path)?;
        println!("{}:", path.to_string_lossy());
        print!("{}", workerbus_fuzz::server::describe(&data));
    }
    Ok(())
}
