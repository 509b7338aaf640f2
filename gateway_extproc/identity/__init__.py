"""Who is calling: verified JWTs, static service tokens, client metadata, model policies."""
