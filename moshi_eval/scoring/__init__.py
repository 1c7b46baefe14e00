"""What every evaluation of a Moshi LM shares: teacher-forced sequence scoring and everything around it.

- `scorer`: exact per-frame, per-codebook losses of sequences, per step (`StepScorer`) or many steps per call
  (`ChunkedScorer`), both batched with per-slot resets; `ModelShape` (the LM's streams), `token_cross_entropy`;
  `text_policy`: what the text stream gets while audio is scored (greedy, sample, pad, zero).
- `evaluation_run`: `EvaluationRun`, what every evaluation's run does alike around the scorer (resuming from the
  store, encoding with the codes cache, scoring with a progress bar, gathering the ranks' records).
- `eval_mode`: modules in eval mode for a block, each given back in the mode it was in.
- `sources`, `records`: the sequences to score (audio files or a codes file) and their scores.
- `audio`, `encoding`, `codes_cache`, `prepare`: reading and resampling audio, Mimi encoding with a shared codes cache,
  turning sources into scoring items.
- `models`: the scored model as the results describe it; `fingerprint`: stable identities of weights and files. The
  model is named, loaded and put on a device by `moshi.models.model_flags`, as in every command.
- `files`, `store`: atomic result files and per-sequence records for resuming; `distributed`, `rank_report`: sharding
  over `torchrun` ranks; `sanity`: non-finite and worse-than-uniform losses.
- `checked_files`, `output_lock`: cache entries and records read back only when they hold what they claim (else
  reported and recomputed); one run per output (a lock file next to it).
- `checked_settings`: the base of the settings dataclasses (checked when built and when copied with changes);
  `codebook_weights`: per-codebook loss weights, read from a list and checked against the codebooks scored.
- `settings_file`, `notes`: settings files (a training YAML's section, e.g. `paper_metrics:`), unknown keys with
  suggestions, notes printed on stderr or warned as `UserWarning`s.
- `cli_errors`, `invocation`, `preflight`: command lines end with one `error:` line per expected failure (exit 2) or,
  on Ctrl-C, what is kept and the command that resumes (exit 130); paths, model files and a path-like `--hf-repo` are
  checked before any work. `cli_arguments`: the codes-cache flags, and the model request of an evaluation's
  settings.

Benchmarks (`moshi_eval.librilight`, `moshi_eval.paper_metrics`) build on these pieces.
"""
