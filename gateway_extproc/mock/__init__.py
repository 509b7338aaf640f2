"""Mock OpenAI/Anthropic provider: the upstream of `make run` and of every end-to-end test.

Speaks the real wire formats (the official SDKs work against it unchanged), reports
deterministic usage, records what it received (`GET /_mock/requests`) and obeys `x-mock-*`
control headers (latency, write splitting, errors, aborts, omitted usage, replay of recorded
transcripts). Modules: `controls` (header parsing), `content` (reply words, token counts),
`errors` (provider error bodies), `wire` (SSE, write plans, gzip), `openai_api`,
`responses_api`, `anthropic_api`, `replay` (pure builders); the aiohttp side: `server` (the app,
wired), `routes` (which path goes to which builder; `bedrock_routes` for Bedrock's), `handler`
(the one request handler), `auth` (key checks), `send` (writing a reply), `faults` (holds,
latency, cut connections), `recorder` (`/_mock/requests`, `/_mock/bills`), `reports` (the
organisation usage and cost report APIs over `ledger`, priced from `prices`), `settings`; `cli`,
`testing` (`running_mock()`: serve in-process on an ephemeral port).
"""

from gateway_extproc.mock.server import create_app

__all__ = ["create_app"]
