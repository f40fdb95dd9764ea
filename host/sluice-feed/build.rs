//! Generates the `sluice.feed.v1` client and server from `proto/feed.proto`.
//!
//! protox parses the schema in pure Rust, so building needs no `protoc` on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("../../proto");
    let proto = proto_dir.join("feed.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    let fds = protox::compile([&proto], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `bytes` fields become `bytes::Bytes`, so one payload buffer can be shared by every
        // event of a stream instead of being copied into a fresh Vec each time.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
