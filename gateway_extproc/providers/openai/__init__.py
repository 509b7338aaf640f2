"""OpenAI's wire format: Chat Completions, Responses, legacy Completions and Embeddings."""
