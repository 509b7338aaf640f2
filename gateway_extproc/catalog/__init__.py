"""The model catalog and prices: `catalog.yaml` (shipped) merged with operator files.

* `models` - `Catalog` and `ModelEntry`; `prices` - reading a price table;
* `pricing` - `Price` and integer micro-dollar arithmetic (no floats).
"""
