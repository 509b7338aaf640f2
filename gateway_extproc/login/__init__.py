"""People and agents get gateway tokens from the company's IdP: `gatewayctl login` (RFC 8628
device authorization grant through Authlib), `token --print` (a credential helper that refreshes
before expiry), `logout` (revokes, forgets) and `env` (the SDKs' variables).

* `document` - the gateway's public `/.well-known/llm-gateway` and the IdP's discovery;
* `device` - the device grant: polling pace (`Pacer`, pure) and the flow;
* `store` - the credentials file: owner-only, atomic, locked, one entry per gateway;
* `credential` - a fresh credential: the refresh decision (pure) and the refresh;
* `commands` - the CLI commands.
"""
