"""Generator backends (transformers, vLLM, OpenAI-compatible HTTP), rerankers and encoders."""
