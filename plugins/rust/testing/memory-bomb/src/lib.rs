//! Test plugin for the host's tests: allocates and touches 1 MiB chunks until an allocation
//! fails. The host's memory cap refuses `memory.grow`, the allocator reports the failure and the
//! guest traps; the host counts it as a memory-limit failure.

#![no_std]

extern crate alloc;

use alloc::vec::Vec;

/// Bytes per allocation.
const CHUNK: usize = 1 << 20;
/// Every page of a chunk is written, so the memory is really committed.
const PAGE: usize = 4096;

sluice_plugin::test_router!(|request| {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK);
        chunk.resize(CHUNK, 0);
        for offset in (0..CHUNK).step_by(PAGE) {
            chunk[offset] = chunks.len() as u8 | 1;
        }
        // Keep the allocations and writes: nothing reads them.
        chunks.push(core::hint::black_box(chunk));
        core::hint::black_box(&mut chunks);
    }
});
