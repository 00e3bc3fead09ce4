//! Kairos core: the task model, the partitioner, the clock, the store contract with its
//! embedded implementation, and the conformance suite every store must pass.

pub mod clock;
pub mod conformance;
pub mod embedded;
pub mod fencing;
pub mod model;
pub mod partition;
pub mod store;
