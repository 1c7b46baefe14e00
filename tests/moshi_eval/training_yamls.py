"""Training YAML files of our own with the structure and keys of our users' files (moshi-finetune training configs
with a `paper_metrics:` section next to training keys and a `ttt:` section), one per kind of LibriLight selection.

`{audio_dir}` and `{other_dir}` are filled in by the tests; each text names the book it selects in `BOOK_OF`.
"""

from __future__ import annotations

from pathlib import Path

TRAINING_HEAD = """\
data:
  train_data: {other_dir}/train.jsonl
  shuffle: true
ttt:
  enable: true
  layers: "29,30,31"
  base_lr: 0.1
  mini_batch_size: 16
moshi_paths:
  hf_repo_id: "kyutai/moshiko-pytorch-bf16"
full_finetuning: false
lora:
  enable: true
  rank: 64
  scaling: 2.
"""

TRAINING_TAIL = """\
first_codebook_weight_multiplier: 100.
text_padding_weight: .5
duration_sec: 120
batch_size: 2
max_steps: 500
gradient_checkpointing: true
optim:
  lr: 2e-4
  weight_decay: 0.1
seed: 7
log_freq: 5
eval_freq: 25
do_eval: true
do_ckpt: false
ckpt_freq: 100
save_adapters: true
run_dir: {other_dir}/run
wandb:
  project: our-project
  offline: true
"""

OTHER_METRICS = """\
  paper_metrics_eval: true
  paper_metrics_freq: 25
  paper_metrics_use_silence: true
  paper_metrics_use_user_stream: false
  sblimp_audio_dir: {other_dir}/sblimp/audio
  sblimp_gold_csv: {other_dir}/sblimp/gold.csv
  sblimp_max_pairs: 12
  swuggy_audio_dir: {other_dir}/swuggy/audio
  swuggy_gold_csv: {other_dir}/swuggy/gold.csv
  swuggy_max_pairs: 12
  tstory_audio_dir: {other_dir}/tsc/
  tstory_max_pairs: 12
  sstory_audio_dir: {other_dir}/ssc/
  sstory_max_pairs: 12
"""

SECTIONS = {
    "single_book_named": """\
  librilight_audio_dir: {other_dir}/librilight/medium/
  librilight_evaluation_mode: single_book
  librilight_speaker_id: "100"
  librilight_book_name: "emerald_city_librivox_64kb_mp3"
  librilight_max_chapters: 3
  librilight_num_sequences: 1
  sblimp_stream_config: moshi_silence
  swuggy_stream_config: moshi_silence
  ttt_fig5_enable: false
  ttt_fig5_max_T: 2048
  ttt_fig5_layers: [29, 30, 31]
  ttt_fig5_smooth: 10
""",
    "single_book_other_named": """\
  librilight_audio_dir: {other_dir}/librilight/medium/
  librilight_evaluation_mode: single_book
  librilight_speaker_id: "200"
  librilight_book_name: "second_book_64kb_mp3"
  librilight_max_chapters: 4
  librilight_num_sequences: 1
""",
    "single_book_default": """\
  librilight_audio_dir: {other_dir}/librilight/medium/
  librilight_evaluation_mode: single_book
  librilight_max_chapters: 1
  librilight_num_sequences: 1
""",
    "pre_concatenated": """\
  save_results_json: true
  results_dir: "./evaluation_results"
  ttt_fig5_enable: true
  ttt_fig5_max_T: 2048
  ttt_fig5_layers: [29, 30, 31]
  ttt_fig5_smooth: 10
  librilight_evaluation_mode: pre_concatenated
  librilight_concatenated_dir: {other_dir}/librilight_1hour_sequences
  librilight_max_files: 1
  librilight_max_tokens: 3000
""",
    "no_librilight_keys": "",
    "streaming_section": """\
  librilight_streaming:
    enabled: true
    memory_check: true
    max_sequence_length: 24000
    cache_clear_interval: 3000
  use_silence_codes: true
""",
}

OLD_DEFAULT_BOOK = "100/emerald_city_librivox_64kb_mp3"
BOOK_OF = {name: OLD_DEFAULT_BOOK for name in SECTIONS} | {"single_book_other_named": "200/second_book_64kb_mp3",
                                                          "pre_concatenated": None}


def training_yaml(kind: str, other_dir: Path) -> str:
    """A training file with the `kind` of LibriLight keys in its paper_metrics section."""
    section = OTHER_METRICS + SECTIONS[kind]
    text = TRAINING_HEAD + "paper_metrics:\n" + section + TRAINING_TAIL
    return text.format(other_dir=other_dir)
