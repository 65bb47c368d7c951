"""The request and response bodies of the HTTP API, one module per API: `control`, `monitor`,
`openai`, and `lifecycle` (the probes and the drain). Pydantic only — no FastAPI, no Ray — so
HTTP clients import them without the server's dependencies."""
