//! Search quality, measured: queries about this repository, each with the
//! passages a reader would expect among its first results
//! (`examples/search.queries`), and the recall of a search over them.
//!
//! An expected passage is named by its file and a phrase on its first
//! line, not by line numbers, so that the queries outlive edits: a result is
//! that passage when it comes from that file and its lines overlap the
//! [`WINDOW`] lines that start at the phrase.

use std::path::{Path, PathBuf};

use crate::embedder::{EmbedRequest, EmbedderClient};
use crate::worker::StoredIndex;

/// The queries' file, relative to the repository's root.
pub const QUERIES_FILE: &str = "examples/search.queries";

/// A query and the passages a reader would expect it to find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// What is searched for.
    pub text: String,
    /// The passages it should find.
    pub expected: Vec<Expected>,
}

/// A passage a query should find: a file, relative to the repository's
/// root, and a phrase on the passage's first line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The file, relative to the repository's root.
    pub path: String,
    /// A phrase on the passage's first line (compared without case, and
    /// with runs of whitespace as one space).
    pub phrase: String,
}

/// How many lines, from the phrase's, an expected passage spans.
pub const WINDOW: u32 = 10;

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
    if queries.is_empty() {
        return Err("no queries".to_owned());
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

/// A query with its expected passages found in the files: each a file and
/// a span of lines.
#[derive(Clone, Debug)]
pub struct Located {
    /// What is searched for.
    pub query: String,
    /// Each expected passage's file (as an index names it: canonical) and
    /// lines, 1-based and inclusive.
    pub passages: Vec<(PathBuf, u32, u32)>,
}

/// Finds every query's expected passages in the repository at `root`: an
/// error names the first phrase no line of its file holds (the queries
/// need updating), or a file that cannot be read.
pub fn locate(root: &Path, queries: &[Query]) -> Result<Vec<Located>, String> {
    queries
        .iter()
        .map(|query| {
            let passages = query
                .expected
                .iter()
                .map(|expected| {
                    let file = root.join(&expected.path);
                    let text = std::fs::read_to_string(&file)
                        .map_err(|error| format!("{}: {error}", expected.path))?;
                    let phrase = normalise(&expected.phrase);
                    let lines: Vec<u32> = (1..)
                        .zip(text.lines())
                        .filter(|(_, line)| normalise(line).contains(&phrase))
                        .map(|(number, _)| number)
                        .collect();
                    let line = match lines[..] {
                        [line] => line,
                        [] => {
                            return Err(format!(
                                "{}: no line holds {:?} (expected for {:?})",
                                expected.path, expected.phrase, query.text
                            ));
                        }
                        _ => {
                            return Err(format!(
                                "{}: lines {lines:?} hold {:?} (expected for {:?}): a phrase \
                                 names one line",
                                expected.path, expected.phrase, query.text
                            ));
                        }
                    };
                    let file = std::fs::canonicalize(&file).unwrap_or(file);
                    Ok((file, line, line + WINDOW - 1))
                })
                .collect::<Result<_, String>>()?;
            Ok(Located {
                query: query.text.clone(),
                passages,
            })
        })
        .collect()
}

impl Located {
    /// The share of the expected passages among `results`, 0 to 1. A
    /// result is an expected passage when it starts among its lines, or
    /// holds its first line and goes on past it (a result that merely ends
    /// on it, as a section's last passage ends on the next one's heading,
    /// is not).
    pub fn recall(&self, results: &[Found]) -> f64 {
        let hits = self
            .passages
            .iter()
            .filter(|(path, first, last)| {
                results.iter().any(|found| {
                    found.path == *path
                        && ((*first..=*last).contains(&found.first_line)
                            || (found.first_line < *first && found.last_line > *first))
                })
            })
            .count();
        hits as f64 / self.passages.len() as f64
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
            .map(|chunk| super::index::embedded(&chunk.context, &chunk.text) + PROBE)
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
    fn a_result_is_an_expected_passage_when_its_lines_overlap_the_phrases_window() {
        let root =
            std::env::temp_dir().join(format!("workerbus-recall-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let mut text = String::from("one\n  The   SUPERVISOR restarts it.\n");
        for line in 3..=30 {
            text.push_str(&format!("line {line}\n"));
        }
        std::fs::write(root.join("a.md"), text).unwrap();
        let path = std::fs::canonicalize(root.join("a.md")).unwrap();
        let query = |phrases: &[&str]| Query {
            text: "q".into(),
            expected: phrases
                .iter()
                .map(|phrase| Expected {
                    path: "a.md".into(),
                    phrase: (*phrase).into(),
                })
                .collect(),
        };
        let located = locate(&root, &[query(&["supervisor restarts", "line 20"])]).unwrap();
        assert_eq!(
            located[0].passages,
            [(path.clone(), 2, 11), (path.clone(), 20, 29)]
        );
        let found = |first_line, last_line| Found {
            path: path.clone(),
            first_line,
            last_line,
        };
        let recall = |results: &[Found]| located[0].recall(results);
        assert_eq!(recall(&[found(12, 19)]), 0.0);
        // Ending on the phrase's line is not holding the passage.
        assert_eq!(recall(&[found(1, 2)]), 0.0);
        assert_eq!(recall(&[found(1, 3)]), 0.5);
        assert_eq!(recall(&[found(11, 12), found(29, 30)]), 1.0);
        assert_eq!(recall(&[found(15, 25)]), 0.5);
        let elsewhere = Found {
            path: root.join("b.md"),
            ..found(1, 30)
        };
        assert_eq!(recall(&[elsewhere]), 0.0);

        let missing = locate(&root, &[query(&["no such words"])]).unwrap_err();
        assert!(
            missing.contains("no line holds \"no such words\""),
            "{missing}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn every_expected_passage_of_the_repositorys_queries_is_found() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = std::fs::read_to_string(queries_file(root)).unwrap();
        let queries = parse(&text).unwrap();
        assert!(queries.len() >= 20, "{}", queries.len());
        locate(root, &queries).unwrap();
    }
}
