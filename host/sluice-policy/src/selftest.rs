//! The self-test a plugin passes before it is activated: its world's sample inputs (see
//! [`crate::world`]), answered validly within a deadline.
//!
//! The samples cover the shapes a plugin meets in production (one candidate, several, busy and
//! idle connections, an empty window, a spike, a stream broken before and after its first
//! response), so a plugin that traps, loops, or answers out of range on ordinary input is
//! refused instead of being swapped in. This module only runs them; each world owns its own.

use std::time::Duration;

use crate::plugin::Plugin;

/// The self-test's deadline: the slot's deadline with headroom for a cold first call, since the
/// first calls fault in code and memory.
pub fn deadline(slot_deadline: Duration) -> Duration {
    (slot_deadline * 10).max(Duration::from_millis(20))
}

/// Runs the samples of the plugin's world; how many passed, or the first failure with the
/// sample that caused it.
pub fn run(plugin: &Plugin) -> Result<usize, String> {
    crate::world::self_test(plugin, deadline(plugin.limits().deadline))
}
