#!/usr/bin/env bash
# Specialist Labs: set up the environment (once), then open the labs or run the tests.
#
#   bash scripts/course.sh lab      set up if needed, then open the course in JupyterLab
#   bash scripts/course.sh test     set up if needed, then run the test suite (what CI runs; extra
#                                   arguments go to pytest, e.g. `test -m "not notebook"` for the quick loop)
#   bash scripts/course.sh setup    only set up   [--cpu | --gpu to choose the torch build]
#
# Which torch: on Linux without an NVIDIA GPU, PyPI's default torch is a multi-GB CUDA build, so we install
# the CPU build (torch==2.13.0+cpu from the PyTorch CPU index). With an NVIDIA GPU (nvidia-smi works), or on
# macOS/Windows, the ordinary `pip install torch` is right. SPECIALIST_LABS_TORCH=cpu|cuda overrides.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPECIALIST_LABS_VENV:-$ROOT/.venv}"
CPU_TORCH="torch==2.13.0+cpu"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
cmd="${1:-lab}"
shift || true
choice="${SPECIALIST_LABS_TORCH:-auto}"
rest=()
for arg in "$@"; do
  case "$arg" in
    --cpu) choice=cpu ;;
    --gpu) choice=cuda ;;
    *) rest+=("$arg") ;;
  esac
done

say() { printf '\033[1m[specialist-labs]\033[0m %s\n' "$*" >&2; }

find_python() {
  for py in python3.13 python3.12 python3.11 python3.10 python3 python; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  say "Python 3.10 or newer is needed (found none on PATH)."; exit 2
}

install_torch() {
  if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    return 0
  fi
  if [ "$choice" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then choice=cuda
    elif [ "$(uname -s)" = Linux ]; then choice=cpu
    else choice=default; fi
  fi
  case "$choice" in
    cpu)
      say "Installing the CPU build of torch ($CPU_TORCH): no NVIDIA GPU here, so no CUDA wheels."
      # --retries 1: where the PyTorch index is unreachable, pip falls back to local/PyPI sources quickly.
      "$VENV/bin/pip" install --retries 1 "$CPU_TORCH" --extra-index-url "$CPU_INDEX" ;;
    cuda|default)
      say "Installing torch the ordinary way (CUDA build on Linux with an NVIDIA GPU)."
      "$VENV/bin/pip" install "torch>=2.4" ;;
    *) say "SPECIALIST_LABS_TORCH must be cpu or cuda, not '$choice'"; exit 2 ;;
  esac
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "Creating a virtual environment in $VENV"
    "$(find_python)" -m venv "$VENV"
  fi
  install_torch
  if ! "$VENV/bin/python" -c 'import grader, labkit, pytest, nbval, ruff' 2>/dev/null \
     || [ "$ROOT/pyproject.toml" -nt "$VENV/.specialist-labs-installed" ]; then
    say "Installing the course (editable) with its dependencies"
    "$VENV/bin/pip" install -e "$ROOT[dev]"
    touch "$VENV/.specialist-labs-installed"
  fi
}

case "$cmd" in
  setup) setup ;;
  lab)
    setup
    say "Opening JupyterLab on labs/ - start with 00_setup.ipynb"
    cd "$ROOT" && exec "$VENV/bin/jupyter" lab labs/ "${rest[@]+"${rest[@]}"}" ;;
  test)
    setup
    cd "$ROOT"
    if [ "${#rest[@]}" -eq 0 ] && [ ! -d tests ]; then
      # A learner's copy of the course has no test suite: check that every lab notebook runs as released.
      rest=(--nbval-lax labs/)
    elif [ "${#rest[@]}" -eq 0 ]; then
      # The whole suite: two test processes, one per core, each lab's kernel session kept on one of them
      # (tests/conftest.py schedules), one thread per kernel (two spinning threads per kernel on 2 cores were 20x
      # slower).
      export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
      rest=(-n "${SPECIALIST_LABS_TEST_WORKERS:-2}" --dist load --durations=15)
    fi
    exec "$VENV/bin/python" -m pytest "${rest[@]}" ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
