"""Who may talk to the sidecar: the credential Envoy sends on every ext_proc stream (`caller`),
the MAC on the request state handed to the observer (`seal`), TLS for a sidecar that runs apart
from its Envoy, and where those secrets come from (`settings`). README "Who may talk to the
sidecar" and docs/security.md."""
