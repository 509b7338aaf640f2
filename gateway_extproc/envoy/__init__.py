"""Envoy as the gateway runs it: the generated bootstrap and what operates the running proxy.

* `bootstrap` - the whole Envoy configuration, generated from the gateway's, assembled from:
  `listener` (the gateway listener and its connection manager), `routes`, `local_reply` (Envoy's
  own errors in the client's API format), `clusters` (each provider's and the sidecar's);
* `filters` - the ext_proc filters and the sidecar's credentials; `edge` - listener and TLS
  settings;
* `drain`, `ops` - draining and Envoy's admin interface.
"""
