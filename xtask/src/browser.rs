//! What the dashboard's browser test needs: Debian's Chromium and the npm packages of
//! `tests/browser` (`playwright-core`, pinned by its `package-lock.json`), installed on first
//! use. Chromium comes from apt because Playwright's own browser download is not reachable from
//! every machine; `npm ci` installs exactly the locked versions.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup;
use crate::util::{self, fnv1a};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Makes sure Chromium, Node.js and the test's npm packages are there; returns Chromium's path.
pub fn ensure() -> Result<PathBuf> {
    let chromium = PathBuf::from(CHROMIUM);
    if !chromium.is_file() {
        // Without recommended packages Chromium has no font: screenshots would show no text.
        setup::apt_install(
            "Chromium not found (the dashboard test drives it)",
            &["chromium", "fonts-liberation"],
        )?;
        if !chromium.is_file() {
            bail!(
                "need Chromium at {CHROMIUM}: install it (Debian: `apt-get install chromium`) and rerun"
            );
        }
    }
    if !(util::on_path("node") && util::on_path("npm")) {
        setup::apt_install(
            "Node.js not found (the dashboard test runs on it)",
            &["nodejs", "npm"],
        )?;
        if !(util::on_path("node") && util::on_path("npm")) {
            bail!(
                "need Node.js and npm: install them (Debian: `apt-get install nodejs npm`) and rerun"
            );
        }
    }
    let dir = util::repo_root().join("tests").join("browser");
    let lock = std::fs::read(dir.join("package-lock.json"))
        .with_context(|| format!("reading {}", dir.join("package-lock.json").display()))?;
    let key = format!("{:016x}", fnv1a(&[&lock]));
    let stamp = setup::sluice_dir().join("stamps").join("browser");
    let installed = dir.join("node_modules").join("playwright-core").is_dir();
    if installed && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == key) {
        println!(
            "setup browser: up to date ({})",
            setup::display_rel(&dir.join("node_modules"))
        );
        return Ok(chromium);
    }
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel", "error"])
            .current_dir(&dir),
    )?;
    if let Some(parent) = stamp.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&stamp, format!("{key}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    println!("setup browser: playwright-core installed; Chromium at {CHROMIUM}");
    Ok(chromium)
}
