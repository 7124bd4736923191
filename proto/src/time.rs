//! Time as the protocol counts it.

/// Microseconds since the Unix epoch (virtual in the simulator). Every core takes `now`
/// in this unit from its host; durations in configs and on the wire are `_us` too.
pub type TimeUs = u64;
