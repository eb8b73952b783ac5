//! The docs cannot drift from the code: every page is linked from the README, every relative
//! link resolves, every `distill` flag the docs use exists, every message quoted in
//! docs/failures.md is one the code prints (its word runs are found in src/), and every
//! block marked ```` ```sh runnable ```` runs and prints what the page shows.

use std::path::PathBuf;

use crate::common::*;

fn pages() -> Vec<PathBuf> {
    let mut p: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    p.sort();
    p.insert(0, repo().join("README.md"));
    p
}

/// Relative link targets of a Markdown file: `](target)` with no scheme, anchors dropped.
fn links(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(i, _)| text[i + 2..].split(')').next())
        .map(|t| t.split('#').next().unwrap_or("").trim().to_string())
        .filter(|t| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

#[test]
fn every_page_is_linked_and_every_link_resolves() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        if page.parent() == Some(&repo().join("docs")) {
            assert!(readme.contains(&format!("docs/{name}")), "README does not link docs/{name}");
        }
        for target in links(&text) {
            let path = page.parent().unwrap().join(&target);
            assert!(path.exists(), "{}: link {target} leads nowhere", page.display());
        }
    }
}

/// The long flags of every `distill` subcommand, as its `--help` lists them.
fn cli_flags() -> Vec<String> {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_distill")).args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "distill {args:?} --help failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&[]);
    // The subcommands: the first words of the `Commands:` section's entries.
    let subcommands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap_or("")
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   ")) // a wrapped description
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    let mut flags = Vec::new();
    for text in std::iter::once(top.clone()).chain(subcommands.iter().map(|c| help(&[c.as_str()]))) {
        for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
            if let Some(name) = word.strip_prefix("--").filter(|n| n.chars().next().is_some_and(|c| c.is_ascii_lowercase())) {
                let name: String = name.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-').collect();
                flags.push(format!("--{name}"));
            }
        }
    }
    flags.sort();
    flags.dedup();
    flags
}

/// Every `--flag` on a line of a `distill ...` command (and its `\` continuations) in the
/// README and docs is a flag of the CLI.
#[test]
fn every_distill_flag_in_the_docs_exists() {
    let known = cli_flags();
    assert!(known.len() > 30, "found only {known:?}");
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let mut in_command = false;
        for line in text.lines() {
            let starts = line.contains("distill ") && !line.contains("distill is") && !line.trim_start().starts_with('#');
            if starts || in_command {
                for word in line.split(|c: char| c.is_whitespace() || "`'\"(),;[]|".contains(c)) {
                    let flag = word.split('=').next().unwrap_or("");
                    if flag.starts_with("--")
                        && flag.len() > 2
                        && flag[2..].chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    {
                        assert!(known.iter().any(|k| k == flag), "{}: `{flag}` is not a distill flag ({line})", page.display());
                    }
                }
            }
            in_command = (starts || in_command) && line.trim_end().ends_with('\\');
        }
    }
}

/// The string literals of src/, each with whitespace collapsed and string continuations
/// (`\` + newline + indent) joined, so a message split over lines reads as printed.
fn source_literals() -> Vec<String> {
    let mut literals = Vec::new();
    let mut stack = vec![repo().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap().replace("\\\n", " ");
                literals.extend(string_literals(&text).into_iter().map(|l| normalise(&l)));
            }
        }
    }
    literals
}

/// The contents of the `"..."` literals of Rust source (escaped quotes kept, `'"'` skipped).
fn string_literals(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'\'' && b.get(i + 1) == Some(&b'"') && b.get(i + 2) == Some(&b'\'') {
            i += 3;
        } else if b[i] == b'"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            out.push(text[start..i.min(b.len())].to_string());
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

fn normalise(s: &str) -> String {
    s.replace("\\\"", "\"").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs of 4 or more consecutive plain words (letters, `_`, `-`, `'`, `.` inside) of a
/// quoted message: the parts a format string holds verbatim between its placeholders.
fn word_runs(message: &str) -> Vec<String> {
    let plain = |w: &str| {
        let w = w.trim_end_matches([',', ';', ':', '.']);
        // A single capital (N, R, P) stands for a value, as `…` does.
        let placeholder = w.len() == 1 && w.chars().all(|c| c.is_ascii_uppercase());
        !w.is_empty() && !placeholder && w.chars().all(|c| c.is_alphabetic() || "_-'".contains(c)) && !w.contains("--")
    };
    let mut runs = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    for w in message.split_whitespace().chain(std::iter::once("…")) {
        if plain(w) && !run.last().is_some_and(|l| l.ends_with([':', ';', '.'])) {
            run.push(w);
        } else {
            if run.len() >= 4 {
                runs.push(run.join(" ").trim_end_matches([',', ';', ':', '.']).to_string());
            }
            run.clear();
            if plain(w) {
                run.push(w);
            }
        }
    }
    runs
}

/// Whether one string literal prints `words`: verbatim, or in order as pieces of at least
/// two words around placeholders (`writing {what} in this directory` prints "writing a
/// cache in this directory").
fn printed(literal: &str, words: &[&str]) -> bool {
    literal.contains(&words.join(" "))
        || (2..words.len().saturating_sub(1)).any(|k| {
            let head = words[..k].join(" ");
            literal.find(&head).is_some_and(|at| printed(&literal[at + head.len()..], &words[k..]))
        })
}

/// Whether `words` are printed by up to `parts` literals composed (a message whose
/// placeholder is filled with another literal, `writing {what}` with `a cache`): each part
/// of at least two words is in some literal.
fn composed(literals: &[String], words: &[&str], parts: usize) -> bool {
    let whole = |w: &[&str]| w.len() >= 2 && literals.iter().any(|l| l.contains(&w.join(" ")));
    whole(words)
        || (parts > 1 && (2..words.len().saturating_sub(1)).any(|k| whole(&words[..k]) && composed(literals, &words[k..], parts - 1)))
}

/// Messages quoted in docs/failures.md come from src/, except the few printed by other
/// programs (the OS, clap).
#[test]
fn messages_quoted_in_the_failure_table_are_the_codes() {
    let literals = source_literals();
    let foreign = ["stream did not contain valid UTF-8", "invalid value", "File too large", "Not a directory"];
    let table = std::fs::read_to_string(repo().join("docs/failures.md")).unwrap();
    let (mut checked, mut wrong) = (0, Vec::new());
    for row in table.lines().filter(|l| l.starts_with('|') && !l.starts_with("| case") && !l.starts_with("|---")) {
        let seen = row.splitn(3, '|').nth(2).unwrap_or("");
        for (_, quoted) in seen.split('`').enumerate().filter(|(i, _)| i % 2 == 1) {
            if foreign.iter().any(|f| quoted.contains(f)) {
                continue;
            }
            for run in word_runs(quoted) {
                let words: Vec<&str> = run.split(' ').collect();
                if !literals.iter().any(|l| printed(l, &words)) && !composed(&literals, &words, 3) {
                    wrong.push(format!("`{quoted}`: src/ never prints \"{run}\""));
                }
                checked += 1;
            }
        }
    }
    assert!(wrong.is_empty(), "docs/failures.md quotes messages the code does not print:\n{}", wrong.join("\n"));
    assert!(checked > 40, "only {checked} word runs checked");
}

/// The fenced blocks of a page marked ```` ```sh runnable ````, each with the plain block
/// that follows it (what the page says it prints), if there is one.
fn runnable_blocks(text: &str) -> Vec<(String, Option<String>)> {
    let mut blocks: Vec<(String, Option<String>)> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let info = line.trim().strip_prefix("```").map(str::trim);
        match info {
            Some("sh runnable") => {
                let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
                blocks.push((body.join("\n"), None));
            }
            Some("") if blocks.last().is_some_and(|b| b.1.is_none()) => {
                let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
                blocks.last_mut().unwrap().1 = Some(body.join("\n"));
            }
            Some(_) => {
                // Another block: skip it (and stop pairing output with the last runnable one).
                lines.by_ref().take_while(|l| l.trim() != "```").for_each(drop);
                if let Some(b) = blocks.last_mut()
                    && b.1.is_none()
                {
                    b.1 = Some(String::new());
                }
            }
            None => {}
        }
    }
    blocks
}

/// Does `line` match `pattern`, where `…` in the pattern stands for any text?
fn matches_with_ellipsis(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split('…');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = line.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Every block marked runnable in the README and docs/ runs (in page order, in a scratch
/// directory holding the repository's `data/` and `pipelines/`, with this build's `distill`
/// on PATH), and prints each line of the block that follows it, in order (`…` standing for
/// figures that vary).
#[test]
fn runnable_blocks_run_and_print_what_the_docs_show() {
    let bin = temp();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_distill"), bin.path().join("distill")).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for page in pages() {
        let blocks = runnable_blocks(&std::fs::read_to_string(&page).unwrap());
        if blocks.is_empty() {
            continue;
        }
        let work = temp();
        for d in ["data", "pipelines"] {
            std::os::unix::fs::symlink(repo().join(d), work.path().join(d)).unwrap();
        }
        for (script, expected) in blocks {
            let out = std::process::Command::new("bash")
                .args(["-euo", "pipefail", "-c", &script])
                .current_dir(work.path())
                .env("PATH", &path)
                .output()
                .unwrap();
            let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "{}: this block failed:\n{script}\n--- it printed:\n{printed}", page.display());
            let mut lines = printed.lines();
            for want in expected.as_deref().unwrap_or("").lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    lines.any(|got| matches_with_ellipsis(want.trim_end(), got.trim_end())),
                    "{}: the block\n{script}\ndid not print (in order) the line\n{want}\n--- it printed:\n{printed}",
                    page.display()
                );
            }
            ran += 1;
        }
    }
    assert!(ran >= 2, "only {ran} runnable blocks in the docs");
}

#[test]
fn the_ellipsis_matcher_matches_only_what_it_should() {
    assert!(matches_with_ellipsis("a … b", "a 12 b"));
    assert!(matches_with_ellipsis("x: … rows, … s", "x: 3 rows, 0.5 s"));
    assert!(!matches_with_ellipsis("x: … rows", "x: 3 rows!"));
    assert!(!matches_with_ellipsis("cache/lm: ok", "cache/lm: damaged"));
    assert!(matches_with_ellipsis("exact", "exact"));
}
