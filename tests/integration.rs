//! The one integration-test binary: every file of tests/ is a module of it, sharing
//! `common` (the server builder, the HTTP client, the waits). Run one file's tests with
//! `cargo test --test integration pool::`, or one test by (part of) its name.
//!
//! Cargo.toml sets `autotests = false`, so a file of tests/ that is not declared here is not
//! compiled at all: `every_test_file_is_a_module` fails until it is.

mod common;

mod chaos;
mod completions;
mod config;
mod deploy;
mod docs;
mod example;
mod front_door;
mod handlers;
mod isprime;
mod lifecycle;
mod ls;
mod memory;
mod openapi;
mod ops;
mod pool;
mod prime;
mod server;

/// Every `tests/*.rs` but this one is declared above: with `autotests = false`, a file that is
/// not would never run, and its tests would read as passing.
#[test]
fn every_test_file_is_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let this = std::fs::read_to_string(dir.join("integration.rs")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(module) = name.strip_suffix(".rs") else {
            continue;
        };
        assert!(
            module == "integration" || this.contains(&format!("\nmod {module};\n")),
            "tests/{name} is not a module of tests/integration.rs, so it never runs"
        );
    }
}
