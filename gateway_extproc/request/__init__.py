"""The request phase: one ext_proc stream per request, from its headers to the upstream body.

* `processor` - the per-stream processor: identity, the phase dispatch, the stream's lifecycle;
* `stream` - the request's state, and the audit of a request the gateway answers itself;
* `admission` - the body phase's steps: parse, catalog, policy, guardrails, cache, price, budget;
* `forward` - native or translated forwarding, and the hand-off to whoever meters the response;
* `bodyparse`, `jsonshape` - the body parsed once, within structural caps, off the event loop
  when large;
* `prompt_checks`, `ratelimit_first` - guardrails, with the rate limits peeked before a large scan;
* `route` - the model's provider, its worst-case bound, the reservation and the upstream body;
* `models_api` - the gateway's own `/v1/models`.
"""
