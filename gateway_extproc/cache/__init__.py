"""The exact-match response cache: settings, the pure key and replay code, the Redis store."""
