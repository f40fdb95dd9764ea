//! Matching a compiled component to its world: which world its exports point to, whether that is
//! the slot it was meant for, and whether its imports and export types fit. Every refusal says
//! what the world expects and what the component has.
//!
//! This module only binds; running the bound component is [`crate::plugin`]'s job.

use std::sync::Arc;

use sluice_config::SlotKind;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};

use crate::PolicyError;
use crate::host::{HostState, PluginEnv};
use crate::plugin::{Limits, Plugin, PluginInfo};

/// The component's import and export names, and the world its exports point to.
pub(crate) struct Shape {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub world: Option<SlotKind>,
}

/// Reads the component's imports and exports and finds the world it targets.
pub(crate) fn shape(engine: &wasmtime::Engine, component: &Component) -> Shape {
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let exports: Vec<(String, bool)> = ty
        .exports(engine)
        .map(|(name, item)| {
            (
                name.to_owned(),
                matches!(item.ty, ComponentItem::ComponentFunc(_)),
            )
        })
        .collect();
    let functions: Vec<&str> = exports
        .iter()
        .filter(|(_, func)| *func)
        .map(|(name, _)| name.as_str())
        .collect();
    let world = super::targeted_by(&functions);
    Shape {
        imports,
        exports: exports.into_iter().map(|(name, _)| name).collect(),
        world,
    }
}

/// The world `shape` targets, checked against the slot it was `expected` for.
fn world_of(shape: &Shape, expected: Option<SlotKind>) -> Result<SlotKind, PolicyError> {
    let listed = |names: &[String]| {
        if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        }
    };
    match (shape.world, expected) {
        (Some(world), Some(expected)) if world != expected => {
            Err(PolicyError::WrongWorld(format!(
                "it targets the {world} world (exports `{}`), not {expected}",
                super::info(world).export
            )))
        }
        (Some(world), _) => Ok(world),
        (None, Some(expected)) => {
            let wanted = super::info(expected);
            Err(PolicyError::WrongWorld(format!(
                "missing export `{}` required by the {expected} world (`{}`); it exports {}",
                wanted.export,
                wanted.signature,
                listed(&shape.exports)
            )))
        }
        (None, None) => {
            let mut known: Vec<String> = SlotKind::ALL
                .iter()
                .map(|kind| format!("`{}` ({kind} world)", super::info(*kind).export))
                .collect();
            let last = known.pop().unwrap_or_default();
            Err(PolicyError::WrongWorld(format!(
                "it exports none of {} or {last}; it exports {}",
                known.join(", "),
                listed(&shape.exports)
            )))
        }
    }
}

/// Binds a compiled component to its world (type-checking imports and exports) and starts it
/// as a [`Plugin`], instantiated once to prove it starts.
pub(crate) fn bind_plugin(
    engine: &wasmtime::Engine,
    linker: &Linker<HostState>,
    component: &Component,
    expected: Option<SlotKind>,
    mut info: PluginInfo,
    env: Arc<PluginEnv>,
    limits: Limits,
) -> Result<Plugin, PolicyError> {
    let shape = shape(engine, component);
    let world = world_of(&shape, expected)?;
    let described = super::info(world);
    let pre = linker.instantiate_pre(component).map_err(|e| {
        let extra: String = described
            .extra_imports
            .iter()
            .map(|name| format!(", {name}"))
            .collect();
        PolicyError::WrongWorld(format!(
            "its imports do not match what Sluice provides to the {world} world \
             (sluice:policy@0.3.0 log, clock, config{extra}, and WASI): {e:#}"
        ))
    })?;
    let bound = super::bind(world, pre).map_err(|e| {
        PolicyError::WrongWorld(format!(
            "its `{}` export does not match the {world} world (`{}`): {e:#}",
            described.export, described.signature
        ))
    })?;
    info.world = world;
    info.uses_wasi = shape.imports.iter().any(|name| name.starts_with("wasi:"));
    info.imports = shape.imports;
    info.exports = shape.exports;
    Plugin::start(info, bound, engine, env, limits)
}
