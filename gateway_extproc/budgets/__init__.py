"""Dollar budgets that cannot be overspent: reserve the worst case atomically, settle the real cost.

* `model` - the validated configuration values; `settings` - parsing the `budgets:` section;
* `windows` - calendar and rolling window arithmetic (pure, `now` passed in);
* `matching` - which budgets (and which of their counters) apply to a request (pure);
* `store` - the Redis adapter (reserve / settle / release / checkpoint / reap), scripts in `lua/`.
"""
