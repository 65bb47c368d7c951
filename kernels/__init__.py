"""Attention kernels for long context (`hermesflow.kernels`).

Each kernel comes as a PyTorch reference and, where it pays, a Triton kernel, behind one function
that picks Triton on CUDA and the reference on the CPU. The modules here depend on torch, numpy,
pydantic and triton only: the LLM backend imports them, never the other way round.

* `sparse_patterns` — the index of a sparse prefill: which keys each query head attends to, in
  MInference's three patterns (A-shape, vertical-slash, block-sparse).
* `attention_reference` — exact attention over such an index, the log-sum-exp that merges partial
  attentions, and the recall of an index (the share of softmax mass it keeps).
* `sparse_estimate` — the online estimation of an index from the prompt's own queries and keys.
* `head_weights` — one head's causal softmax and what an index keeps of it (recall and cost).
* `pattern_search` — MInference's offline search of each head's pattern and budget.
* `flash_tiles`, `block_sparse_attention`, `vertical_slash_attention` — the Triton kernels.
* `sparse_prefill` — one layer's sparse prefill, and the per-model configuration.
* `retrieval_index`, `retrieval_attention`, `retrieval_recall` — RetrievalAttention: the
  attention-aware index over the keys, one layer's decoding with it, and its measured recall.
"""
