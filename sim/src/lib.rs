//! nymstr-sim: a deterministic discrete-event simulator that runs the real node and client
//! cores over a model of the Nym mixnet, with faults, and checks invariants.
//!
//! Architecture invariant: everything that influences a run comes from the scenario and
//! its seed; the only wall clock read is the report's `wall_time_ms`.

pub mod fed_model;
pub mod floods;
pub mod groups;
pub mod mixnet;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod world;

pub use report::Report;
pub use scenario::Scenario;

/// Runs a scenario to completion.
pub fn run(scenario: Scenario) -> Report {
    world::World::new(scenario).run()
}
