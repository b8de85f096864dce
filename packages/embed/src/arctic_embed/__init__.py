"""arctic-embed: contrastive bi-encoder training on Arctic's core (method `embed`).

One shared encoder tower embeds queries and documents (CLS, mean or last-token pooling, L2
normalised, optional Matryoshka truncation); InfoNCE at a temperature over the embeddings of
every rank trains it. See docs/embed.md.
"""

__version__ = "0.1.0"
