"""Plain utilities with no knowledge of runs or AWS: the clock (the only reader of the
wall clock), durations (checked, parsed, printed), ids, and JSON for stored values."""
