"""What every evaluation of a Moshi LM shares: teacher-forced sequence scoring and everything around it.

- `scorer`: exact per-frame, per-codebook losses of sequences, per step (`StepScorer`) or many steps per call
  (`ChunkedScorer`), both batched with per-slot resets; `ModelShape` (the LM's streams), `token_cross_entropy`;
  `text_policy`: what the text stream gets while audio is scored (greedy, sample, pad, zero).
- `sources`, `records`: the sequences to score (audio files or a codes file) and their scores.
- `audio`, `encoding`, `codes_cache`, `prepare`: reading and resampling audio, Mimi encoding with a shared codes cache,
  turning sources into scoring items.
- `models`: loading the LM and Mimi from command-line flags; `fingerprint`: stable identities of weights and files.
- `files`, `store`: atomic result files and per-sequence records for resuming; `distributed`, `rank_report`: sharding
  over `torchrun` ranks; `sanity`: non-finite and worse-than-uniform losses.

Benchmarks (`moshi_eval.librilight`, `moshi_eval.paper_metrics`) build on these pieces.
"""
