//! The search worker: the `Worker` service, which indexes files and answers
//! queries, asking the embedder process for vectors.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use workerbus::{Channel, Code, Context, Status, StreamSender};

use super::index::{self, Index, Passage, Stamp};
use super::lock;
use crate::embedder::{EmbedRequest, EmbedderClient};
use crate::model::{CheckRequest, CheckResponse, DownloadRequest, ModelClient};
use crate::worker::{
    IndexProgress, IndexRequest, InitRequest, InitResponse, SearchRequest, SearchResponse,
    StatsRequest, StatsResponse, WorkerHandler,
};

/// Passages sent to the embedder in one `embedder.embed` call.
pub const EMBED_BATCH: usize = 32;

/// Results of a search when the request does not say.
pub const DEFAULT_LIMIT: u32 = 5;

/// The most results a search returns.
pub const MAX_LIMIT: u32 = 100;

/// The index's file name in `db_dir`.
pub const INDEX_FILE: &str = "index.pb";

/// The `Worker` service. It owns the index; the embedder it calls is
/// whatever serves `Embedder` and `Model` on its channel (in the example, a
/// supervised process).
#[derive(Debug)]
pub struct SearchWorker {
    embedder: EmbedderClient,
    model: ModelClient,
    opened: Mutex<Option<Opened>>,
    /// One index run at a time: a second waits for the first.
    indexing: tokio::sync::Mutex<()>,
    queued: AtomicU64,
    processing: AtomicU64,
}

#[derive(Debug)]
struct Opened {
    index: Index,
    file: PathBuf,
    /// The most tokens of a text the model reads (0: no limit).
    max_tokens: u32,
}

fn not_initialised() -> Status {
    Status::failed_precondition("the index is not open: call worker.init first")
}

impl SearchWorker {
    /// A worker that embeds through `embedder`, a channel to a worker that
    /// serves the `Embedder` and `Model` services.
    pub fn new(embedder: Channel) -> SearchWorker {
        SearchWorker {
            embedder: EmbedderClient::new(embedder.clone()),
            model: ModelClient::new(embedder),
            opened: Mutex::new(None),
            indexing: tokio::sync::Mutex::new(()),
            queued: AtomicU64::new(0),
            processing: AtomicU64::new(0),
        }
    }

    /// The vectors of `texts`, in batches of [`EMBED_BATCH`], made by the
    /// model of the open index: the vectors of any other are refused.
    async fn embed(&self, texts: Vec<String>, is_query: bool) -> Result<Vec<Vec<f32>>, Status> {
        let model = self.with_index(|index| index.model().to_owned())?;
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(EMBED_BATCH) {
            self.processing.store(batch.len() as u64, Ordering::Relaxed);
            let processing = ClearOnDrop(&self.processing);
            let response = self
                .embedder
                .embed(EmbedRequest {
                    texts: batch.to_vec(),
                    is_query,
                })
                .await;
            drop(processing);
            let response = response?;
            if response.model != model {
                return Err(Status::failed_precondition(format!(
                    "the embedder answered with vectors of the model {:?}, but the index holds \
                     vectors of {model:?}: vectors of two models are not comparable, so none \
                     were taken; run again, and the index is rebuilt with the embedder's model",
                    response.model
                )));
            }
            if response.vectors.len() != batch.len() {
                return Err(Status::internal(format!(
                    "the embedder returned {} vectors for {} texts",
                    response.vectors.len(),
                    batch.len()
                )));
            }
            vectors.extend(response.vectors.into_iter().map(|vector| vector.values));
        }
        Ok(vectors)
    }

    /// Indexes one file unless the index holds it as it is: its progress
    /// report, or the embedder's failure (which ends the run).
    async fn index_file(&self, path: &Path) -> Result<IndexProgress, Status> {
        let name = path.display().to_string();
        let done = |chunks: usize, skipped: bool, error: String| IndexProgress {
            path: name.clone(),
            chunks: chunks as u32,
            skipped,
            error,
            ..IndexProgress::default()
        };
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(error) => return Ok(done(0, false, error.to_string())),
        };
        let stamp = Stamp::of(&metadata);
        let current = self.with_index(|index| {
            index
                .is_current(&name, stamp)
                .then(|| index.chunks_of(&name))
        })?;
        if let Some(chunks) = current {
            return Ok(done(chunks, true, String::new()));
        }
        if metadata.len() > index::MAX_FILE_LEN {
            let error = format!("larger than {} bytes", index::MAX_FILE_LEN);
            return Ok(done(0, false, error));
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => return Ok(done(0, false, error.to_string())),
        };
        let max_tokens = self.with_opened(|opened| opened.max_tokens)?;
        let passages: Vec<Passage> = index::passages_in(&label(path), &text, max_tokens);
        let texts = passages.iter().map(Passage::embedded).collect();
        let vectors = match self.embed(texts, false).await {
            Ok(vectors) => vectors,
            // The embedder refuses this file's text: the file is left out,
            // and the run goes on.
            Err(status) if status.code() == Code::InvalidArgument => {
                let error = format!("the embedder refused it: {}", status.message());
                return Ok(done(0, false, error));
            }
            Err(status) => {
                let message = format!("indexing {name}: {}", status.message());
                return Err(Status::new(status.code(), message));
            }
        };
        self.with_index(|index| index.insert(name.clone(), stamp, &passages, vectors))?;
        Ok(done(passages.len(), false, String::new()))
    }

    /// Runs `f` on the open index.
    fn with_index<T>(&self, f: impl FnOnce(&mut Index) -> T) -> Result<T, Status> {
        self.with_opened(|opened| f(&mut opened.index))
    }

    /// Runs `f` on what `worker.init` opened.
    fn with_opened<T>(&self, f: impl FnOnce(&mut Opened) -> T) -> Result<T, Status> {
        let mut opened = lock(&self.opened);
        let opened = opened.as_mut().ok_or_else(not_initialised)?;
        Ok(f(opened))
    }

    /// Stores the index in its file.
    fn save(&self) -> Result<(), Status> {
        let opened = lock(&self.opened);
        let opened = opened.as_ref().ok_or_else(not_initialised)?;
        opened.index.save(&opened.file).map_err(|error| {
            Status::internal(format!(
                "storing the index in {}: {error}",
                opened.file.display()
            ))
        })
    }
}

/// A file as a passage's context names it: its directory's name and its
/// own (`docs/PROTOCOL.md`, `supervisor/policy.rs`).
fn label(path: &Path) -> String {
    let mut names: Vec<_> = path
        .iter()
        .rev()
        .take(2)
        .map(|name| name.to_string_lossy())
        .collect();
    names.reverse();
    names.join("/")
}

/// Sets a counter to zero when dropped.
struct ClearOnDrop<'a>(&'a AtomicU64);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

impl WorkerHandler for SearchWorker {
    async fn init(&self, request: InitRequest, _cx: &Context) -> Result<InitResponse, Status> {
        if request.db_dir.is_empty() {
            return Err(Status::invalid_argument(
                "db_dir is empty: say where the index lives",
            ));
        }
        let model = ensure_model(&self.model).await?;
        let file = Path::new(&request.db_dir).join(INDEX_FILE);
        let (index, rebuilt_from) = Index::open(&file, &model.model).map_err(|error| {
            Status::failed_precondition(format!("opening the index {}: {error}", file.display()))
        })?;
        let indexed = index.files() as u64;
        *lock(&self.opened) = Some(Opened {
            index,
            file,
            max_tokens: model.max_tokens,
        });
        Ok(InitResponse {
            ready: true,
            indexed,
            model: model.model,
            rebuilt_from: rebuilt_from.unwrap_or_default(),
        })
    }

    async fn search(
        &self,
        request: SearchRequest,
        _cx: &Context,
    ) -> Result<SearchResponse, Status> {
        if request.query.trim().is_empty() {
            return Err(Status::invalid_argument("the query is empty"));
        }
        if lock(&self.opened).is_none() {
            return Err(not_initialised());
        }
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            limit => limit.min(MAX_LIMIT),
        };
        let vector = self
            .embed(vec![request.query.clone()], true)
            .await?
            .pop()
            .unwrap_or_default();
        let opened = lock(&self.opened);
        let opened = opened.as_ref().ok_or_else(not_initialised)?;
        Ok(SearchResponse {
            results: opened.index.search(&request.query, &vector, limit as usize),
        })
    }

    async fn index(
        &self,
        request: IndexRequest,
        progress: StreamSender<IndexProgress>,
        _cx: &Context,
    ) -> Result<(), Status> {
        if lock(&self.opened).is_none() {
            return Err(not_initialised());
        }
        if request.paths.is_empty() {
            return Err(Status::invalid_argument("no paths to index"));
        }
        let _one_run = self.indexing.lock().await;
        // However the run ends (finished, failed, or cancelled by the host
        // dropping the stream), nothing stays queued.
        let _queue = ClearOnDrop(&self.queued);
        let paths: Vec<PathBuf> = request.paths.iter().map(PathBuf::from).collect();
        let (files, unreadable) = index::collect_files(&paths);
        let total = (files.len() + unreadable.len()) as u32;
        self.queued.store(u64::from(total), Ordering::Relaxed);
        let mut done = 0;
        let mut report = |mut report: IndexProgress| {
            done += 1;
            report.done = done;
            report.total = total;
            self.queued.fetch_sub(1, Ordering::Relaxed);
            report
        };
        for (path, error) in unreadable {
            let failed = IndexProgress {
                path: path.display().to_string(),
                error,
                ..IndexProgress::default()
            };
            progress.send(report(failed)).await?;
        }
        let mut changed = false;
        for file in &files {
            let indexed = match self.index_file(file).await {
                Ok(indexed) => indexed,
                Err(status) => {
                    // What was indexed before the failure is kept.
                    if changed {
                        self.save()?;
                    }
                    return Err(status);
                }
            };
            changed |= !indexed.skipped && indexed.error.is_empty();
            progress.send(report(indexed)).await?;
        }
        if request.replace {
            let wanted: std::collections::HashSet<String> = files
                .iter()
                .map(|file| file.display().to_string())
                .collect();
            changed |= self.with_index(|index| index.retain(|path| wanted.contains(path)))? > 0;
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    async fn stats(&self, _request: StatsRequest, _cx: &Context) -> Result<StatsResponse, Status> {
        let (indexed, chunks) = match &*lock(&self.opened) {
            Some(opened) => (opened.index.files() as u64, opened.index.chunks() as u64),
            None => (0, 0),
        };
        Ok(StatsResponse {
            indexed,
            queued: self.queued.load(Ordering::Relaxed),
            processing: self.processing.load(Ordering::Relaxed),
            chunks,
        })
    }
}

/// The model, as `model.check` describes it, downloading it first if it is
/// missing: what a search worker does before it indexes, and a serving node
/// before it serves.
pub(crate) async fn ensure_model(model: &ModelClient) -> Result<CheckResponse, Status> {
    let check = model.check(CheckRequest {}).await?;
    if check.exists {
        return Ok(check);
    }
    let download = model
        .download(DownloadRequest {
            path: check.path.clone(),
        })
        .await?;
    if !download.success {
        return Err(Status::failed_precondition(format!(
            "the model could not be downloaded to {}: {}",
            check.path, download.error
        )));
    }
    let check = model.check(CheckRequest {}).await?;
    if !check.exists {
        return Err(Status::failed_precondition(format!(
            "the model is still missing at {} after its download",
            check.path
        )));
    }
    Ok(check)
}
