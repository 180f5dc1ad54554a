//! Proto comments to rustdoc lines that render as written and never become
//! doctests or broken links.

/// Turns comment lines into rustdoc lines (each starting with a space).
///
/// - `[` and `]` are escaped, so `[foo]` is text, not an intra-doc link,
///   except in a markdown link `[text](url)` or a code span;
/// - bare URLs are wrapped in `<...>`, as rustdoc asks;
/// - indented blocks and unlabelled ``` fences become `text` blocks, so
///   rustdoc does not compile a comment's example as a Rust doctest.
pub(crate) fn rustdoc_lines(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_fence = false;
    let mut in_indented = false;
    // Blank lines seen inside an indented block: they belong to it only if
    // the block goes on after them.
    let mut blanks = 0;
    for line in lines {
        // protoc keeps the space after `//`; one leading space is not indentation.
        let line = line.strip_prefix(' ').unwrap_or(line);
        let trimmed = line.trim_start();
        if in_fence {
            if trimmed.starts_with("```") {
                in_fence = false;
                out.push(" ```".to_owned());
            } else {
                out.push(format!(" {line}"));
            }
            continue;
        }
        let indented = line.starts_with("    ") || line.starts_with('\t');
        if in_indented {
            if trimmed.is_empty() {
                blanks += 1;
                continue;
            }
            if indented {
                out.extend(std::iter::repeat_n(String::new(), blanks));
                blanks = 0;
                out.push(format!(" {}", dedent(line)));
                continue;
            }
            out.push(" ```".to_owned());
            out.extend(std::iter::repeat_n(String::new(), blanks));
            in_indented = false;
            blanks = 0;
        }
        if let Some(fence) = trimmed.strip_prefix("```") {
            in_fence = true;
            let label = fence.trim_start_matches('`').trim();
            out.push(if label.is_empty() || label == "rust" {
                " ```text".to_owned()
            } else {
                format!(" ```{label}")
            });
        } else if indented && !trimmed.is_empty() {
            in_indented = true;
            out.push(" ```text".to_owned());
            out.push(format!(" {}", dedent(line)));
        } else if trimmed.is_empty() {
            out.push(String::new());
        } else {
            out.push(format!(" {}", escape(line)));
        }
    }
    if in_fence || in_indented {
        out.push(" ```".to_owned());
    }
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    out
}

/// Removes the four columns that made a line an indented code block.
fn dedent(line: &str) -> &str {
    line.strip_prefix("    ")
        .or_else(|| line.strip_prefix('\t'))
        .unwrap_or(line)
}

/// Escapes one line of prose for rustdoc, leaving code spans, autolinks
/// (`<https://...>`) and markdown links (`[text](url)`) as written.
fn escape(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().collect();
        match chars[i] {
            '`' => {
                // A code span runs to the next backtick; copy it untouched.
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '`')
                    .map_or(chars.len(), |p| i + 1 + p + 1);
                out.extend(&chars[i..end]);
                i = end;
            }
            '<' if rest.starts_with("<http://") || rest.starts_with("<https://") => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '>')
                    .map_or(chars.len(), |p| i + p + 1);
                out.extend(&chars[i..end]);
                i = end;
            }
            '\\' if i + 1 < chars.len() => {
                out.push('\\');
                out.push(chars[i + 1]);
                i += 2;
            }
            '[' => {
                let close = chars[i + 1..]
                    .iter()
                    .position(|&c| c == ']')
                    .map(|p| i + 1 + p);
                match close {
                    // A markdown link: keep the text and its target as written.
                    Some(close) if chars.get(close + 1) == Some(&'(') => {
                        let end = chars[close..]
                            .iter()
                            .position(|&c| c == ')')
                            .map_or(chars.len(), |p| close + p + 1);
                        out.push('[');
                        out.push_str(&escape(&chars[i + 1..close].iter().collect::<String>()));
                        out.extend(&chars[close..end]);
                        i = end;
                    }
                    _ => {
                        out.push_str("\\[");
                        i += 1;
                    }
                }
            }
            ']' => {
                out.push_str("\\]");
                i += 1;
            }
            'h' if rest.starts_with("http://") || rest.starts_with("https://") => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c.is_whitespace() || c == ')' || c == '>')
                    .map_or(chars.len(), |p| i + p);
                let url: String = chars[i..end].iter().collect();
                let url = url.trim_end_matches(['.', ',', ';', ':']);
                out.push('<');
                out.push_str(url);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        rustdoc_lines(&text.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn links_and_urls_are_escaped() {
        assert_eq!(
            lines(&[" See [the spec] at https://example.com/spec."]),
            [" See \\[the spec\\] at <https://example.com/spec>."]
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
        assert_eq!(lines(&["     open"]), [" ```text", " open", " ```"]);
    }

    #[test]
    fn trailing_blank_lines_are_dropped() {
        assert_eq!(lines(&[" One.", "", ""]), [" One."]);
    }
}
