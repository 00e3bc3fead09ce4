//! Kairos core: the task model, the partitioner, the clock, the ownership (lease) contract, the
//! store contract with its embedded and in-memory implementations, and the conformance suite
//! every store must pass.

pub mod clock;
pub mod conformance;
pub mod embedded;
pub mod mem;
pub mod model;
pub mod ownership;
pub mod partition;
pub mod store;
