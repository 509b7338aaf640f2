"""Anthropic's wire format: the Messages API."""
