"""Provider wire formats: one package per provider schema, behind one small interface.

* `base` - the interface (`StreamHandler`, `JsonMeterResult`) and defensive field readers;
* `openai/`, `anthropic/` - usage from JSON and from each API's stream, cached-response replay;
* `metering` - picks a provider's handler by API and drives it (`StreamMeter`, `usage_from_json`);
* `sse` - the incremental SSE decoder both providers' streams use;
* `inbound` - a request body parsed into the common `ParsedRequest`, and the upstream body;
* `forwarding` - which client headers reach a provider.
"""
