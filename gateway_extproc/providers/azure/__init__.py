"""Azure OpenAI: OpenAI's wire format (`schema: openai`, metered by `providers/openai/`) at
Azure's paths, with a deployment name where OpenAI has a model, and Azure's credentials.

* `settings` - a provider's `azure:` block: which API (v1 or deployment paths), the api-version,
  the gateway model -> deployment map, Entra ID instead of a key;
* `paths` - the upstream path of a request, and a client's Azure path parsed (inbound);
* `entra` - Entra ID access tokens (azure-identity), cached and refreshed off the request path.
"""
