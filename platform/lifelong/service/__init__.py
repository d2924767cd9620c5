"""The online service (``lifelong serve``): Ray Serve in front of a named life-long memory.

``POST /predict`` answers examples from the memory, ``POST /learn`` writes labelled examples
into it exactly once per request id, ``GET /healthz`` and ``GET /status`` report on it
(docs/design.md §8). ``protocol`` parses requests (no Ray), ``records`` keeps the durable
record of request ids, ``engine`` does the work against a ``ShardedMemory``, ``app`` is the
Serve deployment, ``launch`` starts it.
"""
