"""Reconciliation with the providers' own bills (issue 28): pull a day's usage and cost reports
from OpenAI's and Anthropic's admin APIs (`pull`, `fetch`, one parser per provider), normalise
them into `rows.ProviderDay`, and compare them with the gateway's spend rollups (`compare`, pure).
`settings` parses the `reconcile:` section; `store` keeps each pulled day beside the rollups.
See docs/reconciliation.md."""
