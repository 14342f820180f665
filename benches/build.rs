//! Marks which service tests run (see `build/test_services.rs`).
include!("../build/test_services.rs");
