//! What a compilation writes: prost-build's files, with every comment it
//! copies from the schema cleaned by `docs.rs`, and the include file; all of
//! it generated aside first, so that a failed compilation writes nothing.
//!
//! prost-build writes the comments of messages, fields, oneofs, enums and
//! enum values itself, escaping only some of what rustdoc reads, and has no
//! hook for it. So each comment is replaced in the descriptors by a marker
//! line, which prost-build writes where the comment belongs, and the marker
//! is replaced by the cleaned comment in the files it wrote.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use prost_types::FileDescriptorSet;

use crate::docs;

/// What a marker line starts with; the comment's index follows.
const MARKER: &str = "workerbus-build:doc:";

/// The cleaned comments of a descriptor set whose comments were replaced by
/// markers.
#[derive(Debug, Default)]
pub(crate) struct DocMarkers {
    docs: Vec<Vec<String>>,
}

impl DocMarkers {
    /// Replaces every comment prost-build would copy into code (a
    /// declaration's leading and trailing comments) by a marker, and keeps
    /// the comment, cleaned. Detached comments, which prost-build writes as
    /// plain `//` comments, stay, without what rustc denies in a comment.
    pub(crate) fn insert(fds: &mut FileDescriptorSet) -> DocMarkers {
        let mut markers = DocMarkers::default();
        for file in &mut fds.file {
            let Some(info) = file.source_code_info.as_mut() else {
                continue;
            };
            for location in &mut info.location {
                for detached in &mut location.leading_detached_comments {
                    *detached = docs::plain_comment(detached);
                }
                if location.leading_comments.is_none() && location.trailing_comments.is_none() {
                    continue;
                }
                let lines = docs::rustdoc_comment(
                    location.leading_comments.as_deref(),
                    location.trailing_comments.as_deref(),
                );
                location.trailing_comments = None;
                location.leading_comments = if lines.is_empty() {
                    None
                } else {
                    markers.docs.push(lines);
                    Some(format!(" {MARKER}{}", markers.docs.len() - 1))
                };
            }
        }
        markers
    }

    /// `code` with each marker line replaced by its comment's lines, at the
    /// marker's indentation.
    pub(crate) fn expand(&self, code: &str) -> String {
        let mut out = String::with_capacity(code.len());
        for line in code.split_inclusive('\n') {
            let trimmed = line.trim_start();
            let index = trimmed
                .strip_prefix("///")
                .map(str::trim)
                .and_then(|rest| rest.strip_prefix(MARKER))
                .and_then(|index| index.parse::<usize>().ok())
                .and_then(|index| self.docs.get(index));
            match index {
                Some(lines) => {
                    let indent = &line[..line.len() - trimmed.len()];
                    for doc in lines {
                        out.push_str(indent);
                        out.push_str("///");
                        out.push_str(doc);
                        out.push('\n');
                    }
                }
                None => out.push_str(line),
            }
        }
        out
    }
}

/// A private directory in the output directory where prost-build writes;
/// removed when dropped.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
}

impl Staging {
    pub(crate) fn new(out_dir: &Path) -> io::Result<Staging> {
        let dir = out_dir.join(format!(".workerbus-build-{}", std::process::id()));
        // A directory left by a process of the same id that was killed.
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(Staging { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The files written, by name.
    pub(crate) fn files(&self) -> io::Result<BTreeMap<String, String>> {
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                files.insert(name, fs::read_to_string(entry.path())?);
            }
        }
        Ok(files)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Writes `contents` to `path` unless it already holds them, so that Cargo
/// does not rebuild what includes an unchanged file.
pub(crate) fn write_if_changed(path: &Path, contents: &[u8]) -> io::Result<()> {
    if fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::source_code_info::Location;
    use prost_types::{FileDescriptorProto, SourceCodeInfo};

    #[test]
    fn comments_go_through_markers_to_the_code() {
        let location = |path: Vec<i32>, leading: Option<&str>, trailing: Option<&str>| Location {
            path,
            leading_comments: leading.map(str::to_owned),
            trailing_comments: trailing.map(str::to_owned),
            ..Location::default()
        };
        let mut fds = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                source_code_info: Some(SourceCodeInfo {
                    location: vec![
                        location(
                            vec![4, 0],
                            Some(" See [1].\n     code()\n"),
                            Some(" Trailing.\n"),
                        ),
                        location(vec![4, 0, 2, 0], None, None),
                        location(vec![4, 1], Some("\n"), None),
                    ],
                }),
                ..FileDescriptorProto::default()
            }],
        };
        let markers = DocMarkers::insert(&mut fds);
        let locations = &fds.file[0].source_code_info.as_ref().unwrap().location;
        assert_eq!(
            locations[0].leading_comments.as_deref(),
            Some(" workerbus-build:doc:0")
        );
        assert_eq!(locations[0].trailing_comments, None);
        assert_eq!(locations[2].leading_comments, None);

        let code = "/// workerbus-build:doc:0\npub struct A {\n    /// Kept.\n}\n";
        assert_eq!(
            markers.expand(code),
            "/// See \\[1\\].\n/// ```text\n/// code()\n/// ```\n///\n/// Trailing.\npub struct A {\n    /// Kept.\n}\n"
        );
    }
}
