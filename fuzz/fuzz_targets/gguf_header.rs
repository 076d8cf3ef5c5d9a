//! Fuzzes the GGUF container parser: any bytes must give a header or an
//! error, never a panic, a hang or a huge allocation.
//!
//! The parser is compiled in directly (it depends only on std and
//! thiserror), so fuzzing does not build Burn.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/ember-model/src/gguf/reader.rs"]
mod reader;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(header) = reader::parse(data) {
        // Every tensor range the parser accepts must lie inside the input.
        for info in header.tensors.values() {
            assert!(info.start + info.len <= data.len());
        }
    }
});
