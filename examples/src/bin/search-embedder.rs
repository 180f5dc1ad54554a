//! The search application's embedder as a program of its own.
//!
//! Started by a host's process driver, it serves the `Embedder` and `Model`
//! services to that host. With `--listen ADDR`, it is a serving node: it
//! supervises an embedder process of its own (itself, started as a worker)
//! and serves it over gRPC, so that a search on another machine can use it:
//!
//! ```text
//! cargo run --release --bin search-embedder -- --listen 127.0.0.1:50051
//! cargo run --release --example search -- --embedder http://127.0.0.1:50051 "query"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use workerbus_examples::search::ModelKind;
use workerbus_examples::search::node::{NodeOptions, serve_node};

const USAGE: &str = "\
usage: search-embedder --listen ADDR [--data DIR] [--model NAME] [--chaos]

Serves the search example's embedder over gRPC, supervised on this machine.

options:
  --listen ADDR  where to listen, e.g. 127.0.0.1:50051
  --data DIR     where the model is kept
                 (default: the system's temporary directory/workerbus-search-node)
  --model NAME   ngram (the stand-in) or minilm (the real model, in a build
                 with --features real-model; the default there)
  --chaos        kill the embedder process at random; remote searches still
                 index every file
  -h, --help     show this";

fn parse_args() -> Result<NodeOptions, String> {
    let mut listen: Option<SocketAddr> = None;
    let mut data = std::env::temp_dir().join("workerbus-search-node");
    let mut chaos = false;
    let mut model = ModelKind::default_for_build();
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--listen" => {
                let value = given.next().ok_or("--listen needs an address")?;
                listen = Some(
                    value
                        .parse()
                        .map_err(|error| format!("--listen {value}: {error}"))?,
                );
            }
            "--data" => data = PathBuf::from(given.next().ok_or("--data needs a directory")?),
            "--model" => {
                model = ModelKind::from_name(&given.next().ok_or("--model needs a name")?)?
            }
            "--chaos" => chaos = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let listen = listen.ok_or(
        "give --listen ADDR (this program serves a host that starts it as its worker, or clients over gRPC)",
    )?;
    let embedder =
        std::env::current_exe().map_err(|error| format!("this program's path: {error}"))?;
    Ok(NodeOptions {
        listen,
        embedder,
        data_dir: data,
        model,
        chaos,
    })
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    // Started by a process driver: this process is the embedder.
    if workerbus::startup_data().is_some() {
        return match runtime.block_on(workerbus_examples::search::serve_embedder()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("search-embedder: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let options = match parse_args() {
        Ok(options) => options,
        Err(problem) if problem.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("search-embedder: {problem}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve_node(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("search-embedder: {error}");
            ExitCode::FAILURE
        }
    }
}
