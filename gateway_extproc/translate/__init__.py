"""Translation between provider APIs, so a client keeps its SDK (docs/translation.md).

Pure functions and one incremental stream object per pair, with no ext_proc types: the request
phase, the response phase and (next) an upstream-side filter call them unchanged.
"""
