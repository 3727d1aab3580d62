"""The condition families, one module each. Conditions import only `engine.market` and
`base` here: they are pure functions of closed bars and ticks, and never touch a broker."""
