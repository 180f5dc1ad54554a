//! A host process that connects to a worker claiming another process's id
//! in its greeting, and kills it: to show the host signals the process it
//! is connected to, and never the one named in the greeting.
//!
//! Usage: `claim-host <path of hostile-worker> <socket path> <claimed pid>`
//!
//! It starts hostile-worker in its `claim-pid` mode, detaches it (which
//! makes the worker listen at the socket path), connects to it there, kills
//! the connected worker and waits for it to end. Prints `<spawned pid>
//! <connected pid>`, then `killed`, and exits 0; exits 1 if the worker it
//! killed is still running 20 s later. Run it in a process group of its own:
//! a host that signalled pid 0 would kill its whole group.

use std::time::Duration;

use workerbus::{ProcessDriver, Stdio};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), workerbus::Error> {
    let mut args = std::env::args().skip(1);
    let usage = "claim-host <hostile-worker> <socket path> <claimed pid>";
    let (program, address, claimed) = (
        args.next().expect(usage),
        args.next().expect(usage),
        args.next().expect(usage),
    );
    let spawned = ProcessDriver::new(&program)
        .arg("--mode=claim-pid")
        .arg(format!("--listen={address}"))
        .arg(format!("--pid={claimed}"))
        // Whoever reads this host's output waits for its end, not the
        // worker's.
        .stdout(Stdio::Null)
        .stderr(Stdio::Null)
        .spawn()
        .await?;
    let spawned_pid = spawned.pid().expect("a spawned worker has a process id");
    let detached = spawned.detach().await?;
    let connected = ProcessDriver::new(&program)
        .connect(detached.address(), detached.secret())
        .await?;
    let connected_pid = connected.pid().expect("the socket's peer has a process id");
    println!("{spawned_pid} {connected_pid}");
    connected.kill();
    if tokio::time::timeout(Duration::from_secs(20), connected.exited())
        .await
        .is_err()
    {
        println!("the worker still runs");
        std::process::exit(1);
    }
    println!("killed");
    Ok(())
}
