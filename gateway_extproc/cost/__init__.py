"""What a request may cost and what an unreported ending is charged. Pure: no I/O.

* `shape` - what of a request body bounds its cost, whatever the model;
* `bounds` - a shape meets a model's catalog entry: the worst case a budget reserves;
* `endings` - the upper bound charged when the provider's usage is never read.
"""
