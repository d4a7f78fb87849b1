#!/usr/bin/env bash
# Create benchmarks/.venv-trl112: TRL 1.12.0 (the last release with PPOTrainer) beside the study's
# own environment, for `python benchmarks/ppo_vs_trl.py`. torch is installed first and pinned by
# benchmarks/trl112-constraints.txt, so nothing installed after it can bring a newer or CUDA build;
# pip resolves `torch==2.13.0` to the local CPU wheel when one is on the find-links path (as it
# does for the main .venv; see the README).
#
#   bash benchmarks/setup_trl112.sh            # PYTHON=python3.11 to choose the interpreter
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV=.venv-trl112
PIP=(-m pip install --quiet --disable-pip-version-check -c trl112-constraints.txt)
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" "${PIP[@]}" torch==2.13.0
"$VENV/bin/python" "${PIP[@]}" -r trl112-requirements.txt
TRL_EXPERIMENTAL_SILENCE=1 "$VENV/bin/python" - <<'PY'
import torch, transformers, trl
from trl.experimental.ppo import PPOTrainer  # noqa: F401  (moved here from trl.PPOTrainer)

assert torch.__version__.startswith("2.13.0"), torch.__version__
assert not torch.version.cuda, (
    f"a CUDA build of torch ({torch.version.cuda}) got in: put the CPU build of torch 2.13.0 "
    "on a find-links path and run this again (see the README)"
)
print(f"benchmarks/.venv-trl112: torch {torch.__version__}, "
      f"transformers {transformers.__version__}, trl {trl.__version__}")
PY
