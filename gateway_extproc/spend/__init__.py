"""Spend reports: usage rollups written by the settle path, read by the admin API."""
