//! The link checker of the repository's markdown: every link `[text](target)` in a tracked `*.md`
//! file must point to a file or folder that exists, and its `#anchor`, in the same file or in
//! another markdown file, must name one of that file's headings as GitHub spells its anchors.
//!
//! Links to `http://`, `https://` and `mailto:` targets are not checked, nor links inside fenced
//! code blocks or inline code. Only compiled for tests: `cargo test -p xtask doclinks` runs it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A link whose target file or anchor does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BrokenLink {
    /// The markdown file holding the link, relative to the repository root.
    file: String,
    /// The 1-based line where the link's target starts.
    line: usize,
    /// The target as written between the parentheses.
    target: String,
    /// Why it does not resolve.
    reason: String,
}

impl fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: ({}) {}",
            self.file, self.line, self.target, self.reason
        )
    }
}

/// A link found in a markdown file: where it is and what it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    /// The 1-based line where the target starts.
    line: usize,
    /// The target without angle brackets or title.
    target: String,
}

/// The repository root: the folder above xtask's manifest.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The markdown files git tracks, relative to `root` (`git ls-files '*.md'`).
fn tracked_markdown(root: &Path) -> Result<Vec<String>> {
    let output = Command::new("git")
        .args(["ls-files", "-z", "--", "*.md"])
        .current_dir(root)
        .output()
        .context("running git ls-files")?;
    if !output.status.success() {
        bail!(
            "git ls-files failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let listing = String::from_utf8(output.stdout).context("git ls-files printed non-UTF-8")?;
    Ok(listing
        .split('\0')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Checks every link of every tracked markdown file under `root` and returns the broken ones.
/// A tracked file missing from the working tree (deleted, not yet committed) is skipped.
fn check_repository(root: &Path) -> Result<Vec<BrokenLink>> {
    let files = tracked_markdown(root)?;
    if files.is_empty() {
        bail!(
            "git ls-files found no markdown files under {}",
            root.display()
        );
    }
    let mut anchors = AnchorCache::default();
    let mut broken = Vec::new();
    for file in files {
        let path = root.join(&file);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        broken.extend(check_file(root, &file, &text, &mut anchors)?);
    }
    Ok(broken)
}

/// The anchors of the markdown files read so far, by path.
#[derive(Default)]
struct AnchorCache {
    /// Anchors of each file, keyed by its path as joined from the root.
    files: HashMap<PathBuf, HashSet<String>>,
}

impl AnchorCache {
    /// The anchors of the markdown file at `path`, read once.
    fn of(&mut self, path: &Path) -> Result<&HashSet<String>> {
        if !self.files.contains_key(path) {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            self.files.insert(path.to_path_buf(), anchors(&text));
        }
        self.files
            .get(path)
            .with_context(|| format!("anchors of {} not cached", path.display()))
    }
}

/// Checks the links of one markdown file, `file` (relative to `root`) with contents `text`.
fn check_file(
    root: &Path,
    file: &str,
    text: &str,
    cache: &mut AnchorCache,
) -> Result<Vec<BrokenLink>> {
    let source = root.join(file);
    let own_anchors = anchors(text);
    let mut broken = Vec::new();
    for link in links(text) {
        if is_external(&link.target) {
            continue;
        }
        let (path_part, fragment) = match link.target.split_once('#') {
            Some((path, fragment)) => (path, Some(percent_decode(fragment))),
            None => (link.target.as_str(), None),
        };
        let fail = |reason: String| BrokenLink {
            file: file.to_owned(),
            line: link.line,
            target: link.target.clone(),
            reason,
        };
        if path_part.is_empty() {
            if let Some(fragment) = fragment.filter(|f| !f.is_empty())
                && !own_anchors.contains(&fragment)
            {
                broken.push(fail(format!(
                    "no heading with anchor #{fragment} in this file"
                )));
            }
            continue;
        }
        let target = resolve(root, &source, &percent_decode(path_part));
        if !target.exists() {
            broken.push(fail(format!("{} does not exist", shown(root, &target))));
            continue;
        }
        let Some(fragment) = fragment.filter(|f| !f.is_empty()) else {
            continue;
        };
        let markdown = if target.is_dir() {
            Some(target.join("README.md")).filter(|readme| readme.is_file())
        } else {
            Some(target.clone()).filter(|path| is_markdown(path))
        };
        if let Some(markdown) = markdown
            && !cache.of(&markdown)?.contains(&fragment)
        {
            broken.push(fail(format!(
                "no heading with anchor #{fragment} in {}",
                shown(root, &markdown)
            )));
        }
    }
    Ok(broken)
}

/// Whether a target leaves the repository: a URL (`scheme://`) or a `mailto:` address.
fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// Whether a path names a markdown file (`.md`, any case).
fn is_markdown(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("md"))
}

/// The file a link's path points to: relative to the linking file's folder, or to the
/// repository root when it starts with `/` (as GitHub reads it).
fn resolve(root: &Path, source: &Path, path: &str) -> PathBuf {
    let joined = match path.strip_prefix('/') {
        Some(from_root) => root.join(from_root),
        None => source.parent().unwrap_or(root).join(path),
    };
    folded(&joined)
}

/// The path with `.` and `..` folded away (where a parent is known), so that equal targets share
/// one cache entry and messages show short paths.
fn folded(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let at_parent = matches!(out.components().next_back(), Some(Component::ParentDir));
                if at_parent || !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A path as shown in messages: relative to the root when it lies under it.
fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(folded(root))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Decodes `%XX` escapes (e.g. `%20`); anything malformed is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The opening or closing marker of a fenced code block on this line: its character (`` ` `` or
/// `~`) and length (at least 3).
fn fence_marker(line: &str) -> Option<(char, usize)> {
    let trimmed = line.trim_start();
    let first = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let length = trimmed.chars().take_while(|c| *c == first).count();
    (length >= 3).then_some((first, length))
}

/// The text with fenced code blocks blanked out, line by line (so that line numbers stay).
fn without_fences(text: &str) -> Vec<&str> {
    let mut open: Option<(char, usize)> = None;
    text.lines()
        .map(|line| match (open, fence_marker(line)) {
            (None, Some(marker)) => {
                open = Some(marker);
                ""
            }
            (Some((c, n)), Some((d, m))) if c == d && m >= n && line.trim().len() == m => {
                open = None;
                ""
            }
            (Some(_), _) => "",
            (None, None) => line,
        })
        .collect()
}

/// The line with inline code spans (`` `...` ``, ``` ``...`` ```) removed; an unclosed run of
/// backticks is kept as written.
fn without_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let other = chars[j..].iter().take_while(|c| **c == '`').count();
                if other == run {
                    close = Some(j + other);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => i = end,
            None => {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// The links `[text](target)` (and images `![alt](target)`) of a markdown text, outside fenced
/// code blocks and inline code. Link text may span lines within a paragraph; the target ends at
/// the first space (a title may follow) or is written in `<...>`.
fn links(text: &str) -> Vec<Link> {
    let lines: Vec<String> = without_fences(text)
        .into_iter()
        .map(without_code_spans)
        .collect();
    let mut found = Vec::new();
    let mut open_brackets = 0usize;
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            open_brackets = 0;
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '\\' => i += 1,
                '[' => open_brackets += 1,
                ']' if open_brackets > 0 => {
                    open_brackets -= 1;
                    if chars.get(i + 1) == Some(&'(')
                        && let Some((target, end)) = link_target(&chars, i + 2)
                    {
                        found.push(Link {
                            line: index + 1,
                            target,
                        });
                        i = end;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    found
}

/// Reads a link's destination starting after its `(`: returns the target (without `<>` or
/// title) and the index of the closing `)`, or `None` when the parentheses do not close on this
/// line.
fn link_target(chars: &[char], start: usize) -> Option<(String, usize)> {
    let mut depth = 0usize;
    let mut end = None;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '(' => depth += 1,
            ')' if depth == 0 => {
                end = Some(i);
                break;
            }
            ')' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    let end = end?;
    let inside: String = chars[start..end].iter().collect();
    let inside = inside.trim();
    let target = match inside.strip_prefix('<') {
        Some(rest) => rest.split('>').next().unwrap_or_default(),
        None => inside.split_whitespace().next().unwrap_or_default(),
    };
    Some((target.to_owned(), end))
}

/// The text of an ATX heading (`# ...` to `###### ...`, at most three spaces in), without the
/// optional closing `#`s.
fn heading_text(line: &str) -> Option<&str> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let level = rest.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &rest[level..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    let text = rest.trim();
    let without_closing = text.trim_end_matches('#');
    if without_closing.is_empty() || without_closing.ends_with(' ') {
        Some(without_closing.trim_end())
    } else {
        Some(text)
    }
}

/// A heading's text as GitHub renders it for its anchor: links `[text](target)` become their
/// text.
fn rendered_heading(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ']'
            && chars.get(i + 1) == Some(&'(')
            && let Some((_, end)) = link_target(&chars, i + 2)
        {
            i = end + 1;
            continue;
        }
        if chars[i] != '[' && !(chars[i] == '!' && chars.get(i + 1) == Some(&'[')) {
            out.push(chars[i]);
        }
        i += 1;
    }
    out
}

/// GitHub's anchor for a heading's text, before duplicates are numbered: lowercase, characters
/// other than alphanumerics, spaces, hyphens and underscores dropped, spaces turned into hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of a markdown text (outside fenced code blocks), numbered as
/// GitHub numbers repeated ones: the first `name`, then `name-1`, `name-2`, ...
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut found = HashSet::new();
    for line in without_fences(text) {
        let Some(heading) = heading_text(line) else {
            continue;
        };
        let base = slug(&rendered_heading(heading));
        let mut anchor = base.clone();
        while seen.contains_key(&anchor) {
            let count = seen.entry(base.clone()).or_insert(0);
            *count += 1;
            anchor = format!("{base}-{count}");
        }
        seen.insert(anchor.clone(), 0);
        found.insert(anchor);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_markdown_link_resolves() {
        let root = repo_root();
        let broken = check_repository(&root).expect("the link check runs");
        let list: Vec<String> = broken.iter().map(ToString::to_string).collect();
        assert!(
            broken.is_empty(),
            "{} broken markdown link(s):\n{}",
            broken.len(),
            list.join("\n")
        );
    }

    #[test]
    fn slug_follows_github() {
        assert_eq!(slug("The flow of one call"), "the-flow-of-one-call");
        assert_eq!(
            slug("Resilience: breakers, health, failover and resume"),
            "resilience-breakers-health-failover-and-resume"
        );
        assert_eq!(slug("`[admin]` - the admin API"), "admin---the-admin-api");
        assert_eq!(
            slug("`[breakers.connection]`, `[breakers.endpoint]`"),
            "breakersconnection-breakersendpoint"
        );
        assert_eq!(slug("The `resumer` slot"), "the-resumer-slot");
        assert_eq!(slug("snake_case and x-y"), "snake_case-and-x-y");
        assert_eq!(slug("Über 5 µs!"), "über-5-µs");
    }

    #[test]
    fn repeated_headings_are_numbered() {
        let text = "# Notes\n## Notes\n### Notes\n## Notes 1\n";
        let expected: HashSet<String> = ["notes", "notes-1", "notes-2", "notes-1-1"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(anchors(text), expected);
    }

    #[test]
    fn headings_in_code_blocks_and_without_space_are_not_headings() {
        let text =
            "# Title\n\n```sh\n# a comment\n```\n\n#hashtag\n    # indented code\n## Closed ##\n";
        let expected: HashSet<String> =
            ["title", "closed"].into_iter().map(str::to_owned).collect();
        assert_eq!(anchors(text), expected);
    }

    #[test]
    fn heading_links_count_by_their_text() {
        assert_eq!(
            slug(&rendered_heading("See [the docs](docs/a.md#x) now")),
            "see-the-docs-now"
        );
    }

    #[test]
    fn links_skip_code_and_read_targets() {
        let text = "\
A [plain](a.md) link, an ![image](img.png \"title\") and [`code`](b.md#part).
Inline `[not](a link)` and ``[nor](this)``; [angle](<c d.md>) and [url](https://x.org).
[multi
line](e.md)

```
[fenced](nope.md)
```
[after](f.md#g) and [parens](h(1).md)
";
        let found: Vec<(usize, String)> = links(text)
            .into_iter()
            .map(|link| (link.line, link.target))
            .collect();
        let expected: Vec<(usize, String)> = [
            (1, "a.md"),
            (1, "img.png"),
            (1, "b.md#part"),
            (2, "c d.md"),
            (2, "https://x.org"),
            (4, "e.md"),
            (9, "f.md#g"),
            (9, "h(1).md"),
        ]
        .into_iter()
        .map(|(line, target)| (line, target.to_owned()))
        .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn check_file_reports_missing_files_and_anchors() {
        let root = std::env::temp_dir().join(format!("sluice-doclinks-{}", std::process::id()));
        let docs = root.join("docs");
        std::fs::create_dir_all(&docs).expect("temp folder");
        std::fs::write(docs.join("b.md"), "# B\n\n## Part two\n").expect("write b.md");
        let text = "\
# A

[ok](docs/b.md#part-two) [ok](#a) [ok](docs/) [ok](https://example.com/x.md#nope)
[bad file](docs/c.md) [bad anchor](docs/b.md#part-three) [bad here](#b)
";
        let mut cache = AnchorCache::default();
        let broken = check_file(&root, "a.md", text, &mut cache).expect("check runs");
        std::fs::remove_dir_all(&root).expect("remove temp folder");
        let targets: Vec<&str> = broken.iter().map(|link| link.target.as_str()).collect();
        assert_eq!(targets, ["docs/c.md", "docs/b.md#part-three", "#b"]);
        assert!(
            broken
                .iter()
                .all(|link| link.line == 4 && link.file == "a.md")
        );
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("a%20b.md"), "a b.md");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
