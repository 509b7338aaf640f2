"""The response phase: meter what the provider answered, price it, settle, audit.

* `observer` - one per response (observe mode: its own ext_proc stream; synchronous: in-process);
* `body` - the response body as it passes (a stream meter or a bounded JSON body, `json_body`;
  `inflate` for a provider that compresses anyway);
* `reported_tier`, `model_mismatch` - pricing by what the provider reports it served;
* `audit` - the audit record and telemetry of a finished request.

Usage extraction itself is the providers' (`providers/`): the response cache meters with it too.
"""
