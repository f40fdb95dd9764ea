//! `cargo xtask bench policy`: ns per routing decision of the built-in router and the plugins in
//! every language, and plugin reload times; measured by the `policy` bench program of
//! `sluice-policy`.
//!
//! It owns the bench's command line. It must not measure anything itself: the program prints
//! its tables and writes `<target>/bench/policy.json`.

use anyhow::{Result, bail};

use super::{USAGE, positive, program};

/// Builds the plugins, then runs the `policy` bench program of `sluice-policy` (release
/// profile) with `--quick` and `--rounds N` passed on.
pub(super) fn run(args: &[String]) -> Result<()> {
    let mut passed = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => passed.push(arg.clone()),
            "--rounds" => passed.extend([arg.clone(), positive(arg, rest.next())?]),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    program::run("sluice-policy", "policy", &passed)
}
