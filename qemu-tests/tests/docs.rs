//! The command blocks of README.md and docs/ run as written, so the docs
//! cannot drift from the tools. A block is run when the line before its
//! ```` ```sh ```` fence is `<!-- doc-test: NAME -->`; the blocks of one
//! NAME in one file make one script, run in order in an empty directory
//! with the workspace's `bootctl`, `image-tools` and `updater` first on
//! PATH (built by `cargo test --workspace`, or `cargo build` first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const MARK: &str = "<!-- doc-test: ";

/// The scripts of one Markdown file, by name, each block in order.
fn scripts(markdown: &str, file: &Path) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix(MARK) else {
            continue;
        };
        let name = rest
            .strip_suffix("-->")
            .unwrap_or_else(|| panic!("{}: {line:?} does not end with -->", file.display()))
            .trim()
            .to_string();
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```sh",
            "{}: the line after {line:?} must open a ```sh block",
            file.display()
        );
        let mut block = String::new();
        loop {
            let l = lines
                .next()
                .unwrap_or_else(|| panic!("{}: a block of {name} never closes", file.display()));
            if l.trim() == "```" {
                break;
            }
            block.push_str(l);
            block.push('\n');
        }
        found.entry(name).or_default().push(block);
    }
    found
}

/// Where `cargo test` put the workspace's binaries: beside `deps/`.
fn binaries() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for bin in ["bootctl", "image-tools", "updater"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: run `cargo build --workspace` (or the whole `cargo test --workspace`) first",
            dir.join(bin).display()
        );
    }
    dir
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn markdown_files() -> Vec<PathBuf> {
    let ws = workspace();
    let mut files = vec![ws.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(ws.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn the_command_blocks_of_the_readme_and_the_docs_run_as_written() {
    let bin = binaries();
    let path = format!(
        "{}:{}:/usr/sbin:/sbin",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let scripts = scripts(&text, &file);
        // A marker written slightly wrong would be skipped silently.
        let blocks: usize = scripts.values().map(Vec::len).sum();
        assert_eq!(
            blocks,
            text.matches("doc-test:").count(),
            "{}: a doc-test marker is not of the form `{MARK}NAME -->` on a line of its own",
            file.display()
        );
        for (name, blocks) in scripts {
            let dir = tempfile::tempdir().unwrap();
            let script = format!("set -euo pipefail\n{}", blocks.concat());
            let out = Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(dir.path())
                .env("PATH", &path)
                .output()
                .unwrap();
            let shown = format!(
                "{} {name}:\n--- script\n{script}--- stdout\n{}--- stderr\n{}",
                file.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{} failed: {shown}", out.status);
            println!("{shown}");
            ran.push((file.clone(), name, blocks.len(), out));
        }
    }
    // Each of the scripts the docs have today is still there.
    let ws = workspace();
    for (file, name) in [
        ("README.md", "walkthrough"),
        ("docs/bundle-format.md", "delta"),
    ] {
        assert!(
            ran.iter()
                .any(|(f, n, ..)| *f == ws.join(file) && n == name),
            "{file} lost its doc-test {name}"
        );
    }
    // The README's walkthrough is there and did what it says.
    let readme = workspace().join("README.md");
    let (_, _, blocks, out) = ran
        .iter()
        .find(|(f, name, ..)| *f == readme && name == "walkthrough")
        .expect("README.md has no doc-test walkthrough");
    assert!(*blocks >= 5, "the walkthrough has {blocks} blocks");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for said in [
        "acme-gw 2.0.0 installed into slot_b",
        "slot_b (2.0.0) passed its health check and is committed",
        "slot_a boots next",
    ] {
        assert!(
            stdout.contains(said),
            "the walkthrough did not say {said:?}:\n{stdout}"
        );
    }
    assert!(
        stderr.contains("not rebooting: disk.img is a disk image"),
        "the rollback did not say it would not reboot:\n{stderr}"
    );
}

#[test]
fn a_marked_block_that_is_not_a_sh_block_is_an_error_not_skipped() {
    let bad = "<!-- doc-test: x -->\n```json\n{}\n```\n";
    let r = std::panic::catch_unwind(|| scripts(bad, Path::new("bad.md")));
    assert!(r.is_err());
    let good = "text\n<!-- doc-test: x -->\n```sh\necho a\n```\n\n<!-- doc-test: x -->\n```sh\necho b\n```\n";
    let s = scripts(good, Path::new("good.md"));
    assert_eq!(s["x"], vec!["echo a\n".to_string(), "echo b\n".to_string()]);
}

/// docs/architecture.md names every source file of the workspace.
#[test]
fn the_architecture_map_names_every_module() {
    let ws = workspace();
    let map = std::fs::read_to_string(ws.join("docs/architecture.md")).unwrap();
    let mut missing = Vec::new();
    for dir in [
        "bootctl/src",
        "bootctl/core/src",
        "bootctl/uefi/src",
        "updater/src",
        "updater/src/fleet",
        "image-tools/src",
        "image-tools/bundle/src",
        "qemu-tests/src",
        "qemu-tests/support/src",
    ] {
        for entry in std::fs::read_dir(ws.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                let shown = if dir.ends_with("fleet") {
                    format!("`fleet/{name}`")
                } else {
                    format!("`{name}`")
                };
                if !map.contains(&shown) {
                    missing.push(format!("{dir}/{name}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name {missing:?}"
    );
}

/// The codes an `exit_code` mapping can return: the numbers of its match
/// arms (`=> 41,`, or `=> Some(47),` for the disk's lock in the updater).
/// The mappings match every variant by name (no `_` arm), so a new error
/// cannot be added without a code here.
fn codes_in_source(file: &str) -> std::collections::BTreeSet<u32> {
    let text = std::fs::read_to_string(workspace().join(file)).unwrap();
    let mut codes = std::collections::BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        let arm = line
            .rsplit_once("=> ")
            .and_then(|(_, n)| n.strip_suffix(','));
        let arm = arm.map(|n| {
            n.strip_prefix("Some(")
                .map_or(n, |n| n.trim_end_matches(')'))
        });
        if let Some(code) = arm.and_then(|n| n.parse().ok()) {
            codes.insert(code);
        }
    }
    assert!(!codes.is_empty(), "{file}: no exit codes found");
    codes
}

/// The codes of the exit-code table (`| code | meaning |`) of a doc.
fn codes_in_doc(file: &str) -> std::collections::BTreeSet<u32> {
    let text = std::fs::read_to_string(workspace().join(file)).unwrap();
    let table = text
        .split_once("| code | meaning |")
        .unwrap_or_else(|| panic!("{file} has no exit-code table"))
        .1;
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cell = l.split('|').nth(1).unwrap().trim();
            cell.parse()
                .unwrap_or_else(|_| panic!("{file}: {cell:?} is not an exit code"))
        })
        .collect()
}

/// Every exit code a tool can return is in its docs' table, and the table
/// names none it cannot return (0, 1 and 2 are every tool's).
#[test]
fn the_exit_code_tables_of_the_docs_match_the_code() {
    let common = [0, 1, 2];
    for (doc, source) in [
        ("docs/updater.md", "updater/src/cli/exit.rs"),
        ("docs/bundle-format.md", "image-tools/bundle/src/error.rs"),
        ("docs/boot-control.md", "bootctl/src/error.rs"),
    ] {
        let mut code = codes_in_source(source);
        code.extend(common);
        let documented = codes_in_doc(doc);
        let missing: Vec<_> = code.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&code).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{doc} against {source}: codes not documented {missing:?}, documented but never returned {extra:?}"
        );
    }
    // The fleet's table is a subset: the codes `updater fleet --once`
    // returns of its own.
    let updater: std::collections::BTreeSet<u32> = codes_in_source("updater/src/cli/exit.rs")
        .into_iter()
        .chain(common)
        .collect();
    let fleet = codes_in_doc("docs/fleet.md");
    assert!(
        fleet.is_subset(&updater) && fleet.contains(&61) && fleet.contains(&62),
        "docs/fleet.md's codes {fleet:?} are not the updater's {updater:?} with 61 and 62"
    );
}
