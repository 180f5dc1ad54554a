//! The search application end to end: the real embedder process (the
//! `search-embedder` binary) under a supervisor, the search worker on its
//! thread, a small corpus on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use workerbus::{Code, Error, HealthCheck, SupervisorEvent};
use workerbus_examples::search::{Chaos, DataLock, ModelKind, SearchApp, SearchOptions};
use workerbus_examples::worker::{
    IndexProgress, IndexRequest, SearchRequest, SearchResult, StatsRequest,
};

const EMBEDDER: &str = env!("CARGO_BIN_EXE_search-embedder");

/// The corpus's files, one topic each.
const CORPUS: [&str; 5] = ["bees.md", "bread.md", "chess.md", "comets.md", "tides.md"];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// The stand-in's options: these tests know its vectors, whatever features
/// the examples are built with.
fn stand_in(dir: &Path) -> SearchOptions {
    SearchOptions::new(EMBEDDER, dir).model(ModelKind::Ngram)
}

/// A data directory of its own for each test, empty.
fn data_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "workerbus-search-test-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn file_name(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or(path)
}

/// Runs `worker.index` on `paths` to its end, calling `each` on every report.
async fn index(
    app: &SearchApp,
    paths: &[PathBuf],
    each: impl FnMut(&IndexProgress),
) -> Vec<IndexProgress> {
    index_with(app, paths, false, each).await
}

/// [`index`], replacing what the index holds with `paths` if `replace`.
async fn index_with(
    app: &SearchApp,
    paths: &[PathBuf],
    replace: bool,
    each: impl FnMut(&IndexProgress),
) -> Vec<IndexProgress> {
    index_on(app.client(), paths, replace, each).await
}

/// [`index_with`], through any search worker's client.
async fn index_on(
    client: &workerbus_examples::worker::WorkerClient,
    paths: &[PathBuf],
    replace: bool,
    mut each: impl FnMut(&IndexProgress),
) -> Vec<IndexProgress> {
    let paths = paths
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    let request = IndexRequest { paths, replace };
    let mut stream = client.index(request).await.unwrap();
    let mut reports = Vec::new();
    while let Some(report) = stream.message().await.unwrap() {
        each(&report);
        reports.push(report);
    }
    reports
}

async fn search(app: &SearchApp, query: &str) -> Vec<SearchResult> {
    let request = SearchRequest {
        query: query.to_owned(),
        limit: 3,
    };
    app.client().search(request).await.unwrap().results
}

/// The corpus is indexed in full, every file once, and each query finds
/// the file about its topic.
fn assert_indexed_and_searchable(reports: &[IndexProgress]) {
    let mut names: Vec<&str> = reports
        .iter()
        .map(|report| file_name(&report.path))
        .collect();
    names.sort_unstable();
    assert_eq!(names, CORPUS);
    for (n, report) in reports.iter().enumerate() {
        assert_eq!((report.done, report.total), (n as u32 + 1, 5), "{report:?}");
        assert!(report.error.is_empty() && !report.skipped, "{report:?}");
        assert!(report.chunks >= 1, "{report:?}");
    }
}

async fn assert_finds(app: &SearchApp) {
    let queries = [
        ("how long should the dough proof before baking", "bread.md"),
        ("where do icy comets come from", "comets.md"),
        ("spring tides at full moon", "tides.md"),
        ("the queen bee and the honey harvest", "bees.md"),
    ];
    for (query, expected) in queries {
        let results = search(app, query).await;
        assert_eq!(
            file_name(&results[0].path),
            expected,
            "{query:?} found {results:?}"
        );
        assert!(
            results
                .windows(2)
                .all(|pair| pair[0].score >= pair[1].score)
        );
        assert!(results[0].score > 0.0 && results[0].score <= 1.0 + 1e-4);
    }
}

#[tokio::test]
async fn indexes_a_corpus_and_finds_what_a_query_means() {
    let dir = data_dir("plain");
    let app = SearchApp::start(stand_in(&dir)).await.unwrap();

    let early = app.client().search(SearchRequest {
        query: "bread".into(),
        limit: 1,
    });
    let status = early.await.unwrap_err().status().cloned().unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("worker.init"), "{status}");

    // The model is missing: init downloads it.
    let model_path = app.options().model_path();
    assert!(!model_path.exists());
    let init = app.init().await.unwrap();
    assert!(init.ready);
    assert_eq!(init.indexed, 0);
    assert!(model_path.exists());

    let reports = index(&app, &[corpus()], |_| {}).await;
    assert_indexed_and_searchable(&reports);
    assert_finds(&app).await;
    // The snippet is the passage's line that best matches the query.
    let best = &search(&app, "fold the dough every half hour").await[0];
    assert_eq!(file_name(&best.path), "bread.md");
    assert_eq!(
        best.snippet,
        "dough every half hour for the first two hours. Shape the loaf, then proof it"
    );

    let stats = app.client().stats(StatsRequest {}).await.unwrap();
    let chunks: u32 = reports.iter().map(|report| report.chunks).sum();
    assert_eq!((stats.indexed, stats.chunks), (5, u64::from(chunks)));
    assert_eq!((stats.queued, stats.processing), (0, 0));
    assert_eq!(app.embedder().restarts(), 0);
    let metrics = app.metrics().snapshot();
    let embeds = metrics
        .methods()
        .iter()
        .find(|method| method.method() == "embedder.embed")
        .unwrap();
    // One call per file (each fits in a batch), one per query.
    assert_eq!((embeds.calls(), embeds.failed()), (5 + 5, 0));
    app.shutdown().await;

    // The index is stored: a second run finds it, and skips unchanged files.
    let app = SearchApp::start(stand_in(&dir)).await.unwrap();
    assert_eq!(app.init().await.unwrap().indexed, 5);
    let missing = dir.join("no-such-file.md");
    let again = index(&app, &[corpus(), missing.clone()], |_| {}).await;
    assert_eq!(again.len(), 6);
    let failed: Vec<&IndexProgress> = again.iter().filter(|r| !r.error.is_empty()).collect();
    assert_eq!(failed.len(), 1, "{again:?}");
    assert_eq!(failed[0].path, missing.display().to_string());
    assert!(failed[0].error.contains("No such file"), "{:?}", failed[0]);
    assert!(
        again
            .iter()
            .filter(|r| r.error.is_empty())
            .all(|r| r.skipped && r.chunks >= 1)
    );
    assert_finds(&app).await;

    // Replacing: the index then holds just the paths named.
    let bread = corpus().join("bread.md");
    let replaced = index_with(&app, &[bread], true, |_| {}).await;
    assert_eq!(replaced.len(), 1);
    let stats = app.client().stats(StatsRequest {}).await.unwrap();
    assert_eq!(stats.indexed, 1);
    for result in search(&app, "comets and tides").await {
        assert_eq!(file_name(&result.path), "bread.md");
    }
    app.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn two_runs_on_one_data_directory_take_turns() {
    let dir = data_dir("turns");
    let first = SearchApp::start(stand_in(&dir)).await.unwrap();
    let second = tokio::spawn(SearchApp::start(stand_in(&dir)));
    assert!(DataLock::try_acquire(&dir).unwrap().is_none());
    first.init().await.unwrap();
    let reports = index(&first, &[corpus()], |_| {}).await;
    assert_indexed_and_searchable(&reports);
    // The first run holds the directory: the second waits for it to end.
    assert!(!second.is_finished(), "two runs share one data directory");
    first.shutdown().await;
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.data_lock().dir(), dir);
    assert_eq!(second.init().await.unwrap().indexed, 5);
    assert_finds(&second).await;
    second.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_chaos_run_indexes_every_file_though_the_embedder_is_killed() {
    let dir = data_dir("chaos");
    let app = SearchApp::start(stand_in(&dir)).await.unwrap();
    app.init().await.unwrap();
    let first_pid = app.embedder().pid().unwrap();

    // A kill before the run: its first embedding can only succeed on the
    // replacement. Then kills after the second and the fourth file, which
    // land wherever the run has got to.
    app.embedder().kill();
    let mut kills = 1;
    let mut chaos = Chaos::plan(5, 2, 1);
    assert_eq!(chaos.points(), [2, 4]);
    let reports = index(&app, &[corpus()], |report| {
        // Running again after the last kill, as its supervisor saw it: a
        // kill sent before then could land on the process already killed.
        let back = app.embedder().is_running() && app.recoveries().len() >= kills as usize;
        if chaos.strike(report.done, back) {
            app.embedder().kill();
            kills += 1;
        }
    })
    .await;

    assert_indexed_and_searchable(&reports);
    assert!(app.embedder().restarts() >= 1);
    assert_ne!(app.embedder().pid(), Some(first_pid));
    // Every kill is recovered from, the last one perhaps after the run.
    let all_recovered = app.recovered(kills as usize);
    tokio::time::timeout(Duration::from_secs(20), all_recovered)
        .await
        .unwrap_or_else(|_| panic!("{kills} kills, recovered from {:?}", app.recoveries()));
    assert_eq!(app.embedder().restarts(), kills);
    assert_eq!(app.recoveries().len(), kills as usize);
    assert_finds(&app).await;
    app.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_embedder_is_replaced_past_its_threshold_without_a_failed_call() {
    let dir = data_dir("recycle");
    let check = HealthCheck::every(Duration::from_millis(10)).recycle_after_processed(3);
    let options = stand_in(&dir).health_check(check);
    let app = SearchApp::start(options).await.unwrap();
    let mut events = app.supervisor().subscribe();
    let first_pid = app.embedder().pid().unwrap();
    app.init().await.unwrap();
    let reports = index(&app, &[corpus()], |_| {}).await;
    assert_indexed_and_searchable(&reports);

    // init made three calls (check, download, check): the embedder is past
    // its threshold, and is replaced by a new process.
    let recycled = async {
        let mut reason = None;
        loop {
            match events.recv().await.unwrap() {
                SupervisorEvent::Recycling { reason: why, .. } => reason = Some(why),
                SupervisorEvent::Started { .. } if reason.is_some() => return reason.unwrap(),
                _ => continue,
            }
        }
    };
    let reason = tokio::time::timeout(Duration::from_secs(20), recycled)
        .await
        .expect("the embedder was never recycled");
    assert!(reason.contains("processed"), "{reason}");
    assert_finds(&app).await;
    assert_ne!(app.embedder().pid(), Some(first_pid));
    let metrics = app.metrics().snapshot();
    for method in metrics.methods() {
        assert_eq!(method.failed(), 0, "{method:?}");
    }
    assert!(app.recoveries().is_empty(), "a recycle is not a crash");
    app.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_missing_embedder_binary_is_named() {
    let dir = data_dir("missing");
    let missing = dir.join("no-such-embedder");
    let error = SearchApp::start(SearchOptions::new(&missing, &dir))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Spawn { .. }), "{error:?}");
    assert!(error.to_string().contains("no-such-embedder"), "{error}");
}

#[tokio::test]
async fn a_remote_embedder_indexes_every_file_though_its_node_kills_it() {
    use workerbus_examples::search::node::{Node, NodeOptions};

    let node_dir = data_dir("node");
    let node = Node::start(NodeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        embedder: EMBEDDER.into(),
        data_dir: node_dir.clone(),
        model: ModelKind::Ngram,
        chaos: false,
    })
    .await
    .unwrap();
    let dir = data_dir("remote");
    let options = stand_in(&dir).remote(format!("http://{}", node.address()));
    let app = SearchApp::start(options).await.unwrap();
    app.init().await.unwrap();
    // The node's embedder dies before the run and twice during it; the
    // host's calls cross to the node, which restarts it.
    node.embedder().kill();
    let mut chaos = Chaos::plan(5, 2, 1);
    let reports = index(&app, &[corpus()], |report| {
        if chaos.strike(report.done, node.embedder().is_running()) {
            node.embedder().kill();
        }
    })
    .await;
    assert_indexed_and_searchable(&reports);
    assert!(node.embedder().restarts() >= 1);
    // The host's own supervisor saw no crash: only the node's did.
    assert_eq!(app.embedder().restarts(), 0);
    assert_finds(&app).await;
    app.shutdown().await;
    drop(node);
    std::fs::remove_dir_all(dir).unwrap();
    let _ = std::fs::remove_dir_all(node_dir);
}

#[tokio::test]
async fn an_index_of_another_model_is_rebuilt_and_says_so() {
    use prost::Message;
    use workerbus_examples::worker::{StoredFile, StoredIndex};

    let dir = data_dir("other-model");
    let options = stand_in(&dir);
    // An index whose vectors another model made.
    let stored = StoredIndex {
        model: "another-model".into(),
        files: vec![StoredFile {
            path: corpus().join("bees.md").display().to_string(),
            ..StoredFile::default()
        }],
    };
    let index_dir = options.index_dir();
    std::fs::create_dir_all(&index_dir).unwrap();
    std::fs::write(index_dir.join("index.pb"), stored.encode_to_vec()).unwrap();

    let app = SearchApp::start(options).await.unwrap();
    let init = app.init().await.unwrap();
    assert_eq!(init.rebuilt_from, "another-model");
    assert_eq!(init.indexed, 0, "none of its vectors are kept");
    assert!(init.model.starts_with("ngram-"), "{init:?}");
    let reports = index(&app, &[corpus()], |_| {}).await;
    assert_indexed_and_searchable(&reports);
    app.shutdown().await;

    // Rebuilt with the embedder's model: the next run keeps it.
    let app = SearchApp::start(stand_in(&dir)).await.unwrap();
    let again = app.init().await.unwrap();
    assert_eq!((again.indexed, again.rebuilt_from.as_str()), (5, ""));
    assert_eq!(again.model, init.model);
    app.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// An embedder written for a test: `model.check` names `checked`, its
/// vectors come from `embeds`, and it refuses any text holding `refuses`.
#[derive(Clone, Copy, Debug)]
struct FakeEmbedder {
    checked: &'static str,
    embeds: &'static str,
    refuses: &'static str,
}

impl workerbus_examples::embedder::EmbedderHandler for FakeEmbedder {
    async fn embed(
        &self,
        request: workerbus_examples::embedder::EmbedRequest,
        _cx: &workerbus::Context,
    ) -> Result<workerbus_examples::embedder::EmbedResponse, workerbus::Status> {
        if request.texts.iter().any(|text| text.contains(self.refuses)) {
            return Err(workerbus::Status::invalid_argument("text exceeds 64 KiB"));
        }
        let vector = workerbus_examples::embedder::Vector {
            values: vec![1.0, 0.0],
        };
        Ok(workerbus_examples::embedder::EmbedResponse {
            vectors: vec![vector; request.texts.len()],
            model: self.embeds.into(),
        })
    }

    async fn health(
        &self,
        _request: workerbus_examples::embedder::HealthRequest,
        _cx: &workerbus::Context,
    ) -> Result<workerbus_examples::embedder::HealthResponse, workerbus::Status> {
        Ok(Default::default())
    }
}

impl workerbus_examples::model::ModelHandler for FakeEmbedder {
    async fn check(
        &self,
        _request: workerbus_examples::model::CheckRequest,
        _cx: &workerbus::Context,
    ) -> Result<workerbus_examples::model::CheckResponse, workerbus::Status> {
        Ok(workerbus_examples::model::CheckResponse {
            exists: true,
            model: self.checked.into(),
            ..Default::default()
        })
    }

    async fn download(
        &self,
        _request: workerbus_examples::model::DownloadRequest,
        _cx: &workerbus::Context,
    ) -> Result<workerbus_examples::model::DownloadResponse, workerbus::Status> {
        Err(workerbus::Status::unimplemented("present already"))
    }
}

/// A search worker on a thread, over `embedder` on another, its index
/// open in `dir`.
async fn fake_app(
    embedder: FakeEmbedder,
    dir: &Path,
) -> (
    workerbus_examples::worker::WorkerClient,
    workerbus::ThreadWorker,
    workerbus::ThreadWorker,
) {
    use workerbus::{Services, ThreadDriver};
    use workerbus_examples::embedder::EmbedderServer;
    use workerbus_examples::model::ModelServer;
    use workerbus_examples::search::SearchWorker;
    use workerbus_examples::worker::{InitRequest, WorkerClient, WorkerServer};

    let services = Services::new(EmbedderServer::new(embedder)).add(ModelServer::new(embedder));
    let embedder = ThreadDriver::new().spawn(services).await.unwrap();
    let worker = ThreadDriver::new()
        .spawn(WorkerServer::new(SearchWorker::new(embedder.channel())))
        .await
        .unwrap();
    let client = WorkerClient::new(worker.channel());
    let init = InitRequest {
        db_dir: dir.display().to_string(),
        ..InitRequest::default()
    };
    client.init(init).await.unwrap();
    (client, worker, embedder)
}

#[tokio::test]
async fn vectors_of_another_model_than_the_index_are_refused() {
    let dir = data_dir("changed-model");
    // The embedder's model changed under its index.
    let changed = FakeEmbedder {
        checked: "model-a",
        embeds: "model-b",
        refuses: "\0",
    };
    let (client, worker, embedder) = fake_app(changed, &dir).await;

    let request = IndexRequest {
        paths: vec![corpus().join("bees.md").display().to_string()],
        replace: false,
    };
    let mut stream = client.index(request).await.unwrap();
    let status = match stream.message().await {
        Ok(Some(report)) => panic!("indexed with another model's vectors: {report:?}"),
        Ok(None) => panic!("the run ended without refusing"),
        Err(error) => error.status().cloned().unwrap(),
    };
    assert_eq!(status.code(), Code::FailedPrecondition);
    for named in ["bees.md", "\"model-b\"", "\"model-a\"", "rebuilt"] {
        assert!(status.message().contains(named), "{named}: {status}");
    }
    let stats = client.stats(StatsRequest {}).await.unwrap();
    assert_eq!((stats.indexed, stats.chunks), (0, 0));
    // A query's vector is refused too: its scores would mean nothing.
    let query = SearchRequest {
        query: "bees".into(),
        limit: 1,
    };
    let status = client.search(query).await.unwrap_err();
    assert_eq!(status.status().unwrap().code(), Code::FailedPrecondition);
    worker.shutdown().await;
    embedder.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_file_the_embedder_refuses_is_left_out_and_the_run_goes_on() {
    let dir = data_dir("refused");
    // Refuses the passages of tides.md, which alone speaks of the moon.
    let picky = FakeEmbedder {
        checked: "model-a",
        embeds: "model-a",
        refuses: "moon",
    };
    let (client, worker, embedder) = fake_app(picky, &dir).await;
    let reports = index_on(&client, &[corpus()], false, |_| {}).await;
    assert_eq!(reports.len(), 5, "{reports:?}");
    for report in &reports {
        let refused = file_name(&report.path) == "tides.md";
        assert_eq!(report.error.is_empty(), !refused, "{report:?}");
        if refused {
            let error = &report.error;
            assert!(error.starts_with("the embedder refused it: "), "{error}");
            assert!(error.ends_with("text exceeds 64 KiB"), "{error}");
        }
    }
    let stats = client.stats(StatsRequest {}).await.unwrap();
    assert_eq!(stats.indexed, 4);
    worker.shutdown().await;
    embedder.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The real model end to end (built with the examples' `real-model`
/// feature, as CI does): an embedder whose memory passes a threshold just
/// above its working size is recycled during the run without a failed
/// call, no passage is cut short, and questions that share no word with
/// their passages find them, where the stand-in's do not.
#[cfg(feature = "real-model")]
#[tokio::test]
async fn the_real_model_is_recycled_past_its_working_size_and_finds_by_meaning() {
    use prost::Message;
    use tokio::sync::broadcast::error::TryRecvError;
    use workerbus_examples::embedder::{EmbedRequest, EmbedderClient, HealthRequest};
    use workerbus_examples::search::recall;
    use workerbus_examples::search::worker::INDEX_FILE;
    use workerbus_examples::worker::StoredIndex;

    let dir = data_dir("minilm");
    let options = || SearchOptions::new(EMBEDDER, &dir).model(ModelKind::MiniLm);
    // The embedder's working size here: its memory once the model is
    // loaded (by its first call).
    let measuring =
        SearchApp::start(options().health_check(HealthCheck::every(Duration::from_secs(600))))
            .await
            .unwrap();
    let init = measuring.init().await.unwrap();
    assert!(init.model.starts_with("minilm-"), "{init:?}");
    let embedder = EmbedderClient::new(measuring.embedder().channel());
    let request = EmbedRequest {
        texts: vec!["warming up".into()],
        is_query: true,
    };
    embedder.embed(request).await.unwrap();
    let loaded = embedder.health(HealthRequest {}).await.unwrap().memory;
    measuring.shutdown().await;

    // Past it by half a MiB, an embedder that has embedded is recycled.
    let check = HealthCheck::every(Duration::from_millis(20))
        .timeout(Duration::from_secs(5))
        .recycle_above_memory(loaded + (512 << 10));
    let app = SearchApp::start(options().health_check(check))
        .await
        .unwrap();
    let mut events = app.supervisor().subscribe();
    app.init().await.unwrap();
    let reports = index(&app, &[corpus()], |_| {}).await;
    assert_indexed_and_searchable(&reports);
    let mut recycles = Vec::new();
    loop {
        match events.try_recv() {
            Ok(SupervisorEvent::Recycling { reason, .. }) => recycles.push(reason),
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    assert!(!recycles.is_empty(), "never recycled past {loaded} bytes");
    assert!(
        recycles.iter().all(|reason| reason.contains("memory")),
        "{recycles:?}"
    );

    // The model reads every passage to its end: a word added changes each
    // one's vector.
    let index_file = app.options().index_dir().join(INDEX_FILE);
    let stored = StoredIndex::decode(std::fs::read(index_file).unwrap().as_slice()).unwrap();
    let embedder = EmbedderClient::new(app.embedder().channel());
    let (cut, passages) = recall::passages_cut(&embedder, &stored).await.unwrap();
    assert_eq!(
        (cut, passages),
        (0, stored.files.iter().map(|f| f.chunks.len()).sum())
    );

    // Questions that share no word with their passages: the real model
    // finds them, the stand-in (below) does not.
    let by_meaning = [
        ("why does the sea level go up and down", "tides.md"),
        (
            "what are those snowballs in space with a bright trail",
            "comets.md",
        ),
    ];
    for (query, file) in by_meaning {
        let results = search(&app, query).await;
        assert_eq!(file_name(&results[0].path), file, "{query}: {results:?}");
    }
    for method in app.metrics().snapshot().methods() {
        assert_eq!(method.failed(), 0, "{method:?}");
    }
    assert!(app.recoveries().is_empty(), "a recycle is not a crash");
    app.shutdown().await;

    let words = SearchApp::start(stand_in(&dir)).await.unwrap();
    words.init().await.unwrap();
    index(&words, &[corpus()], |_| {}).await;
    for (query, file) in by_meaning {
        let results = search(&words, query).await;
        assert_ne!(file_name(&results[0].path), file, "{query}: {results:?}");
    }
    words.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}
