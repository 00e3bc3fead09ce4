//! The shared store conformance suite, run against the embedded (fjall) store, one fresh
//! database in its own temporary directory per case.

use kairos_embedded::{EmbeddedOptions, EmbeddedStore};

kairos_conformance::store_conformance_tests!(|| async {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("store"), EmbeddedOptions::default())
        .expect("open embedded store");
    (store, dir)
});
