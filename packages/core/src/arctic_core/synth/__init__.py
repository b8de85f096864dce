"""Synthetic data: `arctic data generate` answers prompts, `arctic data clean` filters the result.

- `prompts`: prompts from any core source (chat turns, a Jinja template over columns, token chunks).
- `local`: a local model answers (HF `generate` with its KV cache, or vLLM on CUDA).
- `endpoint`: any OpenAI-compatible chat completions server answers (bounded concurrency, retries
  honouring Retry-After, token and cost accounting), every answer kept in a request `cache`.
- `generate`: shards written aside and renamed when complete; rows as chat messages, preference
  pairs or pre-tokenised rows. `judge`: an LLM scores answers with a rubric (ranking, filtering).
- `clean`: exact and near-duplicate removal, length and language filters, decontamination, the
  judge and user filters, with a report of what each step removed.

Nothing here is imported by `arctic --help`; torch and the `openai` client load on first use.
"""
