"""What every evaluation of a Moshi LM shares: teacher-forced sequence scoring and everything around it.

- `scorer`: exact per-frame, per-codebook losses of sequences, per step (`StepScorer`) or many steps per call
  (`ChunkedScorer`), both batched with per-slot resets.
- `data`: the sequences to score, audio read in bounded memory, Mimi encoding through the shared codes cache.
- `run`: one evaluation's run (`EvaluationRun`): its records and their weighted means, resuming, sharding over
  `torchrun` ranks, one run per output.
- `model`: the scored model as the results describe it.
- `files`: atomic and checked files, identities of files and weights.
- `settings`: the settings base, text policies, codebook weights, settings files.
- `cli`: what the command lines share: flags, checks before work, one `error:` line per failure, Ctrl-C.
- `errors`: every error, warning and note.

Each benchmark package (beside this one) builds on these modules; none of them knows a benchmark.
"""
