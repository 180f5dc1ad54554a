//! The embedder process: the embedding models, the `Embedder` service that
//! runs one, and the `Model` service that manages its file.
//!
//! Two models, named by their model file (`ngram.model`, `minilm.model`):
//!
//! - the stand-in ([`NgramModel`]), deterministic and local: hashed word and
//!   character n-gram features, L2-normalised. Texts that share words and
//!   word pieces get close vectors, which is enough to find a topic; it
//!   reads keyword matches, not meaning, and its memory never grows;
//! - with the examples' `real-model` feature, a real sentence-embedding
//!   model: paraphrase-MiniLM-L3-v2 (384 dimensions), bundled by the
//!   `pocket-encoder` crate, run on the CPU. It reads at most
//!   [`MINILM_MAX_TOKENS`] tokens of a text, so the search worker cuts
//!   passages to fit.
//!
//! Whichever runs, an embedder answers with the name of the model that made
//! its vectors, and an index takes the vectors of one model only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use workerbus::{Context, Status};

use super::lock;

use crate::embedder::{
    EmbedRequest, EmbedResponse, EmbedderHandler, HealthRequest, HealthResponse, Vector,
};
use crate::model::{CheckResponse, DownloadRequest, DownloadResponse, ModelHandler};

/// The first line of a model file.
const HEADER: &str = "workerbus-search stand-in model v1";

/// The first line of the real model's file: the weights are in the program,
/// the file records which ones.
#[cfg(feature = "real-model")]
const MINILM_HEADER: &str = "workerbus-search model: paraphrase-MiniLM-L3-v2 (pocket-encoder)";

/// The most tokens of a text the real model reads, its two special tokens
/// included; it cuts longer texts at their end.
pub const MINILM_MAX_TOKENS: u32 = 128;

/// The environment variable that tells the embedder process where its model
/// file is. The file's name says which model it is
/// ([`ModelKind::file_name`]).
pub const MODEL_PATH_ENV: &str = "WORKERBUS_SEARCH_MODEL";

/// Which model an embedder runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// The stand-in, [`NgramModel`]: no limit on a text's length.
    Ngram,
    /// paraphrase-MiniLM-L3-v2, bundled by `pocket-encoder`; only in
    /// programs built with the examples' `real-model` feature.
    MiniLm,
}

impl ModelKind {
    /// Both models, the stand-in first.
    pub const ALL: [ModelKind; 2] = [ModelKind::Ngram, ModelKind::MiniLm];

    /// The model a run uses unless told otherwise: the real one in a
    /// program built with it, the stand-in otherwise.
    pub fn default_for_build() -> ModelKind {
        if cfg!(feature = "real-model") {
            ModelKind::MiniLm
        } else {
            ModelKind::Ngram
        }
    }

    /// Its name on the command line: `ngram` or `minilm`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Ngram => "ngram",
            ModelKind::MiniLm => "minilm",
        }
    }

    /// The model named `name`, if this program can run it.
    pub fn from_name(name: &str) -> Result<ModelKind, String> {
        let kind = ModelKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| format!("unknown model {name:?}: the models are ngram and minilm"))?;
        if !kind.is_built() {
            return Err(format!(
                "this program was built without the real model: build it with \
                 `--features real-model` to use {name}"
            ));
        }
        Ok(kind)
    }

    /// Whether this program can run it.
    pub fn is_built(self) -> bool {
        self == ModelKind::Ngram || cfg!(feature = "real-model")
    }

    /// The name of its model file, which tells the embedder which model to
    /// run: `ngram.model` or `minilm.model`.
    pub fn file_name(self) -> String {
        format!("{}.model", self.name())
    }

    /// Where its model file is kept under a data directory.
    pub fn path_in(self, data_dir: &Path) -> PathBuf {
        data_dir.join("model").join(self.file_name())
    }

    /// The model a model file's name says.
    fn of_path(path: &Path) -> Result<ModelKind, String> {
        let name = path.file_name().and_then(|name| name.to_str());
        ModelKind::ALL
            .into_iter()
            .find(|kind| name == Some(kind.file_name().as_str()))
            .ok_or_else(|| {
                format!(
                    "{} names no model: a model file is called ngram.model or minilm.model",
                    path.display()
                )
            })
    }
}

/// The stand-in model: hashed word and character n-gram features.
#[derive(Clone, Debug, PartialEq)]
pub struct NgramModel {
    /// The length of every vector.
    pub dimensions: usize,
    /// The character n-gram lengths taken inside each word.
    pub char_ngrams: Vec<usize>,
    /// The weight of a whole word, against 1 for each of its n-grams.
    pub word_weight: f32,
}

impl Default for NgramModel {
    fn default() -> NgramModel {
        NgramModel {
            dimensions: 384,
            char_ngrams: vec![3, 4],
            word_weight: 3.0,
        }
    }
}

/// FNV-1a, seeded: stable across runs and machines.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325 ^ seed, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3)
        })
}

/// Words too common to say anything about a passage.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "its", "of",
    "on", "or", "that", "the", "this", "to", "with",
];

impl NgramModel {
    /// The model's file: its parameters, one per line.
    pub fn to_file(&self) -> String {
        let ngrams: Vec<String> = self.char_ngrams.iter().map(usize::to_string).collect();
        format!(
            "{HEADER}\ndimensions = {}\nchar_ngrams = {}\nword_weight = {}\n",
            self.dimensions,
            ngrams.join(","),
            self.word_weight
        )
    }

    /// Reads a model file, or says what is wrong with it.
    pub fn from_file(text: &str) -> Result<NgramModel, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!(
                "not a model file (its first line is not {HEADER:?})"
            ));
        }
        let mut model = NgramModel::default();
        for line in lines.filter(|line| !line.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .map(|(key, value)| (key.trim(), value.trim()))
                .ok_or_else(|| format!("not a `key = value` line: {line:?}"))?;
            let bad = |what: &str| format!("{key} = {value:?}: {what}");
            match key {
                "dimensions" => {
                    model.dimensions = value
                        .parse()
                        .ok()
                        .filter(|dimensions| *dimensions > 0)
                        .ok_or_else(|| bad("not a positive number"))?;
                }
                "char_ngrams" => {
                    model.char_ngrams = value
                        .split(',')
                        .map(|n| n.trim().parse().ok().filter(|n| *n > 0))
                        .collect::<Option<Vec<usize>>>()
                        .ok_or_else(|| bad("not a list of positive numbers"))?;
                }
                "word_weight" => {
                    model.word_weight = value.parse().map_err(|_| bad("not a number"))?;
                }
                _ => return Err(format!("unknown parameter {key:?}")),
            }
        }
        Ok(model)
    }

    /// The text's vector, of length `dimensions` and norm 1 (or all zeros
    /// for a text without words).
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut vector = vec![0.0f32; self.dimensions];
        let mut add = |seed: u64, feature: &[u8], weight: f32| {
            let hash = hash(seed, feature);
            // The hash picks a bucket and a sign, so that collisions cancel
            // out rather than pile up.
            let bucket = (hash % self.dimensions as u64) as usize;
            let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
            vector[bucket] += sign * weight;
        };
        let lower = text.to_lowercase();
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty() && !STOP_WORDS.contains(word))
        {
            add(0, word.as_bytes(), self.word_weight);
            let padded: Vec<char> = format!("<{word}>").chars().collect();
            for &n in &self.char_ngrams {
                for gram in padded.windows(n) {
                    let gram: String = gram.iter().collect();
                    add(n as u64, gram.as_bytes(), 1.0);
                }
            }
        }
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            vector.iter_mut().for_each(|x| *x /= norm);
        }
        vector
    }

    /// A short name for the model and its parameters, to tell indexes made
    /// with another model apart.
    pub fn id(&self) -> String {
        format!("ngram-{:016x}", hash(0, self.to_file().as_bytes()))
    }
}

/// The model file's path, from [`MODEL_PATH_ENV`].
pub fn model_path_from_env() -> Result<PathBuf, String> {
    std::env::var_os(MODEL_PATH_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{MODEL_PATH_ENV} is not set: the host says where the model is"))
}

/// Why a program built without the examples' `real-model` feature runs no
/// real model.
const NOT_BUILT: &str =
    "this embedder was built without the minilm model (the examples' real-model feature)";

/// A model file, read and checked: which model, with which parameters. No
/// weights are loaded to read one.
#[derive(Clone, Debug)]
enum ModelFile {
    Ngram(NgramModel),
    MiniLm,
}

impl ModelFile {
    /// Reads the model file at `path`, saying what to do if it is missing.
    fn read(path: &Path) -> Result<ModelFile, Status> {
        let problem = |problem: String| {
            Status::failed_precondition(format!("the model at {}: {problem}", path.display()))
        };
        let kind = ModelKind::of_path(path).map_err(Status::failed_precondition)?;
        if !kind.is_built() {
            return Err(problem(NOT_BUILT.to_owned()));
        }
        let text = std::fs::read_to_string(path).map_err(|error| {
            Status::failed_precondition(format!(
                "the model at {} cannot be read ({error}); call model.download first",
                path.display()
            ))
        })?;
        match kind {
            ModelKind::Ngram => NgramModel::from_file(&text)
                .map(ModelFile::Ngram)
                .map_err(problem),
            ModelKind::MiniLm => minilm::check_file(&text)
                .map(|()| ModelFile::MiniLm)
                .map_err(problem),
        }
    }

    /// The file `model.download` writes for `kind`.
    fn of_kind(kind: ModelKind) -> Result<String, String> {
        match kind {
            ModelKind::Ngram => Ok(NgramModel::default().to_file()),
            ModelKind::MiniLm => minilm::file(),
        }
    }

    /// The name of the model, parameters and weights included, that tells
    /// its vectors apart from any other model's.
    fn id(&self) -> String {
        match self {
            ModelFile::Ngram(model) => model.id(),
            ModelFile::MiniLm => minilm::id(),
        }
    }

    /// The most tokens of a text it reads (0: all of it).
    fn max_tokens(&self) -> u32 {
        match self {
            ModelFile::Ngram(_) => 0,
            ModelFile::MiniLm => MINILM_MAX_TOKENS,
        }
    }

    /// The model, ready to embed: for the real one, its weights expanded
    /// (about 0.1 s, a blocking call).
    fn load(self) -> Result<Loaded, Status> {
        let id = self.id();
        let engine = match self {
            ModelFile::Ngram(model) => Engine::Ngram(model),
            ModelFile::MiniLm => Engine::MiniLm(minilm::load().map_err(Status::internal)?),
        };
        Ok(Loaded { id, engine })
    }
}

/// A model, loaded and ready to embed.
#[derive(Debug)]
struct Loaded {
    id: String,
    engine: Engine,
}

#[derive(Debug)]
enum Engine {
    Ngram(NgramModel),
    MiniLm(minilm::MiniLm),
}

impl Loaded {
    /// One vector per text, in order.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, Status> {
        match &self.engine {
            Engine::Ngram(model) => Ok(texts.iter().map(|text| model.embed(text)).collect()),
            Engine::MiniLm(minilm) => minilm.embed(texts).await,
        }
    }
}

/// Runs `work` on a thread of the blocking pool, off the serve loop's.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Status::internal(format!("the model's task failed: {error}")))?
}

/// The real model: paraphrase-MiniLM-L3-v2 from `pocket-encoder`, or, in a
/// program built without it, the reasons it is missing.
#[cfg(feature = "real-model")]
mod minilm {
    use workerbus::Status;

    use super::MINILM_HEADER;

    /// The loaded model; a clone shares its weights.
    #[derive(Clone)]
    pub(super) struct MiniLm(pocket_encoder::Encoder);

    impl std::fmt::Debug for MiniLm {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("MiniLm")
        }
    }

    impl MiniLm {
        /// One vector per text: seconds of arithmetic, run off the serve
        /// loop's thread, so that health checks (and the memory they
        /// report) are answered meanwhile. The clone shares the weights.
        pub(super) async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, Status> {
            let encoder = self.0.clone();
            super::blocking(move || {
                encoder.embed(&texts).map_err(|error| match error {
                    pocket_encoder::Error::Input(problem) => Status::invalid_argument(problem),
                    error => Status::internal(error.to_string()),
                })
            })
            .await
        }
    }

    /// The model's file: what identifies the weights this program bundles.
    fn text() -> String {
        let info = pocket_encoder::model_info();
        format!(
            "{MINILM_HEADER}\nid = {}\nrevision = {}\ntokenizer = {}\n",
            info.id, info.revision, info.tokenizer_sha256
        )
    }

    /// The model file `model.download` writes, once the bundled weights
    /// are seen to load.
    pub(super) fn file() -> Result<String, String> {
        load()?;
        Ok(text())
    }

    /// Whether a model file names the weights this program bundles.
    pub(super) fn check_file(file: &str) -> Result<(), String> {
        if file == text() {
            return Ok(());
        }
        let revision = |file: &str| file.lines().nth(2).unwrap_or_default().to_owned();
        Err(format!(
            "it names other weights ({:?}) than this program's ({:?}): download it again",
            revision(file),
            revision(&text())
        ))
    }

    /// The name its vectors carry: the model and a digest of everything
    /// its file records (weights, tokenizer), since vectors are comparable
    /// only when all of it is the same.
    pub(super) fn id() -> String {
        format!("minilm-{:016x}", super::hash(0, text().as_bytes()))
    }

    /// Loads the bundled weights (once a process; about 0.1 s).
    pub(super) fn load() -> Result<MiniLm, String> {
        pocket_encoder::Encoder::new()
            .map(MiniLm)
            .map_err(|error| format!("loading the bundled weights: {error}"))
    }
}

#[cfg(not(feature = "real-model"))]
mod minilm {
    use workerbus::Status;

    use super::NOT_BUILT as MISSING;

    /// Never made: without the feature, no file names the real model.
    #[derive(Clone, Debug)]
    pub(super) enum MiniLm {}

    impl MiniLm {
        pub(super) async fn embed(&self, _texts: Vec<String>) -> Result<Vec<Vec<f32>>, Status> {
            match *self {}
        }
    }

    pub(super) fn file() -> Result<String, String> {
        Err(MISSING.to_owned())
    }

    pub(super) fn check_file(_file: &str) -> Result<(), String> {
        Err(MISSING.to_owned())
    }

    pub(super) fn id() -> String {
        "minilm".to_owned()
    }

    pub(super) fn load() -> Result<MiniLm, String> {
        Err(MISSING.to_owned())
    }
}

/// The `Embedder` service, running the model from its file.
#[derive(Debug)]
pub struct ModelEmbedder {
    path: PathBuf,
    model: Mutex<Option<Arc<Loaded>>>,
    processed: AtomicU64,
}

impl ModelEmbedder {
    /// An embedder that loads the model at `path` on its first request.
    pub fn new(path: impl Into<PathBuf>) -> ModelEmbedder {
        ModelEmbedder {
            path: path.into(),
            model: Mutex::new(None),
            processed: AtomicU64::new(0),
        }
    }

    /// The model, loaded on the first call that needs it, off the serve
    /// loop's thread.
    async fn model(&self) -> Result<Arc<Loaded>, Status> {
        if let Some(model) = &*lock(&self.model) {
            return Ok(Arc::clone(model));
        }
        let path = self.path.clone();
        let loaded = Arc::new(blocking(move || ModelFile::read(&path)?.load()).await?);
        // Two first calls may both load: the weights are shared either way.
        Ok(Arc::clone(lock(&self.model).get_or_insert(loaded)))
    }
}

impl EmbedderHandler for ModelEmbedder {
    async fn embed(&self, request: EmbedRequest, _cx: &Context) -> Result<EmbedResponse, Status> {
        if request.texts.is_empty() {
            return Err(Status::invalid_argument("no texts to embed"));
        }
        let model = self.model().await?;
        let count = request.texts.len() as u64;
        // Queries and documents are embedded alike by both models.
        let vectors = model.embed(request.texts).await?;
        self.processed.fetch_add(count, Ordering::Relaxed);
        Ok(EmbedResponse {
            vectors: vectors
                .into_iter()
                .map(|values| Vector { values })
                .collect(),
            model: model.id.clone(),
        })
    }

    async fn health(
        &self,
        _request: HealthRequest,
        _cx: &Context,
    ) -> Result<HealthResponse, Status> {
        Ok(HealthResponse {
            memory: workerbus::resident_memory().unwrap_or(0),
            processed_count: self.processed.load(Ordering::Relaxed),
        })
    }
}

/// The `Model` service: checks and "downloads" the model file.
#[derive(Debug)]
pub struct ModelFiles {
    path: PathBuf,
}

impl ModelFiles {
    /// Manages the model file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> ModelFiles {
        ModelFiles { path: path.into() }
    }
}

impl ModelHandler for ModelFiles {
    async fn check(
        &self,
        _request: crate::model::CheckRequest,
        _cx: &Context,
    ) -> Result<CheckResponse, Status> {
        let model = ModelFile::read(&self.path).ok();
        Ok(CheckResponse {
            exists: model.is_some(),
            path: self.path.display().to_string(),
            model: model.as_ref().map(ModelFile::id).unwrap_or_default(),
            max_tokens: model.as_ref().map_or(0, ModelFile::max_tokens),
        })
    }

    async fn download(
        &self,
        request: DownloadRequest,
        _cx: &Context,
    ) -> Result<DownloadResponse, Status> {
        let path = if request.path.is_empty() {
            self.path.clone()
        } else {
            PathBuf::from(&request.path)
        };
        // The stand-in's parameters, or the record of the real model's
        // bundled weights: no network either way. Written whole: a crash
        // never leaves half a model.
        let kind = ModelKind::of_path(&path);
        // Loading the real model's weights to see them load blocks.
        let file = blocking(move || Ok(kind.and_then(ModelFile::of_kind))).await?;
        let written = file.and_then(|file| {
            super::data::write_whole(&path, file.as_bytes())
                .map_err(|error| format!("writing {}: {error}", path.display()))
        });
        Ok(match written {
            Ok(()) => DownloadResponse {
                success: true,
                error: String::new(),
            },
            Err(error) => DownloadResponse {
                success: false,
                error,
            },
        })
    }
}

/// Serves the embedder process: the `Embedder` and `Model` services, with
/// the model file named by [`MODEL_PATH_ENV`].
pub async fn serve_embedder() -> Result<(), Box<dyn std::error::Error>> {
    use crate::embedder::EmbedderServer;
    use crate::model::ModelServer;

    let path = model_path_from_env()?;
    let services = workerbus::Services::new(EmbedderServer::new(ModelEmbedder::new(&path)))
        .add(ModelServer::new(ModelFiles::new(&path)));
    workerbus::serve(services).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_normalised_and_deterministic() {
        let model = NgramModel::default();
        let vector = model.embed("Restart the crashed worker");
        assert_eq!(vector.len(), 384);
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(vector, model.embed("Restart the crashed worker"));
        assert!(model.embed("the of and").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn related_texts_are_closer_than_unrelated_ones() {
        let model = NgramModel::default();
        let query = model.embed("restarting crashed workers");
        let related = model.embed("The supervisor restarts a worker that crashed.");
        let unrelated = model.embed("Frames are length-delimited protobuf messages.");
        assert!(cosine(&query, &related) > cosine(&query, &unrelated) + 0.1);
    }

    #[test]
    fn the_model_file_round_trips_and_bad_files_are_named() {
        let model = NgramModel::default();
        assert_eq!(NgramModel::from_file(&model.to_file()), Ok(model));
        assert!(
            NgramModel::from_file("hello")
                .unwrap_err()
                .starts_with("not a model file")
        );
        let bad = format!("{HEADER}\ndimensions = 0\n");
        assert_eq!(
            NgramModel::from_file(&bad).unwrap_err(),
            "dimensions = \"0\": not a positive number"
        );
    }
}
