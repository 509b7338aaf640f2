"""Request and token rate limits, checked in the budgets' own reservation script.

* `model` - the validated configuration values and what a reservation reports about them;
* `settings` - parsing the `rate_limits:` section (the budgets' scope/match grammar);
* `report` - the 429, the `x-ratelimit-*` headers and the audit fields (pure);
* `wire` - the reserve script's arguments and reply for each rate limit (pure).

The Redis side lives with the budgets (`budgets/store.py`, `budgets/lua/`): a rate limit is one
more kind of charge in the same atomic reserve, corrected by the same settle / release / reap.
"""
