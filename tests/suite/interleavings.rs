//! Random interleavings of callers, operators, provider answers and store failures (proptest), checked against the invariants after every step.
