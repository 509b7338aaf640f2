"""The gateway's configuration: parsed once, every problem reported with its path.

* `gateway` - `GatewayConfig`, the whole file, assembled from its sections (each concern's
  `settings` module parses its own) and checked across them;
* `document` - the built-in defaults (`default_config.yaml`) with the operator's file merged over;
* `reader` - typed readers of a mapping; `limits`, `providers`, `catalog`, `identity` (the dev
  issuer's keys), `metering`, `login`, `fallback` (with `outlier`), `keys` - those sections;
* `upstreams` - providers resolved into addresses, TLS and credentials;
* `namespaces` - the static-token / JWT-service cross-check.
"""
