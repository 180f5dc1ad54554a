//! The search index: text files cut into passages, each passage with its
//! vector; kept in memory, stored in one file, searched by cosine
//! similarity.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use prost::Message;

use crate::worker::{SearchResult, StoredChunk, StoredFile, StoredIndex};

/// The extensions of the files an index takes in a directory walk (a file
/// named explicitly is taken whatever its extension).
pub const TEXT_EXTENSIONS: &[&str] = &["md", "rs", "proto", "toml", "txt"];

/// Files larger than this are left out: they are rarely prose or code a
/// person wants to search.
pub const MAX_FILE_LEN: u64 = 1 << 20;

/// A passage ends at the first blank line after this many lines…
const PASSAGE_MIN_LINES: usize = 8;
/// …and at this many lines in any case.
const PASSAGE_MAX_LINES: usize = 24;
/// Snippets are cut to this many characters.
const SNIPPET_CHARS: usize = 96;

/// A piece of a file that gets one vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passage {
    /// The first line, 1-based.
    pub first_line: u32,
    /// The last line, inclusive.
    pub last_line: u32,
    /// The passage's text.
    pub text: String,
    /// What the model reads before it ([`passages_in`]): the file and the
    /// section the passage is in.
    pub context: String,
}

impl Passage {
    /// The text the model embeds: its context, then the passage.
    pub fn embedded(&self) -> String {
        embedded(&self.context, &self.text)
    }
}

/// The text a model embeds for a passage with `context`.
pub fn embedded(context: &str, text: &str) -> String {
    if context.is_empty() {
        text.to_owned()
    } else {
        format!("{context}\n{text}")
    }
}

/// The most tokens, as [`estimate_tokens`] counts them, that a passage's
/// context takes of the model's.
const CONTEXT_TOKENS: u32 = 24;

/// The passages of a file named `label` (e.g. `docs/PROTOCOL.md`), as
/// [`passages`] cuts them with room for their context: the label and, in
/// Markdown, the heading of the section each starts in. A passage out of
/// its section says little of what it is about; its heading says it.
pub fn passages_in(label: &str, text: &str, max_tokens: u32) -> Vec<Passage> {
    let room = match max_tokens {
        0 => 0,
        limit => limit
            .saturating_sub(CONTEXT_TOKENS)
            .max(SPECIAL_TOKENS as u32 + 1),
    };
    let mut passages = passages(text, room);
    // The heading in force at each line (a heading's own line included).
    let mut headings = vec![""];
    if label.ends_with(".md") {
        for line in text.lines() {
            let last = headings[headings.len() - 1];
            headings.push(markdown_heading(line).unwrap_or(last));
        }
    }
    for passage in &mut passages {
        let heading = headings.get(passage.first_line as usize).copied();
        let context = match heading.unwrap_or_default() {
            "" => label.to_owned(),
            heading => format!("{label}: {heading}"),
        };
        passage.context = cut_line(&context, CONTEXT_TOKENS as usize)
            .first()
            .map_or_else(String::new, |piece| piece.trim_end().to_owned());
    }
    passages
}

/// The words of a Markdown heading (`## Title`), if `line` is one.
fn markdown_heading(line: &str) -> Option<&str> {
    let words = line.trim_start_matches('#');
    let level = line.len() - words.len();
    ((1..=6).contains(&level) && words.starts_with(' ')).then(|| words.trim())
}

/// The line of `text` that shares the most words with `query` (words
/// compared by their first five letters, so that "crashed" finds "crash"),
/// or its first line with text; trimmed and cut short.
pub fn snippet(text: &str, query: &str) -> String {
    fn stems(text: &str) -> impl Iterator<Item = String> + '_ {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|word| word.chars().count() >= 3)
            .map(|word| word.to_lowercase().chars().take(5).collect())
    }
    let wanted: Vec<String> = stems(query).collect();
    let lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let mut best = ("", 0);
    for line in lines {
        let matches = stems(line).filter(|stem| wanted.contains(stem)).count();
        if best.0.is_empty() || matches > best.1 {
            best = (line, matches);
        }
    }
    match best.0.char_indices().nth(SNIPPET_CHARS) {
        Some((end, _)) => format!("{}…", &best.0[..end]),
        None => best.0.to_owned(),
    }
}

/// Cuts a text into passages of whole lines, preferring to cut at blank
/// lines (paragraphs, items of code). Passages with no text are dropped.
///
/// For a model that reads at most `max_tokens` tokens of a text (0: no
/// limit), a passage also ends before the line that would take it past
/// that many, as [`estimate_tokens`] counts them, less the model's two
/// special tokens; a line too long on its own is cut between words into
/// passages of that one line.
pub fn passages(text: &str, max_tokens: u32) -> Vec<Passage> {
    let budget = match max_tokens {
        0 => usize::MAX,
        limit => (limit as usize).saturating_sub(SPECIAL_TOKENS).max(1),
    };
    let mut passages = Vec::new();
    let mut lines: Vec<&str> = Vec::new();
    let mut tokens = 0;
    let mut first = 1;
    let mut flush = |lines: &mut Vec<&str>, first: &mut usize, next: usize| {
        if lines.iter().any(|line| !line.trim().is_empty()) {
            passages.push(Passage {
                first_line: *first as u32,
                last_line: (next - 1) as u32,
                text: lines.join("\n"),
                context: String::new(),
            });
        }
        lines.clear();
        *first = next;
    };
    for (number, line) in text.lines().enumerate().map(|(i, line)| (i + 1, line)) {
        let line_tokens = estimate_tokens(line);
        if line_tokens > budget {
            flush(&mut lines, &mut first, number);
            for piece in cut_line(line, budget) {
                lines.push(piece);
                flush(&mut lines, &mut first, number + 1);
                first = number;
            }
            (first, tokens) = (number + 1, 0);
            continue;
        }
        if tokens + line_tokens > budget {
            flush(&mut lines, &mut first, number);
            tokens = 0;
        }
        lines.push(line);
        tokens += line_tokens;
        let at_paragraph = line.trim().is_empty() && lines.len() >= PASSAGE_MIN_LINES;
        if at_paragraph || lines.len() >= PASSAGE_MAX_LINES {
            flush(&mut lines, &mut first, number + 1);
            tokens = 0;
        }
    }
    let end = first + lines.len();
    flush(&mut lines, &mut first, end);
    passages
}

/// The tokens a model adds to every text it reads (BERT's `[CLS]` and
/// `[SEP]`).
const SPECIAL_TOKENS: usize = 2;

/// Characters of a word that [`estimate_tokens`] counts as one token.
const CHARS_PER_TOKEN: usize = 4;

/// How many tokens a BERT-style WordPiece tokenizer (the real model's)
/// makes of `text`, by a rule of thumb that errs long for prose: every
/// punctuation mark and every letter outside ASCII is one, and a run of
/// ASCII letters and digits is one for each four of its characters,
/// rounded up. (The tokenizer makes one token of a common word, and
/// several of an identifier, a number or a digest: there the rule can fall
/// short.) `search --recall` measures, with the model itself, how many
/// passages it cut short.
pub fn estimate_tokens(text: &str) -> usize {
    let mut tokens = 0;
    let mut word: usize = 0;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            word += 1;
            continue;
        }
        tokens += word.div_ceil(CHARS_PER_TOKEN);
        word = 0;
        if !c.is_whitespace() {
            tokens += 1;
        }
    }
    tokens + word.div_ceil(CHARS_PER_TOKEN)
}

/// `line` cut into pieces of at most `budget` estimated tokens: between
/// words where it can be, inside a word (between characters) longer than
/// that.
fn cut_line(line: &str, budget: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    // Just after the last whitespace of the piece so far.
    let mut space = None;
    for (at, c) in line.char_indices() {
        let end = at + c.len_utf8();
        while estimate_tokens(&line[start..end]) > budget {
            let cut = match space {
                Some(space) if space > start => space,
                _ => at,
            };
            if cut == start {
                break; // one character over a budget of nothing: kept
            }
            pieces.push(&line[start..cut]);
            (start, space) = (cut, None);
        }
        if c.is_whitespace() {
            space = Some(end);
        }
    }
    if start < line.len() {
        pieces.push(&line[start..]);
    }
    pieces
}

/// What tells a file's versions apart without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The length in bytes.
    pub len: u64,
    /// The modification time, in nanoseconds since the Unix epoch.
    pub modified_ns: u64,
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub fn of(metadata: &std::fs::Metadata) -> Stamp {
        let modified_ns = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| since.as_nanos() as u64);
        Stamp {
            len: metadata.len(),
            modified_ns,
        }
    }
}

/// The files to index under `paths`: files as given, directories walked
/// recursively for files with a [`TEXT_EXTENSIONS`] extension, skipping
/// hidden entries and `target` directories. Sorted, without duplicates.
/// Paths that cannot be read are returned apart, with the reason.
pub fn collect_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(metadata) if metadata.is_dir() => walk(path, &mut files, &mut unreadable),
            Ok(_) => files.push(path.clone()),
            Err(error) => unreadable.push((path.clone(), error.to_string())),
        }
    }
    let files = files
        .into_iter()
        .map(|file| std::fs::canonicalize(&file).unwrap_or(file))
        .collect::<std::collections::BTreeSet<_>>();
    (files.into_iter().collect(), unreadable)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, unreadable: &mut Vec<(PathBuf, String)>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => return unreadable.push((dir.to_owned(), error.to_string())),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => walk(&path, files, unreadable),
            Ok(kind) if kind.is_file() => {
                let wanted = path
                    .extension()
                    .and_then(|extension| extension.to_str())
                    .is_some_and(|extension| TEXT_EXTENSIONS.contains(&extension));
                if wanted {
                    files.push(path);
                }
            }
            _ => {}
        }
    }
}

/// The index: every file's passages and their vectors, made with one model.
#[derive(Debug, Default)]
pub struct Index {
    model: String,
    files: BTreeMap<String, StoredFile>,
}

impl Index {
    /// An empty index for vectors made by `model`.
    pub fn new(model: impl Into<String>) -> Index {
        Index {
            model: model.into(),
            files: BTreeMap::new(),
        }
    }

    /// The index stored at `path`, if it was made with `model`. Otherwise
    /// an empty one, beside the model of the index found if there was one:
    /// vectors of two models are never mixed, the files are indexed again.
    pub fn open(path: &Path, model: &str) -> io::Result<(Index, Option<String>)> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok((Index::new(model), None));
            }
            Err(error) => return Err(error),
        };
        let stored = StoredIndex::decode(bytes.as_slice()).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not an index: {error}", path.display()),
            )
        })?;
        if stored.model != model {
            return Ok((Index::new(model), Some(stored.model)));
        }
        let files = stored
            .files
            .into_iter()
            .map(|file| (file.path.clone(), file))
            .collect();
        let index = Index {
            model: stored.model,
            files,
        };
        Ok((index, None))
    }

    /// The model its vectors are made with.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Stores the index at `path`, whole: it is written beside it under a
    /// name of its own, then renamed over it, so a crash leaves the
    /// previous index intact ([`write_whole`](super::data::write_whole)).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let stored = StoredIndex {
            model: self.model.clone(),
            files: self.files.values().cloned().collect(),
        };
        super::data::write_whole(path, &stored.encode_to_vec())
    }

    /// Whether the index holds `path` as it is now.
    pub fn is_current(&self, path: &str, stamp: Stamp) -> bool {
        self.files
            .get(path)
            .is_some_and(|file| file.len == stamp.len && file.modified_ns == stamp.modified_ns)
    }

    /// Puts a file's passages and their vectors in the index, replacing what
    /// it held for the file.
    pub fn insert(
        &mut self,
        path: String,
        stamp: Stamp,
        passages: &[Passage],
        vectors: Vec<Vec<f32>>,
    ) {
        let chunks = passages
            .iter()
            .zip(vectors)
            .map(|(passage, vector)| StoredChunk {
                first_line: passage.first_line,
                last_line: passage.last_line,
                text: passage.text.clone(),
                vector,
                context: passage.context.clone(),
            })
            .collect();
        let file = StoredFile {
            path: path.clone(),
            len: stamp.len,
            modified_ns: stamp.modified_ns,
            chunks,
        };
        self.files.insert(path, file);
    }

    /// Forgets the files for which `keep` is false; returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        let before = self.files.len();
        self.files.retain(|path, _| keep(path));
        before - self.files.len()
    }

    /// The passages the index holds for `path`.
    pub fn chunks_of(&self, path: &str) -> usize {
        self.files.get(path).map_or(0, |file| file.chunks.len())
    }

    /// The files in the index.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// The passages in the index.
    pub fn chunks(&self) -> usize {
        self.files.values().map(|file| file.chunks.len()).sum()
    }

    /// The `limit` passages whose vectors are closest to `vector`, the
    /// vector of `query`, best first. Vectors are normalised, so the dot
    /// product is the cosine.
    pub fn search(&self, query: &str, vector: &[f32], limit: usize) -> Vec<SearchResult> {
        let mut scored: Vec<(f32, &StoredFile, &StoredChunk)> = self
            .files
            .values()
            .flat_map(|file| file.chunks.iter().map(move |chunk| (file, chunk)))
            .map(|(file, chunk)| {
                let score = chunk.vector.iter().zip(vector).map(|(a, b)| a * b).sum();
                (score, file, chunk)
            })
            .collect();
        let limit = limit.min(scored.len());
        if limit == 0 {
            return Vec::new();
        }
        // Only the best `limit` need sorting.
        let best_first = |a: &(f32, _, _), b: &(f32, _, _)| b.0.total_cmp(&a.0);
        scored.select_nth_unstable_by(limit - 1, best_first);
        scored.truncate(limit);
        scored.sort_by(best_first);
        scored
            .into_iter()
            .map(|(score, file, chunk)| SearchResult {
                path: file.path.clone(),
                first_line: chunk.first_line,
                last_line: chunk.last_line,
                score,
                snippet: snippet(&chunk.text, query),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_cut_at_blank_lines_and_keep_line_numbers() {
        let mut text = String::new();
        for i in 1..=10 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push('\n');
        for i in 12..=14 {
            text.push_str(&format!("line {i}\n"));
        }
        let passages = passages(&text, 0);
        let spans: Vec<(u32, u32)> = passages
            .iter()
            .map(|passage| (passage.first_line, passage.last_line))
            .collect();
        assert_eq!(spans, [(1, 11), (12, 14)]);
        assert_eq!(passages[1].text, "line 12\nline 13\nline 14");
    }

    #[test]
    fn long_runs_without_blank_lines_are_cut_too() {
        let text = "x\n".repeat(PASSAGE_MAX_LINES * 2 + 3);
        let spans: Vec<(u32, u32)> = passages(&text, 0)
            .iter()
            .map(|passage| (passage.first_line, passage.last_line))
            .collect();
        let max = PASSAGE_MAX_LINES as u32;
        assert_eq!(
            spans,
            [(1, max), (max + 1, 2 * max), (2 * max + 1, 2 * max + 3)]
        );
        assert!(passages("\n\n  \n", 0).is_empty());
    }

    #[test]
    fn tokens_are_estimated_from_above_for_words_punctuation_and_identifiers() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("the cat sat"), 3);
        // Four letters a token: "supervisor" is three, "restarts" two.
        assert_eq!(estimate_tokens("supervisor restarts"), 5);
        // Punctuation is a token of its own; so is a letter outside ASCII.
        assert_eq!(estimate_tokens("recycle_above_memory(300 << 20);"), 15);
        assert_eq!(estimate_tokens("naïve"), 3);
    }

    #[test]
    fn passages_fit_a_models_tokens_and_long_lines_are_cut_between_words() {
        let line = |i: usize| format!("word{i:02} and another word here");
        let text: Vec<String> = (1..=20).map(line).collect();
        let text = text.join("\n");
        // Each line is seven tokens as estimated; 32 less the two special
        // tokens is 30: four lines a passage.
        assert_eq!(estimate_tokens(&line(1)), 7);
        let spans: Vec<(u32, u32)> = passages(&text, 32)
            .iter()
            .map(|passage| (passage.first_line, passage.last_line))
            .collect();
        assert_eq!(spans, [(1, 4), (5, 8), (9, 12), (13, 16), (17, 20)]);
        for passage in passages(&text, 32) {
            assert!(estimate_tokens(&passage.text) <= 30, "{passage:?}");
        }
        // Without a limit, the lines make one passage.
        assert_eq!(passages(&text, 0).len(), 1);

        // A line longer than the budget alone: cut between words, each
        // piece a passage of that line.
        let long = format!("before\n{}\nafter", "alpha ".repeat(50).trim_end());
        let cut = passages(&long, 12);
        let spans: Vec<(u32, u32)> = cut
            .iter()
            .map(|passage| (passage.first_line, passage.last_line))
            .collect();
        assert_eq!(spans[0], (1, 1));
        assert_eq!(spans[spans.len() - 1], (3, 3));
        assert!(spans[1..spans.len() - 1].iter().all(|span| *span == (2, 2)));
        assert_eq!(spans.len(), 2 + 10);
        let words: usize = cut[1..cut.len() - 1]
            .iter()
            .map(|passage| passage.text.split_whitespace().count())
            .sum();
        assert_eq!(words, 50);
        assert!(
            cut.iter()
                .all(|passage| estimate_tokens(&passage.text) <= 10)
        );
    }

    #[test]
    fn a_word_longer_than_the_budget_is_cut_between_characters() {
        let blob = "a".repeat(70_000);
        let text = format!("intro\n{blob}\n终わり{}\n", "語".repeat(600));
        let passages = passages(&text, 128);
        for passage in &passages {
            assert!(
                estimate_tokens(&passage.text) <= 126,
                "{}",
                passage.text.len()
            );
        }
        let blob_pieces: String = passages
            .iter()
            .filter(|passage| passage.first_line == 2)
            .map(|passage| passage.text.as_str())
            .collect();
        assert_eq!(blob_pieces, blob, "every character kept, in order");
        assert!(passages.iter().any(|passage| passage.first_line == 3));
        // A label without spaces is cut too.
        let label = "dir-name-of-things/another_long_file_name_here_and_more.md";
        let context = &passages_in(label, "text\n", 0)[0].context;
        assert!(
            estimate_tokens(context) <= CONTEXT_TOKENS as usize,
            "{context}"
        );
    }

    #[test]
    fn a_passage_reads_with_its_file_and_its_section() {
        let text = "# Title\n\nintro\n## Restarts\nA worker that crashes\nis started again.\n";
        let mut text = text.to_owned();
        text.push_str(&"filler line\n".repeat(30));
        let passages = passages_in("docs/SUPERVISION.md", &text, 40);
        let contexts: Vec<&str> = passages.iter().map(|p| p.context.as_str()).collect();
        assert_eq!(contexts[0], "docs/SUPERVISION.md: Title");
        assert!(
            contexts[1..]
                .iter()
                .all(|context| *context == "docs/SUPERVISION.md: Restarts"),
            "{contexts:?}"
        );
        // The context and the passage fit the model together.
        for passage in &passages {
            let tokens = estimate_tokens(&passage.embedded()) + SPECIAL_TOKENS;
            assert!(tokens <= 40, "{tokens}: {passage:?}");
            assert!(passage.embedded().ends_with(&passage.text));
        }
        // Only Markdown has headings; a long one is cut to its room.
        let code = passages_in("src/lib.rs", "# not a heading\nfn main() {}\n", 0);
        assert_eq!(code[0].context, "src/lib.rs");
        let long = format!("# {}\ntext\n", "word ".repeat(40));
        let cut = &passages_in("a.md", &long, 0)[0].context;
        assert!(cut.starts_with("a.md: word word"), "{cut}");
        assert!(estimate_tokens(cut) <= CONTEXT_TOKENS as usize, "{cut}");
        assert!(!cut.ends_with(' '));
    }

    #[test]
    fn snippets_are_the_lines_that_match_the_query() {
        let text = "\n  A supervisor watches workers.\nWhen one crashes, it is restarted.\n";
        assert_eq!(
            snippet(text, "restart crashed workers"),
            "When one crashes, it is restarted."
        );
        assert_eq!(snippet(text, "unrelated"), "A supervisor watches workers.");
        let long = "word ".repeat(40);
        assert_eq!(snippet(&long, "").chars().count(), SNIPPET_CHARS + 1);
    }

    #[test]
    fn search_ranks_by_similarity_and_the_index_round_trips() {
        let mut index = Index::new("model-a");
        let stamp = Stamp {
            len: 3,
            modified_ns: 7,
        };
        let passage = |line: u32, text: &str| Passage {
            first_line: line,
            last_line: line,
            text: text.to_owned(),
            context: String::new(),
        };
        index.insert(
            "a".into(),
            stamp,
            &[passage(1, "north"), passage(2, "east")],
            vec![vec![1.0, 0.0], vec![0.0, 1.0]],
        );
        index.insert(
            "b".into(),
            stamp,
            &[passage(1, "north-east")],
            vec![vec![0.6, 0.8]],
        );
        let results = index.search("east", &[0.0, 1.0], 2);
        let found: Vec<(&str, u32)> = results
            .iter()
            .map(|result| (result.path.as_str(), result.first_line))
            .collect();
        assert_eq!(found, [("a", 2), ("b", 1)]);
        assert_eq!(results[1].snippet, "north-east");

        let dir = std::env::temp_dir().join(format!("workerbus-index-test-{}", std::process::id()));
        let path = dir.join("index.pb");
        index.save(&path).unwrap();
        let (reopened, rebuilt_from) = Index::open(&path, "model-a").unwrap();
        assert_eq!((reopened.model(), rebuilt_from), ("model-a", None));
        assert_eq!((reopened.files(), reopened.chunks()), (2, 3));
        assert!(reopened.is_current("a", stamp));
        assert!(!reopened.is_current("a", Stamp { len: 4, ..stamp }));
        let (mut other_model, rebuilt_from) = Index::open(&path, "model-b").unwrap();
        assert_eq!(other_model.files(), 0);
        assert_eq!(other_model.model(), "model-b");
        assert_eq!(rebuilt_from.as_deref(), Some("model-a"));
        other_model = reopened;
        assert_eq!(other_model.retain(|path| path == "b"), 1);
        assert_eq!((other_model.files(), other_model.chunks()), (1, 1));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_index_is_saved_whatever_another_writer_has_at_a_temporary_name() {
        let dir = std::env::temp_dir().join(format!(
            "workerbus-index-partial-test-{}",
            std::process::id()
        ));
        let path = dir.join("index.pb");
        // Another run's temporary file, were there one name for all: here
        // a directory, which no write replaces.
        std::fs::create_dir_all(path.with_extension("partial")).unwrap();
        Index::new("model-a").save(&path).unwrap();
        assert_eq!(Index::open(&path, "model-a").unwrap().0.files(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
