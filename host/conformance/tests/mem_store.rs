//! The shared store conformance suite, run against the in-memory store, one fresh store per
//! case.

kairos_conformance::store_conformance_tests!(|| async { (kairos_core::mem::MemStore::new(), ()) });
