//! The docs cannot drift from the code: every page is linked from the README, every relative
//! link resolves, every `distill` flag the docs use exists, and every message quoted in
//! docs/failures.md is one the code prints (its word runs are found in src/).

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

/// The long flags of `distill` subcommands, from the clap definitions (`field: ...` under
/// `#[arg(long...)]` becomes `--field-name`).
fn cli_flags() -> Vec<String> {
    let cli = std::fs::read_to_string(repo().join("src/cli.rs")).unwrap();
    let mut flags = Vec::new();
    let mut long = false;
    for line in cli.lines().map(str::trim) {
        if line.starts_with("#[arg(") && line.contains("long") {
            long = true;
        } else if long && !line.starts_with("///") && !line.starts_with("#[") {
            if let Some((field, _)) = line.split_once(':') {
                flags.push(format!("--{}", field.trim().trim_start_matches("pub ").replace('_', "-")));
            }
            long = false;
        }
    }
    flags.extend(["--help", "--version", "--json"].map(String::from));
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

/// Source text with whitespace collapsed and string continuations (`\` + newline + indent)
/// joined, so a message split over lines in the code reads as printed.
fn source_text() -> String {
    let mut all = String::new();
    let mut stack = vec![repo().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                all.push_str(&std::fs::read_to_string(&p).unwrap().replace("\\\n", " "));
                all.push(' ');
            }
        }
    }
    normalise(&all)
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

/// Whether `words` are printed by the code: verbatim, or as pieces of at least two words on
/// either side of placeholders (`writing {what} in this directory` prints "writing a cache in
/// this directory").
fn printed(source: &str, words: &[&str]) -> bool {
    source.contains(&words.join(" "))
        || (2..words.len().saturating_sub(1)).any(|k| source.contains(&words[..k].join(" ")) && printed(source, &words[k..]))
}

/// Messages quoted in docs/failures.md come from src/, except the few printed by other
/// programs (the OS, clap).
#[test]
fn messages_quoted_in_the_failure_table_are_the_codes() {
    let source = source_text();
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
                if !printed(&source, &words) {
                    wrong.push(format!("`{quoted}`: src/ never prints \"{run}\""));
                }
                checked += 1;
            }
        }
    }
    assert!(wrong.is_empty(), "docs/failures.md quotes messages the code does not print:\n{}", wrong.join("\n"));
    assert!(checked > 40, "only {checked} word runs checked");
}
