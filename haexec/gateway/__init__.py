"""The fenced MT5 gateway: one process beside one terminal, the only code that talks to it.

`settings` (configuration), `promise` (the highest accepted epoch, durable before an answer),
`journal` (write-ahead rows around every order_send) and `prune` (its pruning), `service`
(what a call does), `app` (the HTTP RPC) and `market` (its read-only market data routes),
`terminal` (losing and regaining the terminal), `metrics`, `main` (`haexec gateway`). The replica's side is
engine/brokers/gateway.py; the JSON both speak is engine/brokers/gateway_wire.py.
"""
