//! docs/configuration.md documents every key the config loader accepts.
//!
//! The accepted keys are not listed here: they are read from the loader
//! itself. The file mirror denies unknown fields, so a probe key the loader
//! cannot know makes it answer "unknown field ..., expected one of `a`, `b`,
//! ..." with the full list of keys of that table. Probing the top level gives
//! the sections, probing each section gives its keys. A key added to the
//! loader and not to the docs fails this test; nothing here needs editing.

use std::collections::BTreeMap;
use std::path::Path;

/// A key no version of the config will ever accept.
const PROBE: &str = "no_such_key_docs_probe";

/// The keys the loader lists when `text` holds the probe key, or `None` if
/// the loader refused `text` for another reason (e.g. a table written as a
/// single table where an array of tables is expected).
fn accepted_keys(text: &str) -> Option<Vec<String>> {
    let err = match tether::config::from_str(text, Path::new("probe.toml"), None) {
        Ok(_) => panic!("the loader accepted an unknown key:\n{text}"),
        Err(e) => e.to_string(),
    };
    let unknown = format!("unknown field `{PROBE}`");
    let (_, rest) = err.split_once(&unknown)?;
    // serde words the list as "expected `a`", "expected `a` or `b`" or
    // "expected one of `a`, `b`, ..."; every backquoted word after it is a key.
    let keys: Vec<String> = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    assert!(
        !keys.is_empty(),
        "no key list in the loader's answer: {err}"
    );
    Some(keys)
}

/// Every table of the config and its keys, read from the loader.
/// Array tables are spelled `[[name]]`, single tables `[name]`.
fn config_keys() -> BTreeMap<String, Vec<String>> {
    let sections =
        accepted_keys(&format!("{PROBE} = 1\n")).expect("the top level lists its sections");
    let mut out = BTreeMap::new();
    for name in sections {
        let single = format!("[{name}]");
        let array = format!("[[{name}]]");
        let (header, keys) = match accepted_keys(&format!("{single}\n{PROBE} = 1\n")) {
            Some(keys) => (single, keys),
            None => match accepted_keys(&format!("{array}\n{PROBE} = 1\n")) {
                Some(keys) => (array, keys),
                None => panic!("section {name}: neither {single} nor {array} lists its keys"),
            },
        };
        out.insert(header, keys);
    }
    out
}

/// The keys docs/configuration.md documents, by section: a `## ` heading
/// naming the table in backquotes (`` ## `[session]` ``) opens a section, and
/// each `` ### `key` `` heading under it documents one key.
fn documented_keys(doc: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut in_fence = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(h) = line.strip_prefix("## ") {
            section = backquoted(h)
                .filter(|s| s.starts_with('['))
                .map(String::from);
            if let Some(s) = &section {
                out.entry(s.clone()).or_default();
            }
        } else if let Some(h) = line.strip_prefix("### ") {
            if let (Some(s), Some(key)) = (&section, backquoted(h)) {
                out.entry(s.clone()).or_default().push(key.to_string());
            }
        }
    }
    out
}

/// The first backquoted word of a heading.
fn backquoted(heading: &str) -> Option<&str> {
    heading.split('`').nth(1)
}

fn read_doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn the_probe_reads_the_loaders_key_lists() {
    let keys = config_keys();
    // A few keys that have always been there, so a change in the loader's
    // error wording shows up here rather than as an empty list passing.
    assert!(keys["[session]"].iter().any(|k| k == "idle_timeout"));
    assert!(keys["[[backend]]"].iter().any(|k| k == "address"));
    assert!(keys["[[listener]]"].iter().any(|k| k == "bind"));
    assert!(keys["[runtime]"].iter().any(|k| k == "worker_threads"));
    assert!(keys.len() >= 10, "too few sections: {keys:?}");
}

#[test]
fn every_config_key_is_documented_in_docs_configuration_md() {
    let documented = documented_keys(&read_doc());
    let mut missing = Vec::new();
    for (section, keys) in config_keys() {
        match documented.get(&section) {
            None => missing.push(format!("section {section} (a `## `{section}`` heading)")),
            Some(have) => {
                for key in keys {
                    if !have.contains(&key) {
                        missing.push(format!("{section} {key} (a `### `{key}`` heading)"));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document what the config loader accepts:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_toml_example_in_docs_configuration_md_is_toml() {
    let doc = read_doc();
    let mut block: Option<(usize, String)> = None;
    let mut checked = 0;
    for (n, line) in doc.lines().enumerate() {
        match &mut block {
            None if line.trim_start() == "```toml" => block = Some((n + 2, String::new())),
            None => {}
            Some((start, text)) if line.trim_start() == "```" => {
                if let Err(e) = text.parse::<toml::Table>() {
                    panic!("docs/configuration.md:{start}: the example is not TOML: {e}");
                }
                checked += 1;
                block = None;
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(checked > 0, "no ```toml example found");
}

/// The markdown link targets in `text` outside code blocks: `[text](target)`.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        for (i, _) in line.match_indices("](") {
            if let Some(end) = line[i + 2..].find(')') {
                out.push(line[i + 2..i + 2 + end].to_string());
            }
        }
    }
    out
}

#[test]
fn readme_and_docs_link_only_inside_the_repository() {
    // A clone is all a user has: a link out of it, or to a file that is not
    // there, is a dead end.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/ exists") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let root = root.canonicalize().expect("the repository root");
    let mut bad = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("a readable page");
        let dir = page.parent().expect("a page has a directory");
        for target in link_targets(&text) {
            let file = target.split('#').next().unwrap_or("");
            // A link that climbs with `../` reads, out of context, like one
            // that leaves the repository: name repository files by their path.
            if target.contains("://") || target.starts_with("mailto:") || target.starts_with("../")
            {
                bad.push(format!(
                    "{}: {target} leaves the repository",
                    page.display()
                ));
            } else if !file.is_empty() {
                match dir.join(file).canonicalize() {
                    Ok(p) if p.starts_with(&root) => {}
                    Ok(_) => bad.push(format!(
                        "{}: {target} leaves the repository",
                        page.display()
                    )),
                    Err(_) => bad.push(format!("{}: {target} does not exist", page.display())),
                }
            }
        }
    }
    assert!(bad.is_empty(), "bad links:\n  {}", bad.join("\n  "));
}
