"""`make bench`: the gateway's data-plane cost against plain Envoy and a no-op Python ext_proc.

Modules: `upstream` (the instant local upstream, its own process), `noop` (the no-op ext_proc,
its own process), `setups` (starting the three setups on ephemeral ports), `setup_configs`
(their config documents, Envoy bootstraps and identity), `procs` (the processes the bench
starts), `load` (wrk, the raw-socket stream timer, CPU and counter samples), `rows` (a row,
the table of them), `report` (ratios and the result document), `targets` (PASS/FAIL),
`report_text` (the printed table), `run` (the whole run, `python -m bench`).
"""
