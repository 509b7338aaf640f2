"""Google Vertex AI as an upstream: Gemini (publishers/google) and Claude (publishers/anthropic,
rawPredict) behind one provider, authenticated with OAuth2 access tokens from google-auth."""
