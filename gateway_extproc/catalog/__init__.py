"""The model catalog and prices: `catalog.yaml` (shipped) merged with operator files.

* `models` - `Catalog` (loading, lookups); `entry` - `ModelEntry`, one model;
* `merge` - merging and checking the documents; `prices` - reading a price table;
* `pricing` - `Price` and integer micro-dollar arithmetic (no floats).
"""
