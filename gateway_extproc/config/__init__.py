"""The gateway's configuration: parsed once, every problem reported with its path.

* `gateway` - `GatewayConfig`, the whole file (each concern's section parsed by its own
  `settings` module); `default_config.yaml` - the built-in defaults;
* `reader` - typed readers of a mapping; `providers`, `metering` - those sections;
* `upstreams` - providers resolved into addresses, TLS and credentials;
* `namespaces` - the static-token / JWT-service cross-check.
"""
