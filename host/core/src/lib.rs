//! Kairos core: the contracts every other crate builds on — the task model, the partitioner,
//! the clock, the ownership (lease) contract and the store trait — and [`mem::MemStore`], an
//! in-memory reference store used by the simulation. The backends (`kairos-embedded`,
//! `kairos-cassandra`) implement the store trait and pass the suites in `kairos-conformance`.

pub mod clock;
pub mod ids;
pub mod mem;
pub mod model;
pub mod ownership;
pub mod partition;
pub mod store;
