"""IGTCache: one data cache over object storage for every AI workload (issue 15).

Built so far, the replacement layer that every tier and every baseline shares:

- `replacement`: the contract (`ReplacementCache`), its outcomes and statistics;
- `lru`, `s3fifo`, `sieve`, `arc`, `belady`: the baselines' policies, one module each;
- `registry`: the policies by name (`CachePolicyKind`) and `make_cache`;
- `trace`: trace records and their exact replay through a policy.
"""
