"""Envoy as the gateway runs it: the generated bootstrap and what operates the running proxy.

* `bootstrap` - the whole Envoy configuration, generated from the gateway's;
* `filters` - the ext_proc filters and the sidecar cluster; `edge` - listener and TLS settings;
* `drain`, `ops` - draining and Envoy's admin interface.
"""
