"""The request phase: one ext_proc stream per request, from its headers to the upstream body.

* `processor` - the per-stream processor: identity, parse, checks, route, budget admission;
* `bodyparse`, `jsonshape` - the body parsed once, within structural caps, off the event loop
  when large;
* `prompt_checks`, `ratelimit_first` - guardrails, with the rate limits peeked before a large scan;
* `route` - the model's provider, its worst-case bound, the reservation and the upstream body;
* `models_api` - the gateway's own `/v1/models`.
"""
