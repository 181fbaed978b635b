//! Regression tests for one owner per connection (issue: lifecycle operations that cannot race a refresh), on the memory store in paused time.
