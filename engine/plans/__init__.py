"""Conditional trade plans: the store (status compare-and-set), the evaluator (index,
snapshot, three-valued logic) and the condition families (`conditions/`)."""
