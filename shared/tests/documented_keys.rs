//! `conf/server.toml`, `conf/agent.toml` and the README's settings tables
//! agree with the declared keys (`keys()` of the raw config structs).
//!
//! The files are written by hand and checked, not generated: their comments
//! say more than a key's doc line. The rules for a conf file:
//! - every declared key has one line, `key = value` or commented out
//!   `# key = value`, in its table (`[quic]`), and no other key has one;
//! - a key line, or a run of them, follows its comment paragraph, which
//!   states the declared defaults: `Default: D` (`Default: "10s"`), or for a
//!   run of keys `Defaults: D1 and D2`;
//! - a commented-out key with a declared default shows that default.
//!
//! A README settings table row names keys in backticks (`` `a` / `b` ``,
//! "agent `a`" for one binary's key) and their defaults in the same order,
//! as declared or with a unit: `10 s`, `2 min`, `16 MiB`.

use std::path::{Path, PathBuf};

use konnq_shared::config::{parse_duration, KeyDoc, RawAgentConfig, RawServerConfig, Shown};

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(repo_file(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A key's line in a conf file.
struct KeyLine {
    key: String,
    value: toml::Value,
    commented: bool,
    line: usize,
}

/// A comment paragraph and the key lines right below it.
struct Group {
    prose: String,
    keys: Vec<KeyLine>,
}

/// `key = value` or `# key = value`, `key` in kebab-case and `value` TOML.
fn key_line(text: &str, table: &str, line: usize) -> Option<KeyLine> {
    let (commented, rest) = text.strip_prefix("# ").map_or((false, text), |rest| (true, rest));
    let (key, value) = rest.split_once(" = ")?;
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return None;
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {value}")).ok()?.remove("v")?;
    Some(KeyLine { key: format!("{table}{key}"), value, commented, line })
}

fn groups(text: &str) -> Vec<Group> {
    let (mut table, mut prose, mut groups) = (String::new(), Vec::new(), Vec::<Group>::new());
    let mut in_group = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = format!("{name}.");
        } else if let Some(key) = key_line(line, &table, i + 1) {
            if !in_group {
                groups.push(Group { prose: prose.join(" "), keys: Vec::new() });
            }
            groups.last_mut().expect("pushed").keys.push(key);
            in_group = true;
            continue;
        }
        in_group = false;
        match line.strip_prefix('#') {
            Some(comment) => prose.push(comment.trim().to_owned()),
            None => prose.clear(),
        }
    }
    groups
}

/// Whether `value` in a conf file is `default`.
fn is_default(value: &toml::Value, default: &Shown) -> bool {
    match value {
        toml::Value::String(s) => default.quoted && *s == default.text,
        other => !default.quoted && other.to_string() == default.text,
    }
}

/// Whether `prose` has `phrase` followed by something other than more of a value.
fn states(prose: &str, phrase: &str) -> bool {
    prose.match_indices(phrase).any(|(i, _)| {
        let mut rest = prose[i + phrase.len()..].chars();
        match rest.next() {
            None => true,
            Some('.') => !rest.next().is_some_and(|c| c.is_ascii_digit()),
            Some(c) => !c.is_alphanumeric(),
        }
    })
}

/// Every way `conf` disagrees with `keys`.
fn conf_problems(conf: &str, keys: &[KeyDoc]) -> Vec<String> {
    let groups = groups(conf);
    let lines: Vec<&KeyLine> = groups.iter().flat_map(|g| &g.keys).collect();
    let mut problems = Vec::new();
    for k in keys {
        let n = lines.iter().filter(|l| l.key == k.key).count();
        if n != 1 {
            problems.push(format!("{}: {n} lines, expected 1", k.key));
        }
    }
    let declared = |key: &str| keys.iter().find(|k| k.key == key);
    for l in &lines {
        match declared(&l.key).and_then(|k| k.default.as_ref()) {
            None if declared(&l.key).is_none() => problems.push(format!("line {}: {} is not declared", l.line, l.key)),
            Some(d) if l.commented && !is_default(&l.value, d) => {
                problems.push(format!("line {}: # {} = {}, declared default {}", l.line, l.key, l.value, d.toml()))
            }
            _ => {}
        }
    }
    for g in &groups {
        let defaults: Vec<String> =
            g.keys.iter().filter_map(|l| declared(&l.key)?.default.as_ref()).map(Shown::toml).collect();
        let Some(first) = defaults.first() else { continue };
        let joined = defaults.join(" and ");
        let same = defaults.iter().all(|d| d == first);
        let stated = states(&g.prose, &format!("Default: {joined}"))
            || states(&g.prose, &format!("Defaults: {joined}"))
            || (same && states(&g.prose, &format!("Default: {first}")));
        if !stated {
            problems.push(format!("line {}: the comment above does not say \"Default: {joined}\"", g.keys[0].line));
        }
    }
    problems
}

#[test]
fn conf_files_document_every_declared_key_and_default() {
    for (file, keys) in [("conf/server.toml", RawServerConfig::keys()), ("conf/agent.toml", RawAgentConfig::keys())] {
        let problems = conf_problems(&read(file), &keys);
        assert!(problems.is_empty(), "{file} disagrees with the declared keys:\n{}", problems.join("\n"));
    }
}

#[test]
fn the_conf_check_finds_stale_missing_and_unknown_keys() {
    let keys = RawAgentConfig::keys();
    let conf = read("conf/agent.toml");
    let stale = conf.replace("admin-server-port = 8094", "").replace("work. Default: 1.", "work. Default: 2.");
    let stale = stale + "\n# Removed.\n# probe-interval = \"1s\"\n";
    let problems = conf_problems(&stale, &keys).join("\n");
    assert!(problems.contains("admin-server-port: 0 lines"), "{problems}");
    assert!(problems.contains("probe-interval is not declared"), "{problems}");
    assert!(problems.contains("does not say \"Default: 1\""), "{problems}");
    let commented = conf.replace("sync-interval = \"1s\"", "# sync-interval = \"2s\"");
    assert!(conf_problems(&commented, &keys).join("\n").contains("declared default \"1s\""));
}

/// A README default as declared: `10 s` and `2 min` as durations, `16 MiB` in bytes.
fn readme_agrees(readme: &str, declared: &Shown) -> bool {
    let compact: String = readme.chars().filter(|c| !c.is_whitespace() && *c != '`').collect();
    if declared.quoted {
        if let (Ok(a), Ok(b)) = (parse_duration(&compact), parse_duration(&declared.text)) {
            return a == b;
        }
        return compact == declared.text;
    }
    let bytes = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)]
        .iter()
        .find_map(|(unit, n)| Some(compact.strip_suffix(unit)?.parse::<u64>().ok()? * n));
    bytes.map_or(compact == declared.text, |b| b.to_string() == declared.text)
}

/// Every way the README's settings tables disagree with the declared keys.
fn readme_problems(readme: &str, server: &[KeyDoc], agent: &[KeyDoc]) -> (usize, Vec<String>) {
    let (mut rows, mut problems, mut in_table) = (0, Vec::new(), false);
    for line in readme.lines() {
        if line.starts_with("| setting | default | effect |") {
            in_table = true;
            continue;
        }
        in_table &= line.starts_with('|');
        if !in_table || line.starts_with("|---") {
            continue;
        }
        rows += 1;
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (setting, default) = (cells[1], cells[2]);
        let names: Vec<&str> = setting.split('`').skip(1).step_by(2).collect();
        let without_notes = default.split(" (").next().unwrap_or(default);
        let defaults: Vec<&str> = without_notes.split(" / ").collect();
        if names.is_empty() || names.len() != defaults.len() {
            problems.push(format!("{line}: {} keys, {} defaults", names.len(), defaults.len()));
            continue;
        }
        let tables: Vec<&[KeyDoc]> = match setting.split_whitespace().next() {
            Some("agent") => vec![agent],
            Some("server") => vec![server],
            _ => vec![server, agent],
        };
        for (name, value) in names.iter().zip(defaults) {
            let found: Vec<&KeyDoc> = tables.iter().filter_map(|t| t.iter().find(|k| k.key == *name)).collect();
            if found.is_empty() {
                problems.push(format!("`{name}` is not a declared key"));
            }
            for k in found {
                match &k.default {
                    Some(d) if readme_agrees(value, d) => {}
                    Some(d) => problems.push(format!("`{name}`: README says {value}, declared {}", d.text)),
                    None => problems.push(format!("`{name}`: README gives {value}, none is declared")),
                }
            }
        }
    }
    (rows, problems)
}

#[test]
fn readme_settings_tables_agree_with_the_declared_defaults() {
    let (server, agent) = (RawServerConfig::keys(), RawAgentConfig::keys());
    let (rows, problems) = readme_problems(&read("README.md"), &server, &agent);
    assert!(problems.is_empty(), "README.md disagrees with the declared keys:\n{}", problems.join("\n"));
    assert!(rows >= 10, "expected the README's settings table, found {rows} rows");
}

#[test]
fn the_readme_check_finds_stale_defaults_and_unknown_keys() {
    let (server, agent) = (RawServerConfig::keys(), RawAgentConfig::keys());
    let table = "| setting | default | effect |\n|---|---|---|\n";
    let check = |rows: &str| readme_problems(&format!("{table}{rows}"), &server, &agent).1.join("\n");
    assert_eq!(check("| `max-message-bytes` | 16 MiB | x |\n| agent `dial-timeout` | 5 s | x |\n"), "");
    assert!(check("| `backend-dial-timeout` | 20 s | x |").contains("README says 20 s, declared 10s"));
    assert!(check("| `sync-interval` / `sync-interval-cap` | 1 s / 1 min | x |").contains("declared 10s"));
    assert!(check("| server `dial-timeout` | 5 s | x |").contains("`dial-timeout` is not a declared key"));
    assert!(check("| `quic.idle` | 5 s | x |").contains("`quic.idle` is not a declared key"));
}
