"""Helpers every layer may use and that know nothing of leadership or trading: one-line
errors, configuration errors, the monotonic clock, strict number parsing, timestamps."""
