//! The embedder process: a stand-in embedding model, the `Embedder` service
//! that runs it, and the `Model` service that manages its file.
//!
//! The model is deterministic and local: hashed word and character n-gram
//! features, L2-normalised. Texts that share words and word pieces get
//! close vectors, which is enough to search this repository by topic. It is
//! a stand-in: to use a real model, implement [`EmbedderHandler::embed`]
//! with it (and `Model::download` to fetch its weights); nothing else in
//! the application changes.

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

/// The environment variable that tells the embedder process where its model
/// file is.
pub const MODEL_PATH_ENV: &str = "WORKERBUS_SEARCH_MODEL";

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

/// Loads the model file at `path`, saying what to do if it is missing.
fn load(path: &Path) -> Result<NgramModel, Status> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        Status::failed_precondition(format!(
            "the model at {} cannot be read ({error}); call model.download first",
            path.display()
        ))
    })?;
    NgramModel::from_file(&text).map_err(|problem| {
        Status::failed_precondition(format!("the model at {}: {problem}", path.display()))
    })
}

/// The `Embedder` service, running the model from its file.
#[derive(Debug)]
pub struct ModelEmbedder {
    path: PathBuf,
    model: Mutex<Option<Arc<NgramModel>>>,
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

    fn model(&self) -> Result<Arc<NgramModel>, Status> {
        let mut model = lock(&self.model);
        if let Some(model) = &*model {
            return Ok(Arc::clone(model));
        }
        let loaded = Arc::new(load(&self.path)?);
        *model = Some(Arc::clone(&loaded));
        Ok(loaded)
    }
}

impl EmbedderHandler for ModelEmbedder {
    async fn embed(&self, request: EmbedRequest, _cx: &Context) -> Result<EmbedResponse, Status> {
        if request.texts.is_empty() {
            return Err(Status::invalid_argument("no texts to embed"));
        }
        let model = self.model()?;
        // Queries and documents are embedded alike by this model.
        let vectors = request
            .texts
            .iter()
            .map(|text| Vector {
                values: model.embed(text),
            })
            .collect();
        self.processed
            .fetch_add(request.texts.len() as u64, Ordering::Relaxed);
        Ok(EmbedResponse { vectors })
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
        let model = load(&self.path).ok();
        Ok(CheckResponse {
            exists: model.is_some(),
            path: self.path.display().to_string(),
            model: model.map(|model| model.id()).unwrap_or_default(),
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
        // Written whole: a crash never leaves half a model.
        let written = super::data::write_whole(&path, NgramModel::default().to_file().as_bytes());
        Ok(match written {
            Ok(()) => DownloadResponse {
                success: true,
                error: String::new(),
            },
            Err(error) => DownloadResponse {
                success: false,
                error: format!("writing {}: {error}", path.display()),
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
