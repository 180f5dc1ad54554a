//! A worker process serving the Echo test service. Its arguments make it
//! misbehave on purpose, and run by hand it behaves as a command-line tool.

use std::time::Duration;

use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::EchoServer;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve_anyway = args.iter().any(|arg| arg == "--serve-anyway");
    if workerbus::startup_data().is_none() && !serve_anyway {
        // One binary, two roles: started by a person, it is a CLI.
        println!("echo-worker: not started by a workerbus host; nothing to serve");
        return;
    }
    for arg in &args {
        if let Some(code) = arg.strip_prefix("--exit-before-handshake=") {
            eprintln!("echo-worker: loading the model failed on purpose");
            eprintln!("echo-worker: giving up with code {code}");
            std::process::exit(code.parse().expect("an exit code"));
        }
        if let Some(ms) = arg.strip_prefix("--delay-start-ms=") {
            tokio::time::sleep(Duration::from_millis(ms.parse().expect("milliseconds"))).await;
        }
    }
    let mut options = workerbus::ServeOptions::new();
    if args.iter().any(|arg| arg == "--logging") {
        options = options.middleware(workerbus::Logging::new());
    }
    for arg in &args {
        if let Some(ms) = arg.strip_prefix("--greeting-timeout-ms=") {
            let ms = ms.parse().expect("milliseconds");
            options = options.greeting_timeout(Duration::from_millis(ms));
        }
        if let Some(max) = arg.strip_prefix("--max-ungreeted-connections=") {
            options = options.max_ungreeted_connections(max.parse().expect("a number"));
        }
    }
    let server = EchoServer::new(EchoWorker::in_process());
    if let Err(error) = workerbus::serve_with_options(server, options).await {
        eprintln!("echo-worker: {error}");
        std::process::exit(1);
    }
}
