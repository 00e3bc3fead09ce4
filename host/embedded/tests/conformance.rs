//! The shared store conformance suite, run against the embedded (redb) store, one fresh
//! database file in its own temporary directory per case.

use kairos_embedded::{EmbeddedOptions, EmbeddedStore};

kairos_conformance::store_conformance_tests!(|| async {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("kairos.redb"), EmbeddedOptions::default())
        .expect("open embedded store");
    (store, dir)
});
