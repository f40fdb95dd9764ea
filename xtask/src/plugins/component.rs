//! Turning core WebAssembly modules into components with the `wit-component` crate (what
//! `wasm-tools component new` does), so that no extra tool has to be installed.
//!
//! - [`encode_component`]: for a module that already carries its world in a `component-type`
//!   custom section (every `wit-bindgen` guest: the Rust `generate!` macro, or the C generator's
//!   `<world>_component_type.o`).
//! - [`embed_and_encode`]: for a module compiled without one; the world is read from a WIT
//!   folder and embedded first (`wasm-tools component embed` + `component new`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

/// The preamble of a binary component: `\0asm`, version 0x0d, layer 1.
pub const COMPONENT_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// The preamble of a core module: `\0asm`, version 1, layer 0.
const MODULE_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// Encodes a core module whose world is embedded in it as a component, validating the result.
pub fn encode_component(core_wasm: &[u8]) -> Result<Vec<u8>> {
    if !core_wasm.starts_with(&MODULE_MAGIC) {
        bail!("not a core WebAssembly module (bad magic or version)");
    }
    let component = ComponentEncoder::default()
        .validate(true)
        .module(core_wasm)
        .context("reading the module and its component-type section")?
        .encode()
        .context("encoding the component")?;
    if !is_component(&component) {
        bail!("wit-component produced something that is not a component");
    }
    Ok(component)
}

/// Embeds `world` (a name in the package at `wit_dir`, e.g. `router`, or a full name like
/// `sluice:policy/router@0.1.0`) in a core module that has no `component-type` section, then
/// encodes it like [`encode_component`].
#[allow(dead_code, reason = "for the C example (examples.rs)")]
pub fn embed_and_encode(core_wasm: &[u8], wit_dir: &Path, world: &str) -> Result<Vec<u8>> {
    let mut resolve = Resolve::default();
    let (package, _sources) = resolve
        .push_dir(wit_dir)
        .with_context(|| format!("parsing the WIT package in {}", wit_dir.display()))?;
    let world_id = resolve
        .select_world(&[package], Some(world))
        .with_context(|| format!("finding world {world:?} in {}", wit_dir.display()))?;
    let mut module = core_wasm.to_vec();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world_id,
        StringEncoding::UTF8,
        false,
    )
    .with_context(|| format!("embedding world {world:?}"))?;
    encode_component(&module)
}

/// Whether `bytes` start with the component preamble.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(&COMPONENT_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_and_encodes_an_empty_world() {
        let dir = std::env::temp_dir().join(format!("xtask-component-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.wit"), "package test:t@0.1.0;\nworld empty {}\n").unwrap();
        let component = embed_and_encode(&MODULE_MAGIC, &dir, "empty");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(is_component(&component.unwrap()));
    }

    #[test]
    fn refuses_what_is_not_a_module() {
        assert!(encode_component(b"not wasm").is_err());
        assert!(encode_component(&COMPONENT_MAGIC).is_err());
    }
}
