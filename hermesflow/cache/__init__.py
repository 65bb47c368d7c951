"""IGTCache: one data cache over object storage for every AI workload (issue 15).

Built so far (docs/cache.md): the replacement layer that every tier and every baseline shares,
and the access-pattern detection that IGTCache's own policies will read.

- `replacement`: the contract (`ReplacementCache`), its outcomes and statistics;
- `lru`, `s3fifo`, `sieve`, `arc`, `belady`: the baselines' policies, one module each;
- `registry`: the policies by name (`CachePolicyKind`) and `make_cache`;
- `trace`: trace records and their exact replay through a policy;
- `stream_tree`: the AccessStreamTree (recent accesses by path, attributed to streams);
- `pattern_tests`: the hypothesis tests that classify a stream, and its re-testing;
- `filesystem` (with `options`, `blocks`, `origin`, `tier`, `memory_tier`, `disk_tier`,
  `disk_index`, `tiered`): the fsspec filesystem `igtcache` and its memory and disk tiers.
"""
