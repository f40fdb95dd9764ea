//! `cargo xtask bench failover`: time to resume streams after an endpoint dies, and what they
//! lose; measured by the `failover` bench program of `sluice-tests`.
//!
//! It owns the bench's command line and the release build of the feed server the program
//! kills. It must not measure anything itself: the program prints per-trial and overall figures
//! and writes `<target>/bench/failover.json`.

use anyhow::{Result, bail};

use super::{USAGE, positive, program};
use crate::util::{self, cargo};

/// Builds the release `sluice-feed`, then the plugins (the feed's resumer among them), then runs
/// the `failover` bench program (release profile) with `--trials N` and `--streams N` passed
/// on.
pub(super) fn run(args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--trials" | "--streams" => passed.extend([arg.clone(), positive(arg, rest.next())?]),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    util::run(cargo().args(["build", "--release", "-p", "sluice-feed"]))?;
    program::run("sluice-tests", "failover", &passed)
}
