//! Proto comments to rustdoc lines that render as written and never become
//! doctests, links or HTML.
//!
//! Every comment that reaches generated code passes here: those of services
//! and rpcs (emitted by `emit/`), and those of messages, fields, oneofs,
//! enums and enum values (written by prost-build, see `output.rs`).

/// The rustdoc lines (each empty or starting with a space) of a
/// declaration's leading and trailing comments: each loses its own
/// decoration, then they are one text, a blank line between.
///
/// - The comment's own decoration goes: the common indentation, the `*` of a
///   `/** ... */` opener, the third slash of `///` comments, control
///   characters (a bare carriage return does not compile in a doc comment)
///   and text-direction overrides (denied by rustc in comments).
/// - Code blocks become blocks rustdoc never compiles: indented blocks and
///   fences without a language, or with `rust` or a rustdoc attribute
///   (`no_run`, `should_panic`...) as their language, become `text` blocks;
///   a fence naming another language (`json`, `python`) keeps it.
/// - In prose, `[` and `]` are escaped (so `[1]` is text, not an intra-doc
///   link) except in a markdown link to a URL; `<` that would open an HTML
///   tag is escaped (so `<b>` and `Vec<T>` are text); bare URLs are wrapped
///   in `<...>`, as rustdoc asks; a leading `>` is escaped (a quote could
///   hold a code block); code spans are left as written.
pub(crate) fn rustdoc_comment(leading: Option<&str>, trailing: Option<&str>) -> Vec<String> {
    let part = |comment: Option<&str>| {
        let lines: Vec<String> = comment
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        normalize(&lines)
    };
    let mut lines = part(leading);
    let trailing = part(trailing);
    if lines.iter().any(|line| !line.is_empty()) && trailing.iter().any(|line| !line.is_empty()) {
        lines.push(String::new());
    }
    lines.extend(trailing);
    blocks(&lines)
}

/// Normalized lines as rustdoc lines: code blocks made text, prose escaped.
fn blocks(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        if let Some(fence) = Fence::open(line) {
            // A fenced block runs to its closing fence, or to the end.
            let indent = leading_spaces(line);
            let mut end = i + 1;
            while end < lines.len() && !fence.closes(&lines[end]) {
                end += 1;
            }
            out.push(format!(" {}{}", fence.marker, fence.label()));
            for content in &lines[i + 1..end] {
                out.push(doc_line(strip_spaces(content, indent)));
            }
            out.push(format!(" {}", fence.marker));
            i = end + 1;
        } else if is_indented(line) {
            // An indented block runs over blank lines to its last indented line.
            let mut end = i + 1;
            let mut last = i;
            while end < lines.len() && (lines[end].trim().is_empty() || is_indented(&lines[end])) {
                if !lines[end].trim().is_empty() {
                    last = end;
                }
                end += 1;
            }
            let block: Vec<&str> = lines[i..=last].iter().map(|l| dedent(l)).collect();
            let marker = text_fence(&block);
            out.push(format!(" {marker}text"));
            out.extend(block.iter().map(|l| doc_line(l)));
            out.push(format!(" {marker}"));
            i = last + 1;
        } else if line.trim().is_empty() {
            out.push(String::new());
            i += 1;
        } else {
            out.push(format!(" {}", escape_prose(line)));
            i += 1;
        }
    }
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    let leading_blanks = out.iter().take_while(|line| line.is_empty()).count();
    out.drain(..leading_blanks);
    out
}

/// The rustdoc lines of a declaration's comments in `source_info`, found by
/// the declaration's path (see `SourceCodeInfo.Location.path`): its leading
/// comment, then its trailing one.
pub(crate) fn location_docs(
    source_info: Option<&prost_types::SourceCodeInfo>,
    path: &[i32],
) -> Vec<String> {
    source_info
        .and_then(|info| info.location.iter().find(|location| location.path == path))
        .map(|location| {
            rustdoc_comment(
                location.leading_comments.as_deref(),
                location.trailing_comments.as_deref(),
            )
        })
        .unwrap_or_default()
}

/// A code line as a doc line: verbatim, after the space that `///` takes.
fn doc_line(line: &str) -> String {
    if line.is_empty() {
        String::new()
    } else {
        format!(" {line}")
    }
}

/// The comment's lines without its decoration, tabs expanded, without the
/// indentation common to all of them (as rustdoc reads `///` comments).
fn normalize(lines: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = lines
        .iter()
        .map(|line| {
            let line: String = line
                .chars()
                .filter(|&c| c == '\t' || !(c.is_control() || is_bidi_control(c)))
                .collect();
            expand_tabs(line.trim_end())
        })
        .collect();
    // `/** ... */` leaves a first line of stars (or, on one line, a star
    // before the text), `/// ...` a slash on each line.
    if lines.first().is_some_and(|first| {
        let first = first.trim();
        !first.is_empty() && first.chars().all(|c| c == '*')
    }) {
        lines.remove(0);
    } else if lines.len() == 1 && lines[0].trim_start().starts_with("* ") {
        let star = lines[0].find('*').unwrap_or(0);
        lines[0].replace_range(..=star, "");
    }
    if lines.iter().any(|line| !line.trim().is_empty())
        && lines
            .iter()
            .filter(|line| !line.trim().is_empty())
            .all(|line| line.starts_with('/'))
    {
        for line in &mut lines {
            if line.starts_with('/') {
                line.remove(0);
            }
        }
    }
    let common = lines
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| leading_spaces(line))
        .min()
        .unwrap_or(0);
    lines
        .into_iter()
        .map(|line| {
            if line.trim().is_empty() {
                String::new()
            } else {
                line[common..].to_owned()
            }
        })
        .collect()
}

/// A comment prost-build writes as a plain `//` comment (a detached one),
/// without the characters rustc denies in any comment: those that reorder
/// text.
pub(crate) fn plain_comment(comment: &str) -> String {
    comment.chars().filter(|&c| !is_bidi_control(c)).collect()
}

/// Characters that reorder text: rustc denies them in comments
/// (`text_direction_codepoint_in_comment`).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Leading tabs as spaces, to the next multiple of four (as markdown counts
/// them).
fn expand_tabs(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut column = 0;
    let mut chars = line.chars();
    for c in chars.by_ref() {
        match c {
            ' ' => {
                out.push(' ');
                column += 1;
            }
            '\t' => {
                let width = 4 - column % 4;
                out.extend(std::iter::repeat_n(' ', width));
                column += width;
            }
            other => {
                out.push(other);
                break;
            }
        }
    }
    out.extend(chars);
    out
}

fn leading_spaces(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Removes up to `count` leading spaces.
fn strip_spaces(line: &str, count: usize) -> &str {
    let spaces = leading_spaces(line).min(count);
    &line[spaces..]
}

/// Whether the line would open (or continue) an indented code block.
fn is_indented(line: &str) -> bool {
    leading_spaces(line) >= 4 && !line.trim().is_empty()
}

/// Removes the four columns that made a line part of an indented block.
fn dedent(line: &str) -> &str {
    strip_spaces(line, 4)
}

/// A fence for a text block that none of its lines can close: three
/// backticks, or one more than the longest run that starts a line.
fn text_fence(block: &[&str]) -> String {
    let longest = block
        .iter()
        .map(|line| line.trim_start().chars().take_while(|&c| c == '`').count())
        .max()
        .unwrap_or(0);
    "`".repeat((longest + 1).max(3))
}

/// The opening of a fenced code block.
struct Fence {
    /// The fence as written: three or more backticks or tildes.
    marker: String,
    /// The info string: a language, attributes, or nothing.
    info: String,
}

impl Fence {
    /// The fence a line opens, if it opens one: at most three spaces of
    /// indentation, then three or more backticks or tildes (a backtick
    /// fence's info string has no backtick).
    fn open(line: &str) -> Option<Fence> {
        if leading_spaces(line) > 3 {
            return None;
        }
        let trimmed = line.trim_start();
        let c = trimmed.chars().next().filter(|&c| c == '`' || c == '~')?;
        let count = trimmed.chars().take_while(|&x| x == c).count();
        if count < 3 {
            return None;
        }
        let info = trimmed[count..].trim();
        if c == '`' && info.contains('`') {
            return None;
        }
        Some(Fence {
            marker: trimmed[..count].to_owned(),
            info: info.to_owned(),
        })
    }

    /// Whether `line` closes this fence: the same character, at least as
    /// many, nothing after.
    fn closes(&self, line: &str) -> bool {
        if leading_spaces(line) > 3 {
            return false;
        }
        let c = self.marker.chars().next().unwrap_or('`');
        let trimmed = line.trim();
        trimmed.len() >= self.marker.len() && trimmed.chars().all(|x| x == c)
    }

    /// The info string to write: the language if it is one rustdoc would
    /// not compile, else `text`.
    fn label(&self) -> &str {
        let language = self.info.as_str();
        if is_plain_language(language) {
            language
        } else {
            "text"
        }
    }
}

/// Whether rustdoc reads a fence labelled `info` as another language's
/// code: one word, neither `rust` nor anything resembling a rustdoc
/// attribute (which would make the block a doctest, or draw a warning about
/// an unknown attribute).
fn is_plain_language(info: &str) -> bool {
    const RUSTDOC_WORDS: &[&str] = &[
        "rust",
        "run",
        "panic",
        "fail",
        "ignore",
        "harness",
        "edition",
        "standalone",
        "test",
        "custom",
        "compile",
    ];
    let lower = info.to_ascii_lowercase();
    info.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && info
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+#.-".contains(c))
        && !RUSTDOC_WORDS.iter().any(|word| lower.contains(word))
        && !(lower.starts_with('e') && lower[1..].chars().all(|c| c.is_ascii_digit()))
}

/// Escapes one line of prose for rustdoc.
fn escape_prose(line: &str) -> String {
    let indent = leading_spaces(line);
    let (indent, rest) = line.split_at(indent);
    let mut out = String::from(indent);
    // A list item's marker, kept as written; markdown reads five or more
    // spaces after it as an indented code block, so they become one.
    let (marker, rest) = split_list_marker(rest);
    if !marker.is_empty() {
        out.push_str(marker);
        out.push(' ');
    }
    let rest = if marker.is_empty() {
        rest
    } else {
        rest.trim_start()
    };
    // A quote (which could hold a code block) or a fence that markdown would
    // open inside a list item is written as text.
    if rest.starts_with('>') || (!marker.is_empty() && Fence::open(rest).is_some()) {
        out.push('\\');
    }
    out.push_str(&escape_inline(rest, true));
    out
}

/// Splits `- `, `* `, `+ `, `1. ` or `1) ` off the start of a line.
fn split_list_marker(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let marker_len = match bytes.first() {
        Some(b'-' | b'*' | b'+') => 1,
        Some(b'0'..=b'9') => {
            let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            match bytes.get(digits) {
                Some(b'.' | b')') if digits <= 9 => digits + 1,
                _ => return ("", line),
            }
        }
        _ => return ("", line),
    };
    match bytes.get(marker_len) {
        Some(b' ') => (&line[..marker_len], &line[marker_len..]),
        _ => ("", line),
    }
}

/// Escapes inline markdown: brackets, tags and bare URLs; code spans,
/// autolinks and links to URLs stay as written. `wrap_urls` is off inside a
/// link's text, where an autolink would break the link.
fn escape_inline(text: &str, wrap_urls: bool) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        match chars[i] {
            '`' => {
                // A code span runs to the next run of as many backticks.
                let run = rest.iter().take_while(|&&c| c == '`').count();
                match find_backtick_run(&chars, i + run, run) {
                    Some(close) => {
                        out.extend(&chars[i..close + run]);
                        i = close + run;
                    }
                    None => {
                        out.extend(&chars[i..i + run]);
                        i += run;
                    }
                }
            }
            '\\' if i + 1 < chars.len() && chars[i + 1].is_ascii_punctuation() => {
                out.push('\\');
                out.push(chars[i + 1]);
                i += 2;
            }
            '<' if starts_with(rest, "<http://") || starts_with(rest, "<https://") => {
                match rest.iter().position(|&c| c == '>' || c.is_whitespace()) {
                    Some(end) if rest[end] == '>' => {
                        out.extend(&rest[..=end]);
                        i += end + 1;
                    }
                    _ => {
                        out.push_str("\\<");
                        i += 1;
                    }
                }
            }
            '<' if rest
                .get(1)
                .is_some_and(|&c| c.is_ascii_alphabetic() || "/!?".contains(c)) =>
            {
                out.push_str("\\<");
                i += 1;
            }
            '[' => match markdown_link(rest) {
                Some((text_len, link_len)) => {
                    let text: String = rest[1..1 + text_len].iter().collect();
                    out.push('[');
                    out.push_str(&escape_inline(&text, false));
                    out.extend(&rest[1 + text_len..link_len]);
                    i += link_len;
                }
                None => {
                    out.push_str("\\[");
                    i += 1;
                }
            },
            ']' => {
                out.push_str("\\]");
                i += 1;
            }
            'h' if wrap_urls
                && (starts_with(rest, "http://") || starts_with(rest, "https://"))
                && (i == 0 || !chars[i - 1].is_alphanumeric()) =>
            {
                let end = rest
                    .iter()
                    .position(|&c| c.is_whitespace() || "<>()[]\"'`".contains(c))
                    .unwrap_or(rest.len());
                let mut url: String = rest[..end].iter().collect();
                while url.ends_with(['.', ',', ';', ':', '!', '?']) {
                    url.pop();
                }
                out.push('<');
                out.push_str(&url);
                out.push('>');
                i += url.chars().count();
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn starts_with(chars: &[char], prefix: &str) -> bool {
    let len = prefix.chars().count();
    chars.len() >= len && chars[..len].iter().copied().eq(prefix.chars())
}

/// Where a run of exactly `run` backticks starts, at or after `from`.
fn find_backtick_run(chars: &[char], from: usize, run: usize) -> Option<usize> {
    let mut i = from;
    while i < chars.len() {
        if chars[i] == '`' {
            let len = chars[i..].iter().take_while(|&&c| c == '`').count();
            if len == run {
                return Some(i);
            }
            i += len;
        } else {
            i += 1;
        }
    }
    None
}

/// A markdown link to a URL, `[text](scheme://...)` or `[text](#anchor)`,
/// at the start of `chars`: the length of its text and of the whole link.
/// A link to anything else would be read as an intra-doc link.
fn markdown_link(chars: &[char]) -> Option<(usize, usize)> {
    let close = chars.iter().position(|&c| c == ']')?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let end = close + 2 + chars[close + 2..].iter().position(|&c| c == ')')?;
    let target: String = chars[close + 2..end].iter().collect();
    let is_url = target.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
            && !rest.is_empty()
            && !rest.contains(char::is_whitespace)
    }) || (target.starts_with("mailto:") && !target.contains(char::is_whitespace))
        || (target.starts_with('#') && target.len() > 1 && !target.contains(char::is_whitespace));
    is_url.then_some((close - 1, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        blocks(&normalize(
            &text.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn links_and_urls_are_escaped() {
        assert_eq!(
            lines(&[" See [the spec] at https://example.com/spec."]),
            [" See \\[the spec\\] at <https://example.com/spec>."]
        );
        assert_eq!(
            lines(&[" Footnotes[1] and [ref][2], (https://example.com/a)"]),
            [" Footnotes\\[1\\] and \\[ref\\]\\[2\\], (<https://example.com/a>)"]
        );
        assert_eq!(
            lines(&[" [1]: https://example.com/one"]),
            [" \\[1\\]: <https://example.com/one>"]
        );
    }

    #[test]
    fn markdown_that_already_renders_is_left_alone() {
        assert_eq!(
            lines(&[" Use `v[0]`, <https://example.com/a> or [the docs](https://example.com/d)."]),
            [" Use `v[0]`, <https://example.com/a> or [the docs](https://example.com/d)."]
        );
        assert_eq!(
            lines(&[" Already \\[escaped\\]."]),
            [" Already \\[escaped\\]."]
        );
        assert_eq!(
            lines(&[" Double ``a[0]`` span, [top](#top), [mail](mailto:a@example.com)."]),
            [" Double ``a[0]`` span, [top](#top), [mail](mailto:a@example.com)."]
        );
    }

    #[test]
    fn links_that_rustdoc_would_resolve_are_text() {
        assert_eq!(
            lines(&[" See [Money](Money) and [the guide](guide.md)."]),
            [" See \\[Money\\](Money) and \\[the guide\\](guide.md)."]
        );
        // No autolink inside a link's text: it would undo the link.
        assert_eq!(
            lines(&[" [https://example.com](https://example.com)"]),
            [" [https://example.com](https://example.com)"]
        );
    }

    #[test]
    fn html_is_text() {
        assert_eq!(
            lines(&[" A <b>bold</b> Vec<T>, a < b, <!-- note --> and <br/>."]),
            [" A \\<b>bold\\</b> Vec\\<T>, a < b, \\<!-- note --> and \\<br/>."]
        );
    }

    #[test]
    fn code_never_becomes_a_doctest() {
        assert_eq!(
            lines(&[
                " Example:",
                "     call(1)",
                "",
                "     call(2)",
                "",
                " Done."
            ]),
            [
                " Example:",
                " ```text",
                " call(1)",
                "",
                " call(2)",
                " ```",
                "",
                " Done."
            ]
        );
        assert_eq!(
            lines(&[" ```", " let x = 1;", " ```"]),
            [" ```text", " let x = 1;", " ```"]
        );
        assert_eq!(
            lines(&[" ```json", " {}", " ```"]),
            [" ```json", " {}", " ```"]
        );
        // An indentation every line shares is not code (rustdoc reads `///`
        // comments the same way).
        assert_eq!(lines(&["     open"]), [" open"]);
    }

    #[test]
    fn fences_rustdoc_would_compile_become_text() {
        for info in [
            "rust",
            "no_run",
            "rust,ignore",
            "should_panic",
            "compile_fail",
            "compile-fail",
            "edition2021",
            "E0277",
            "{.rust}",
            "text,rust",
        ] {
            assert_eq!(
                lines(&[&format!(" ```{info}"), " main()", " ```"]),
                [" ```text", " main()", " ```"],
                "{info}"
            );
        }
        assert_eq!(lines(&[" ~~~", " x", " ~~~"]), [" ~~~text", " x", " ~~~"]);
        assert_eq!(
            lines(&[" ````python", " ```", " ````"]),
            [" ````python", " ```", " ````"]
        );
        // An unclosed fence is closed.
        assert_eq!(lines(&[" ```", " x"]), [" ```text", " x", " ```"]);
    }

    #[test]
    fn a_text_block_cannot_be_closed_by_its_contents() {
        assert_eq!(
            lines(&[" Quoted:", "     ```", "     fn main() {}", "     ```"]),
            [
                " Quoted:",
                " ````text",
                " ```",
                " fn main() {}",
                " ```",
                " ````"
            ]
        );
    }

    #[test]
    fn quotes_and_lists_cannot_hold_code() {
        assert_eq!(
            lines(&[
                " >     quoted code",
                " -     listed code",
                " - ```",
                " 1. item"
            ]),
            [
                " \\>     quoted code",
                " - listed code",
                " - \\```",
                " 1. item"
            ]
        );
    }

    #[test]
    fn comment_decoration_goes() {
        // `/** ... */`
        assert_eq!(
            lines(&["*", " Block doc.", "   indented two more"]),
            [" Block doc.", "   indented two more"]
        );
        // `/// ...`
        assert_eq!(lines(&["/ One.", "/", "/ Two."]), [" One.", "", " Two."]);
        // Indentation common to every line is not code.
        assert_eq!(
            lines(&["      Deep.", "      Deeper."]),
            [" Deep.", " Deeper."]
        );
        assert_eq!(plain_comment("a\u{2066}b\u{202A}c"), "abc");
        // `/** One line. */`
        assert_eq!(lines(&["* One line. "]), [" One line."]);
        // Control characters and text-direction overrides.
        assert_eq!(
            lines(&[" a\rb\u{202E}c\u{7}", "\tTabbed"]),
            [" abc", "    Tabbed"]
        );
    }

    #[test]
    fn leading_and_trailing_comments_lose_their_decoration_apart() {
        assert_eq!(
            rustdoc_comment(Some("/ Three slashes.\n"), Some(" Trailing.\n")),
            [" Three slashes.", "", " Trailing."]
        );
        assert_eq!(
            rustdoc_comment(None, Some(" Only trailing.")),
            [" Only trailing."]
        );
        assert_eq!(rustdoc_comment(Some("\n"), Some(" T.")), [" T."]);
    }

    #[test]
    fn blank_lines_around_are_dropped() {
        assert_eq!(lines(&["", " One.", "", ""]), [" One."]);
        assert!(lines(&["", "  "]).is_empty());
    }
}
