"""AWS Bedrock (InvokeModel / InvokeModelWithResponseStream for Anthropic models)."""
