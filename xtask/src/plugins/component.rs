//! Turning core WebAssembly modules into components with the `wit-component` crate (what
//! `wasm-tools component new` does), so that no extra tool has to be installed. Every guest
//! carries its world in a `component-type` custom section (the Rust `generate!` macro, or the C
//! generator's `<world>_component_type.o`), so encoding needs nothing else.

use anyhow::{Context, Result, bail};
use wit_component::ComponentEncoder;

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

/// Whether `bytes` start with the component preamble.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(&COMPONENT_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_module() {
        assert!(encode_component(b"not wasm").is_err());
        assert!(encode_component(&COMPONENT_MAGIC).is_err());
    }
}
