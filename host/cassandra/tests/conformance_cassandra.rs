//! The shared store conformance suite against a real Cassandra (127.0.0.1:9042; run
//! `scripts/services up cassandra` first), one fresh keyspace per case, dropped afterwards.

mod common;

kairos_conformance::store_conformance_tests!(common::fresh_store);
