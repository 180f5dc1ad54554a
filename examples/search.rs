//! Semantic search over this repository (or any text files), split the way
//! real applications split it: the command line (host) talks to a search
//! worker on a thread, which asks a supervised embedder process for vectors.
//!
//! ```text
//! cargo run --release --example search -- "restart a crashed worker"
//! cargo run --release --example search -- --chaos "how are frames laid out"
//! cargo run --release --example search -- --embedder http://127.0.0.1:50051 "query"
//! cargo run --release --features real-model --example search -- "restart a crashed worker"
//! cargo run --release --features real-model --example search -- --recall
//! ```
//!
//! The third uses an embedder that another machine (or process) serves over
//! gRPC: `cargo run --release --bin search-embedder -- --listen 127.0.0.1:50051`.
//!
//! The program is also its own embedder process: started by the host's
//! process driver, it serves the `Embedder` and `Model` services instead.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use prost::Message;
use workerbus::{Metrics, Side, SupervisorEvent};
use workerbus_examples::embedder::EmbedderClient;
use workerbus_examples::model::{CheckRequest, ModelClient};
use workerbus_examples::search::worker::INDEX_FILE;
use workerbus_examples::search::{
    Chaos, DataLock, ModelKind, Recycling, SearchApp, SearchOptions, display_path, recall,
    serve_embedder,
};
use workerbus_examples::worker::{
    IndexProgress, IndexRequest, SearchRequest, StatsRequest, StoredIndex,
};

const USAGE: &str = "\
usage: search [OPTIONS] [QUERY...]

Indexes text files, then prints the passages closest in meaning to QUERY.

options:
  --path PATH   index this file or directory (repeatable; default: this
                repository's documents and sources)
  --limit N     how many results to show (default 5)
  --data DIR    where the model and the index are kept
                (default: the system's temporary directory/workerbus-search)
  --fresh       forget the stored index and index everything again
  --chaos       kill the embedder process at random while indexing
                (implies --fresh); the run still indexes every file
  --embedder URL  use the embedder a node serves over gRPC, e.g.
                http://127.0.0.1:50051 (started with search-embedder
                --listen; its --chaos kills it there)
  --model NAME  ngram (the stand-in) or minilm (the real model, in a build
                with --features real-model; the default there)
  --recycle-above MIB
                replace the embedder gracefully once its resident memory
                passes this many MiB (default: 300 for ngram, 102 for minilm)
  --recall      index this repository with each model this program has, and
                print each one's recall at 5 over the queries of
                examples/search.queries
  -h, --help    show this";

/// The command line.
#[derive(Debug)]
struct Args {
    query: String,
    paths: Vec<PathBuf>,
    limit: u32,
    data: PathBuf,
    fresh: bool,
    chaos: bool,
    embedder: Option<String>,
    model: ModelKind,
    recycle_above: Option<u64>,
    recall: bool,
}

impl Args {
    /// When the local embedder is recycled.
    fn recycling(&self) -> Recycling {
        let recycling = Recycling::of(self.model);
        Recycling {
            memory: self.recycle_above.map_or(recycling.memory, |mib| mib << 20),
            ..recycling
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        query: String::new(),
        paths: Vec::new(),
        limit: 5,
        data: std::env::temp_dir().join("workerbus-search"),
        fresh: false,
        chaos: false,
        embedder: None,
        model: ModelKind::default_for_build(),
        recycle_above: None,
        recall: false,
    };
    let mut words = Vec::new();
    let mut model_given = false;
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = |name: &str| given.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--path" => args.paths.push(value("--path")?.into()),
            "--limit" => {
                args.limit = value("--limit")?
                    .parse()
                    .map_err(|_| "--limit needs a number".to_owned())?;
            }
            "--data" => args.data = value("--data")?.into(),
            "--fresh" => args.fresh = true,
            "--chaos" => (args.chaos, args.fresh) = (true, true),
            "--embedder" => args.embedder = Some(value("--embedder")?),
            "--model" => {
                args.model = ModelKind::from_name(&value("--model")?)?;
                model_given = true;
            }
            "--recall" => args.recall = true,
            "--recycle-above" => {
                let mib = value("--recycle-above")?
                    .parse()
                    .map_err(|_| "--recycle-above needs a number of MiB".to_owned())?;
                args.recycle_above = Some(mib);
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            word => words.push(word.to_owned()),
        }
    }
    args.query = words.join(" ");
    if args.chaos && args.embedder.is_some() {
        return Err(
            "--chaos kills a local embedder; a remote one is killed on its node (search-embedder --listen ADDR --chaos)"
                .to_owned(),
        );
    }
    if args.recall {
        let taken = [
            (!args.paths.is_empty(), "--path"),
            (model_given, "--model"),
            (args.embedder.is_some(), "--embedder"),
            (args.chaos, "--chaos"),
            (args.fresh, "--fresh"),
            (args.recycle_above.is_some(), "--recycle-above"),
            (!args.query.is_empty(), "a query"),
        ];
        if let Some((_, option)) = taken.iter().find(|(given, _)| *given) {
            return Err(format!(
                "--recall indexes this repository afresh with every model this program has: \
                 it takes no {option}"
            ));
        }
    }
    if args.paths.is_empty() {
        args.paths = default_paths();
    }
    Ok(args)
}

/// This repository's documents and sources.
fn default_paths() -> Vec<PathBuf> {
    let root = repository_root();
    [
        "README.md",
        "ARCHITECTURE.md",
        "CHANGELOG.md",
        "docs",
        "proto",
        "runtime/src",
        "codegen/src",
        "examples",
        "tests",
        "benches",
    ]
    .iter()
    .map(|path| root.join(path))
    .collect()
}

fn repository_root() -> PathBuf {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"));
    examples.parent().unwrap_or(examples).to_owned()
}

fn main() -> ExitCode {
    // Started by the process driver: this process is the embedder.
    if workerbus::startup_data().is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime");
        return match runtime.block_on(serve_embedder()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("embedder: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) if problem.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("search: {problem}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let ran = if args.recall {
        runtime.block_on(measure_recall(args))
    } else {
        runtime.block_on(run(args))
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("search: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut options = SearchOptions::new(std::env::current_exe()?, &args.data)
        .model(args.model)
        .health_check(args.recycling().health_check());
    if let Some(address) = &args.embedder {
        options = options.remote(address.clone());
    }
    // Runs on one data directory take turns.
    if DataLock::try_acquire(&args.data)?.is_none() {
        eprintln!(
            "search: waiting for another search using {}",
            args.data.display()
        );
    }
    let app = SearchApp::start(options).await?;
    if args.fresh {
        match std::fs::remove_dir_all(app.options().index_dir()) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
            _ => {}
        }
    }
    let init = app.init().await?;
    let embedder = match &args.embedder {
        Some(address) => format!("over gRPC at {address}"),
        None => format!("pid {}", app.embedder().pid().unwrap_or_default()),
    };
    println!(
        "embedder: {embedder}, model {}; index: {} ({} files stored)",
        init.model,
        app.options().index_dir().display(),
        init.indexed
    );
    if !init.rebuilt_from.is_empty() {
        println!(
            "index: its vectors were made with the model {}, which are not comparable with {}'s: \
             rebuilding it",
            init.rebuilt_from, init.model
        );
    }

    let indexing = index(&app, &args).await;
    let indexed = match indexing {
        Ok(indexed) => indexed,
        Err(error) => {
            app.shutdown().await;
            return Err(error);
        }
    };
    println!(
        "indexed {} files in {:.2?}: {} new or changed, {} unchanged, {} failed",
        indexed.total,
        indexed.elapsed,
        indexed.embedded,
        indexed.skipped,
        indexed.failed.len()
    );
    for (path, error) in &indexed.failed {
        println!("  not indexed: {path}: {error}");
    }
    if indexed.recycles > 0 {
        let every = if indexed.failed.is_empty() {
            "every file was indexed"
        } else {
            "the files above failed on their own"
        };
        let failed = failed_calls(app.metrics(), "embedder.embed");
        let lost = if failed == 0 {
            "no call failed".to_owned()
        } else {
            format!("{failed} embedder.embed attempts failed and ran again")
        };
        let thresholds = match &args.embedder {
            None => format!(" (its thresholds: {})", args.recycling()),
            Some(_) => String::new(),
        };
        println!(
            "recycling: the supervisor replaced the embedder gracefully {} times during the \
             run{thresholds}; {lost}, and {every}",
            indexed.recycles,
        );
    }
    // A kill that landed after the last embedding is recovered from after
    // the run.
    let all_recovered = app.recovered(indexed.kills as usize);
    let _ = tokio::time::timeout(Duration::from_secs(10), all_recovered).await;

    if !args.query.is_empty() {
        let response = app
            .client()
            .search(SearchRequest {
                query: args.query.clone(),
                limit: args.limit,
            })
            .await?;
        println!("\nresults for {:?}:\n", args.query);
        print_results(&response.results);
    }

    let stats = app.client().stats(StatsRequest {}).await?;
    let restarts = app.embedder().restarts();
    println!(
        "\nstats: {} files and {} passages indexed, {} queued, {} processing; embedder restarts: {restarts}",
        stats.indexed, stats.chunks, stats.queued, stats.processing
    );
    if args.chaos {
        let recoveries = app.recoveries();
        let recoveries: Vec<String> = recoveries.iter().map(|d| format!("{d:.1?}")).collect();
        println!(
            "chaos: killed the embedder {} times, and every file was indexed; recovery from each \
             exit to serving again, the policy's backoff included: {}",
            indexed.kills,
            recoveries.join(", ")
        );
    }
    print_latency(app.metrics(), args.chaos);
    app.shutdown().await;
    println!("done in {:.2?}", started.elapsed());
    Ok(())
}

/// How many first results `--recall` looks at.
const AT: u32 = 5;

/// Indexes this repository with each model this program has, in a data
/// directory of its own, and prints each one's recall at 5 over the queries
/// of `examples/search.queries`, and how many passages the model cuts
/// short.
async fn measure_recall(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let root = repository_root();
    let file = recall::queries_file(&root);
    let text = std::fs::read_to_string(&file)
        .map_err(|error| format!("reading the queries in {}: {error}", file.display()))?;
    let queries = recall::parse(&text)
        .and_then(|queries| recall::locate(&root, &queries))
        .map_err(|problem| format!("{}: {problem}", file.display()))?;
    let mut rows = Vec::new();
    for model in ModelKind::ALL {
        if !model.is_built() {
            rows.push(format!(
                "  {:<8} not in this program: build it with --features real-model",
                model.name()
            ));
            continue;
        }
        let data = args.data.join("recall").join(model.name());
        let options = SearchOptions::new(std::env::current_exe()?, &data).model(model);
        let app = SearchApp::start(options).await?;
        let measured = recall_of(&app, model, &queries, &args).await;
        app.shutdown().await;
        rows.extend(measured?);
    }
    println!(
        "\nrecall at {AT} (the share of a query's expected passages among its first {AT} results), \
         over {}:\n",
        recall::QUERIES_FILE
    );
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// One model's line of `--recall`, and the queries it did not answer in
/// full.
async fn recall_of(
    app: &SearchApp,
    model: ModelKind,
    queries: &[recall::Located],
    args: &Args,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    // Afresh: an index kept from another run may hold passages cut
    // otherwise.
    match std::fs::remove_dir_all(app.options().index_dir()) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    let init = app.init().await?;
    println!(
        "{}: indexing this repository with {}",
        model.name(),
        init.model
    );
    let indexed = index(app, args).await?;
    let mut total = 0.0;
    let mut rows = Vec::new();
    let mut missed = Vec::new();
    for query in queries {
        let request = SearchRequest {
            query: query.query.clone(),
            limit: AT,
        };
        let results = app.client().search(request).await?.results;
        let found: Vec<recall::Found> = results
            .iter()
            .map(|result| recall::Found {
                path: result.path.clone().into(),
                first_line: result.first_line,
                last_line: result.last_line,
            })
            .collect();
        let recall = query.recall(&found);
        if recall < 1.0 {
            missed.push(format!("      {recall:.2}  {}", query.query));
        }
        total += recall;
    }
    let index_file = app.options().index_dir().join(INDEX_FILE);
    let stored = StoredIndex::decode(std::fs::read(&index_file)?.as_slice())?;
    let check = ModelClient::new(app.embedder().channel())
        .check(CheckRequest {})
        .await?;
    let cut = if check.max_tokens == 0 {
        "reads any length".to_owned()
    } else {
        let embedder = EmbedderClient::new(app.embedder().channel());
        let (cut, passages) = recall::passages_cut(&embedder, &stored).await?;
        format!("cuts {cut} of {passages} passages short")
    };
    rows.push(format!(
        "  {:<8} recall at {AT}: {:.2} over {} queries; {} passages from {} files, indexed in {:.1?}; the model {cut}",
        model.name(),
        total / queries.len() as f64,
        queries.len(),
        stored.files.iter().map(|file| file.chunks.len()).sum::<usize>(),
        indexed.total,
        indexed.elapsed,
    ));
    for (path, error) in &indexed.failed {
        rows.push(format!("      not indexed: {path}: {error}"));
    }
    rows.extend(missed);
    Ok(rows)
}

/// What an index run did.
#[derive(Debug, Default)]
struct Indexed {
    total: u32,
    embedded: u32,
    skipped: u32,
    failed: Vec<(String, String)>,
    kills: u32,
    recycles: u32,
    elapsed: Duration,
}

/// Indexes `args.paths`, drawing progress, and with `--chaos` kills the
/// embedder along the way.
async fn index(app: &SearchApp, args: &Args) -> Result<Indexed, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let paths = args.paths.iter().map(|path| path.display().to_string());
    let mut progress = app
        .client()
        .index(IndexRequest {
            paths: paths.collect(),
            // The index is what the command line names, nothing more.
            replace: true,
        })
        .await?;
    let mut bar = Bar::new();
    let mut events = app.supervisor().subscribe();
    let mut chaos: Option<Chaos> = None;
    let mut indexed = Indexed::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let root = repository_root();
    loop {
        tokio::select! {
            report = progress.message() => {
                let Some(report) = report? else { break };
                let IndexProgress { path, done, total, skipped, error, .. } = report;
                indexed.total = total;
                match (skipped, error.is_empty()) {
                    (true, _) => indexed.skipped += 1,
                    (false, true) => indexed.embedded += 1,
                    (false, false) => indexed.failed.push((display_path(&path, &root), error)),
                }
                bar.files(done, total, &display_path(&path, &root));
                if args.chaos {
                    let seed = started.elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
                    let chaos = chaos.get_or_insert_with(|| Chaos::plan(total, 3, seed));
                    if chaos.strike(done, app.embedder().is_running()) {
                        bar.note(&format!(
                            "chaos: killing the embedder (pid {}) at file {done} of {total}",
                            app.embedder().pid().unwrap_or_default()
                        ));
                        app.embedder().kill();
                        indexed.kills += 1;
                    }
                }
            }
            Ok(event) = events.recv() => match event {
                SupervisorEvent::Health { .. } => {}
                event => {
                    if matches!(event, SupervisorEvent::Recycling { .. }) {
                        indexed.recycles += 1;
                    }
                    bar.note(&format!("supervisor: {}", describe(&event)));
                }
            },
            _ = ticker.tick() => {
                if let Ok(stats) = app.client().stats(StatsRequest {}).await {
                    bar.stats(stats.chunks, stats.processing, app.embedder().restarts());
                }
            }
        }
    }
    bar.finish();
    indexed.elapsed = started.elapsed();
    Ok(indexed)
}

fn describe(event: &SupervisorEvent) -> String {
    match event {
        SupervisorEvent::Started {
            worker,
            restarts,
            pid,
        } => {
            let pid = pid.unwrap_or_default();
            format!("{worker} started as process {pid} (restarts so far: {restarts})")
        }
        SupervisorEvent::Exited { worker, exit, pid } => {
            format!("{worker} (process {}) {exit}", pid.unwrap_or_default())
        }
        SupervisorEvent::Restarting {
            worker,
            delay,
            attempt,
        } if delay.is_zero() => format!("restarting {worker} now (restart {attempt} of this run)"),
        SupervisorEvent::Restarting {
            worker,
            delay,
            attempt,
        } => format!("restarting {worker} in {delay:.1?} (restart {attempt} of this run)"),
        SupervisorEvent::Recycling { worker, reason } => {
            format!("replacing {worker} gracefully: {reason}")
        }
        event => format!("{event:?}"),
    }
}

/// A one-line progress bar on standard error, drawn only on a terminal.
struct Bar {
    terminal: bool,
    line: String,
    files: (u32, u32, String),
    stats: (u64, u64, u32),
}

impl Bar {
    fn new() -> Bar {
        Bar {
            terminal: std::io::stderr().is_terminal(),
            line: String::new(),
            files: (0, 0, String::new()),
            stats: (0, 0, 0),
        }
    }

    fn files(&mut self, done: u32, total: u32, path: &str) {
        self.files = (done, total, path.to_owned());
        self.draw();
    }

    fn stats(&mut self, passages: u64, processing: u64, restarts: u32) {
        self.stats = (passages, processing, restarts);
        self.draw();
    }

    /// Prints a line above the bar.
    fn note(&mut self, note: &str) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
        println!("{note}");
        self.draw();
    }

    fn draw(&mut self) {
        if !self.terminal {
            return;
        }
        const WIDTH: usize = 30;
        let (done, total, path) = &self.files;
        let filled = if *total == 0 {
            0
        } else {
            WIDTH * *done as usize / *total as usize
        };
        let (passages, processing, restarts) = self.stats;
        let mut path: String = path.chars().rev().take(40).collect();
        path = path.chars().rev().collect();
        self.line = format!(
            "[{}{}] {done}/{total} files · {passages} passages · embedding {processing} · restarts {restarts} · {path}",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
        );
        eprint!("\r\x1b[2K{}", self.line);
        let _ = std::io::stderr().flush();
    }

    fn finish(&mut self) {
        if self.terminal && !self.line.is_empty() {
            eprint!("\r\x1b[2K");
        }
    }
}

fn print_results(results: &[workerbus_examples::worker::SearchResult]) {
    if results.is_empty() {
        println!("  (nothing indexed)");
        return;
    }
    let root = repository_root();
    let places: Vec<String> = results
        .iter()
        .map(|result| {
            format!(
                "{}:{}-{}",
                display_path(&result.path, &root),
                result.first_line,
                result.last_line
            )
        })
        .collect();
    let width = places
        .iter()
        .map(|place| place.chars().count())
        .max()
        .unwrap_or(0);
    println!("   #  score  {:width$}  passage", "where");
    for (rank, (result, place)) in results.iter().zip(&places).enumerate() {
        println!(
            "  {:>2}  {:.3}  {place:width$}  {}",
            rank + 1,
            result.score,
            result.snippet
        );
    }
}

/// The calls of `method` that failed, as their caller saw them.
fn failed_calls(metrics: &Metrics, method: &str) -> u64 {
    metrics
        .snapshot()
        .methods()
        .iter()
        .filter(|seen| seen.method() == method)
        .map(|seen| seen.failed())
        .sum()
}

fn print_latency(metrics: &Metrics, chaos: bool) {
    println!("\nlatency per message, as its caller saw it (upper bounds of histogram buckets):\n");
    println!(
        "  {:<16} {:>6} {:>6} {:>8} {:>8} {:>8}",
        "message", "calls", "failed", "mean", "p50", "p95"
    );
    let snapshot = metrics.snapshot();
    let at_most = |latency: Option<Duration>| {
        latency.map_or_else(|| "-".to_owned(), |latency| format!("≤{latency:.0?}"))
    };
    for method in snapshot
        .methods()
        .iter()
        .filter(|method| method.side() == Side::Host)
    {
        let latency = method.latency();
        let mean = latency
            .mean()
            .map_or_else(|| "-".to_owned(), |mean| format!("{mean:.0?}"));
        let streams = if method.method() == "worker.index" {
            " *"
        } else {
            ""
        };
        println!(
            "  {:<16} {:>6} {:>6} {:>8} {:>8} {:>8}{streams}",
            method.method(),
            method.calls(),
            method.failed(),
            mean,
            at_most(latency.quantile(0.5)),
            at_most(latency.quantile(0.95)),
        );
    }
    println!("\n  * a stream: the time to open it (its progress is the index run above)");
    if chaos {
        println!("  failed embedder.embed attempts were cut short by a kill and ran again");
    }
}
