//! `cargo xtask soak [--minutes N]`: the spec's load test, made real (see
//! `sluice_tests::soak`): 20 monitors over 3 endpoint processes for N minutes (default 30)
//! under a schedule of faults. Prints every figure against the spec's targets and writes the
//! raw figures as JSON. It asserts nothing; `cargo xtask test` runs a 2-minute version that
//! checks the counts.

use std::path::PathBuf;
use std::time::Duration;

use sluice_tests::soak::{self, SoakOptions, report::Figures};

struct Args {
    options: SoakOptions,
    json: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        options: SoakOptions {
            duration: Duration::from_secs(30 * 60),
            plugins: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins")),
        },
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--plugins" => args.options.plugins = PathBuf::from(value()),
            "--minutes" => {
                let minutes: f64 = value().parse().expect("--minutes N");
                assert!(minutes >= 1.0, "--minutes must be at least 1");
                args.options.duration = Duration::from_secs_f64(minutes * 60.0);
            }
            "--json" => args.json = Some(PathBuf::from(value())),
            // Passed by `cargo bench`.
            "--bench" => {}
            other => panic!("unknown option {other:?}"),
        }
    }
    args
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let run = soak::run(args.options).await;
    let figures = Figures::of(&run);
    figures.print(&run);
    if let Some(path) = args.json {
        let document = figures.to_json(&run);
        std::fs::write(&path, serde_json::to_vec_pretty(&document).expect("json"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("\nraw figures: {}", path.display());
    }
}
