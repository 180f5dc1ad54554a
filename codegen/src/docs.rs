//! Proto comments to rustdoc lines that render as written and never become
//! doctests or broken links.

/// Turns comment lines into rustdoc lines (each starting with a space).
///
/// - `[` and `]` are escaped, so `[foo]` is text, not an intra-doc link;
/// - bare URLs are wrapped in `<...>`, as rustdoc asks;
/// - indented blocks and unlabelled ``` fences become `text` blocks, so
///   rustdoc does not compile a comment's example as a Rust doctest.
pub(crate) fn rustdoc_lines(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_fence = false;
    let mut in_indented = false;
    for line in lines {
        // protoc keeps the space after `//`; one leading space is not indentation.
        let line = line.strip_prefix(' ').unwrap_or(line);
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            if in_indented {
                out.push(" ```".to_owned());
                in_indented = false;
            }
            if in_fence {
                in_fence = false;
                out.push(" ```".to_owned());
            } else {
                in_fence = true;
                let label = trimmed.trim_start_matches('`').trim();
                out.push(if label.is_empty() || label == "rust" {
                    " ```text".to_owned()
                } else {
                    format!(" ```{label}")
                });
            }
            continue;
        }
        if in_fence {
            out.push(format!(" {line}"));
            continue;
        }
        let indented = line.starts_with("    ") || line.starts_with('\t');
        if indented && !in_indented {
            out.push(" ```text".to_owned());
            in_indented = true;
        } else if !indented && in_indented && !trimmed.is_empty() {
            out.push(" ```".to_owned());
            in_indented = false;
        }
        if in_indented {
            out.push(format!(" {line}"));
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

fn escape(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while !rest.is_empty() {
        if rest.starts_with("http://") || rest.starts_with("https://") {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ')' || c == '>')
                .unwrap_or(rest.len());
            let url = rest[..end].trim_end_matches(['.', ',', ';']);
            out.push('<');
            out.push_str(url);
            out.push('>');
            rest = &rest[url.len()..];
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        match c {
            '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
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
    fn code_never_becomes_a_doctest() {
        assert_eq!(
            lines(&[" Example:", "     call(1)", "     call(2)", " Done."]),
            [" Example:", " ```text", "     call(1)", "     call(2)", " ```", " Done."]
        );
        assert_eq!(
            lines(&[" ```", " let x = 1;", " ```"]),
            [" ```text", " let x = 1;", " ```"]
        );
        assert_eq!(lines(&[" ```json", " {}", " ```"]), [" ```json", " {}", " ```"]);
        assert_eq!(lines(&["     open"]), [" ```text", "     open", " ```"]);
    }

    #[test]
    fn trailing_blank_lines_are_dropped() {
        assert_eq!(lines(&[" One.", "", ""]), [" One."]);
    }
}
