"""OpenAI-compatible HTTP server around an Engine, for exactly one verified bundle.

`python -m serving --bundle artifacts/bundle` verifies the bundle, builds the engine, replays
the golden outputs (the parity probe) and only then serves. Modules: `protocol` (request
bodies), `responses` (response bodies), `app` (routes, middleware, lifespan), `handlers` and
`generation` (serving logic), `batcher` (the engine loop), `continuous` (continuous batching),
`probe` (parity), `text` (incremental decoding), `logprobs` (log-probs and their OpenAI shapes),
`metrics`, `logs`, `state`, `server` (HTTP thread, draining), `errors`; `replay` (every
evaluated item against a live server, token for token: `python -m serving.replay`).
"""
