//! Search quality, measured: queries about this repository, each with the
//! passages a reader would expect among its first results
//! (`examples/search-queries.txt`), and the recall of a search over them.
//!
//! An expected passage is named by its file and a phrase it holds, not by
//! line numbers, so that the queries outlive edits: a result is that
//! passage when it comes from that file and its lines hold the phrase.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::embedder::{EmbedRequest, EmbedderClient};
use crate::worker::StoredIndex;

/// The queries' file, relative to the repository's root.
pub const QUERIES_FILE: &str = "examples/search-queries.txt";

/// A query and the passages a reader would expect it to find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// What is searched for.
    pub text: String,
    /// The passages it should find.
    pub expected: Vec<Expected>,
}

/// A passage a query should find: a file, relative to the repository's
/// root, and a phrase the passage holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The file, relative to the repository's root.
    pub path: String,
    /// A phrase the passage holds (compared without case, and with runs of
    /// whitespace as one space).
    pub phrase: String,
}

/// Reads the queries' file: blocks of a `query:` line followed by
/// `expect: PATH | PHRASE` lines; `#` starts a comment line.
pub fn parse(text: &str) -> Result<Vec<Query>, String> {
    let mut queries: Vec<Query> = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
    {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("line {number}: {what}: {line:?}");
        if let Some(query) = line.strip_prefix("query:") {
            queries.push(Query {
                text: query.trim().to_owned(),
                expected: Vec::new(),
            });
        } else if let Some(expect) = line.strip_prefix("expect:") {
            let (path, phrase) = expect
                .split_once('|')
                .ok_or_else(|| bad("an expectation is `expect: PATH | PHRASE`"))?;
            let query = queries
                .last_mut()
                .ok_or_else(|| bad("an expectation before any query"))?;
            query.expected.push(Expected {
                path: path.trim().to_owned(),
                phrase: phrase.trim().to_owned(),
            });
        } else {
            return Err(bad("neither `query:` nor `expect:`"));
        }
    }
    if let Some(query) = queries.iter().find(|query| query.expected.is_empty()) {
        return Err(format!("the query {:?} expects nothing", query.text));
    }
    Ok(queries)
}

/// Lowercase, with every run of whitespace one space.
fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// A search result as recall sees it: a file and its lines (1-based,
/// inclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The file's path, as the index holds it.
    pub path: PathBuf,
    /// The first line.
    pub first_line: u32,
    /// The last line.
    pub last_line: u32,
}

/// Judges results against expectations, reading the files under `root`
/// (each once).
#[derive(Debug)]
pub struct Judge {
    root: PathBuf,
    files: HashMap<PathBuf, Vec<String>>,
}

impl Judge {
    /// A judge of results under the repository at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Judge {
        Judge {
            root: root.into(),
            files: HashMap::new(),
        }
    }

    /// Whether `found` is the passage `expected` names.
    pub fn is(&mut self, found: &Found, expected: &Expected) -> bool {
        let wanted = self.root.join(&expected.path);
        let same_file = std::fs::canonicalize(&wanted).unwrap_or(wanted) == found.path;
        if !same_file {
            return false;
        }
        let lines = self.files.entry(found.path.clone()).or_insert_with(|| {
            std::fs::read_to_string(&found.path)
                .map(|text| text.lines().map(str::to_owned).collect())
                .unwrap_or_default()
        });
        let first = (found.first_line as usize).saturating_sub(1);
        let last = (found.last_line as usize).min(lines.len());
        let passage = lines.get(first..last).unwrap_or_default().join("\n");
        normalise(&passage).contains(&normalise(&expected.phrase))
    }

    /// The share of `query`'s expected passages among `results`, 0 to 1.
    pub fn recall(&mut self, query: &Query, results: &[Found]) -> f64 {
        let hits = query
            .expected
            .iter()
            .filter(|expected| results.iter().any(|found| self.is(found, expected)))
            .count();
        hits as f64 / query.expected.len() as f64
    }
}

/// The path of the queries' file in the repository at `root`.
pub fn queries_file(root: &Path) -> PathBuf {
    root.join(QUERIES_FILE)
}

/// A word appended to a passage to see whether the model reads to its end.
const PROBE: &str = " zebra";

/// How many of `index`'s passages the model behind `embedder` cuts short,
/// out of how many: measured, not estimated. A model that reads a text
/// whole gives it another vector once a word is added at its end; one that
/// stops reading before the end gives the very same vector.
pub async fn passages_cut(
    embedder: &EmbedderClient,
    index: &StoredIndex,
) -> Result<(usize, usize), workerbus::Error> {
    let chunks: Vec<_> = index.files.iter().flat_map(|file| &file.chunks).collect();
    let mut cut = 0;
    for batch in chunks.chunks(super::worker::EMBED_BATCH) {
        let texts = batch
            .iter()
            .map(|chunk| format!("{}{PROBE}", chunk.text))
            .collect();
        let response = embedder
            .embed(EmbedRequest {
                texts,
                is_query: false,
            })
            .await?;
        cut += batch
            .iter()
            .zip(&response.vectors)
            .filter(|(chunk, probed)| same_vector(&chunk.vector, &probed.values))
            .count();
    }
    Ok((cut, chunks.len()))
}

/// Whether two vectors are the same but for the last bits of a float.
fn same_vector(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_lines_are_named() {
        let text = "# about\nquery: restart a worker\n  expect: a.md | Restarts  it\nexpect: b.rs|fn x\n\nquery: q2\nexpect: c | d\n";
        let queries = parse(text).unwrap();
        assert_eq!(queries.len(), 2);
        assert_eq!(queries[0].text, "restart a worker");
        assert_eq!(
            queries[0].expected,
            [
                Expected {
                    path: "a.md".into(),
                    phrase: "Restarts  it".into()
                },
                Expected {
                    path: "b.rs".into(),
                    phrase: "fn x".into()
                }
            ]
        );
        assert_eq!(
            parse("expect: a | b").unwrap_err(),
            "line 1: an expectation before any query: \"expect: a | b\""
        );
        assert!(
            parse("query: x\nexpect: no bar")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(parse("query: x\n").unwrap_err().contains("expects nothing"));
        assert!(parse("hello").unwrap_err().contains("neither"));
    }

    #[test]
    fn a_result_is_an_expected_passage_when_its_lines_hold_the_phrase() {
        let root =
            std::env::temp_dir().join(format!("workerbus-recall-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("a.md"),
            "one\nThe supervisor\n  restarts it.\nfour\n",
        )
        .unwrap();
        let path = std::fs::canonicalize(root.join("a.md")).unwrap();
        let found = |first_line, last_line| Found {
            path: path.clone(),
            first_line,
            last_line,
        };
        let expected = Expected {
            path: "a.md".into(),
            phrase: "supervisor RESTARTS".into(),
        };
        let mut judge = Judge::new(&root);
        assert!(judge.is(&found(2, 3), &expected));
        assert!(!judge.is(&found(3, 4), &expected));
        let elsewhere = Expected {
            path: "b.md".into(),
            ..expected.clone()
        };
        assert!(!judge.is(&found(1, 4), &elsewhere));
        let query = Query {
            text: "q".into(),
            expected: vec![expected, elsewhere],
        };
        assert_eq!(judge.recall(&query, &[found(3, 4), found(1, 2)]), 0.0);
        assert_eq!(judge.recall(&query, &[found(3, 4), found(1, 4)]), 0.5);
        std::fs::remove_dir_all(root).unwrap();
    }
}
