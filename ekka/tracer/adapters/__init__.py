"""One adapter module per framework, each importing its framework lazily: `vllm` (and
`vllm_replay`) run in the target's process, `transformers` (the reference) in the parent's."""
