"""Google's Gemini API (generativelanguage.googleapis.com): `models/{model}:generateContent` and
`:streamGenerateContent?alt=sse`, the model in the path, usage in `usageMetadata`."""
