#!/usr/bin/env bash
# Specialist Labs: set up the environment (once), then open the labs or run the tests.
# `bash scripts/course.sh --help` lists the commands and options (the usage() text below).
#
# Which torch: on Linux without an NVIDIA GPU, PyPI's default torch is a multi-GB CUDA build, so we install
# the CPU build (torch==2.13.0+cpu from the PyTorch CPU index). With an NVIDIA GPU (nvidia-smi works), or on
# macOS/Windows, the ordinary `pip install torch` is right. SPECIALIST_LABS_TORCH=cpu|cuda overrides.
#
# Where learners are: as root (a container) `lab` adds --allow-root; without a display (Linux with neither $DISPLAY
# nor $WAYLAND_DISPLAY) or over SSH ($SSH_CONNECTION) it adds --no-browser, and JupyterLab prints its URL with the
# token. SPECIALIST_LABS_DRY_RUN=1 prints the command `lab`/`test` would run instead of running it (and sets up
# nothing): tests/test_course_start.py uses it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPECIALIST_LABS_VENV:-$ROOT/.venv}"
CPU_TORCH="torch==2.13.0+cpu"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

usage() {
  cat <<'USAGE'
Usage: bash scripts/course.sh [COMMAND] [OPTIONS] [ARGUMENTS...]

Commands:
  lab     set up if needed, then open the course in JupyterLab (the default: no command means lab)
  test    set up if needed, then run the test suite (what CI runs)
  setup   only set up: create .venv/ and install the course and torch
  help    show this help and exit (also -h, --help)

Options:
  --cpu, --gpu   which torch build to install (default: the CPU build on Linux without an NVIDIA GPU)
  --port N       lab: serve JupyterLab on port N (default 8888, or the next free one)

Other arguments go to `jupyter lab` (lab) or to pytest (test), for example:
  bash scripts/course.sh test -m "not notebook"    the quick tests, no kernels
  bash scripts/course.sh lab --port 8890 --no-browser

lab adds --allow-root when run as root (e.g. in a container), and --no-browser on a machine without a display
or over SSH: then open the URL with its token that JupyterLab prints (http://127.0.0.1:PORT/lab?token=...).
USAGE
}

say() { printf '\033[1m[specialist-labs]\033[0m %s\n' "$*" >&2; }
usage_error() { say "$*"; usage >&2; exit 2; }

case "${1:-}" in
  -h|--help|help) usage; exit 0 ;;
  ""|-*) cmd=lab ;;  # no command, or options only: lab is the default
  *) cmd="$1"; shift ;;
esac
case "$cmd" in
  lab|test|setup) ;;
  *) usage_error "Unknown command '$cmd' (the commands are lab, test, setup and help)." ;;
esac

choice="${SPECIALIST_LABS_TORCH:-auto}"
port=""
rest=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --cpu) choice=cpu ;;
    --gpu) choice=cuda ;;
    --port|--port=*)
      if [ "$1" = --port ]; then
        [ "$#" -ge 2 ] || usage_error "--port needs a number, e.g. --port 8890"
        port="$2"; shift
      else
        port="${1#--port=}"
      fi
      [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] \
        || usage_error "--port needs a port number from 1 to 65535, not '$port'"
      [ "$cmd" = lab ] || usage_error "--port is an option of lab, not of $cmd" ;;
    *) rest+=("$1") ;;
  esac
  shift
done

dry_run() { [ -n "${SPECIALIST_LABS_DRY_RUN:-}" ] && [ "${SPECIALIST_LABS_DRY_RUN}" != 0 ]; }

# Run a command, or with SPECIALIST_LABS_DRY_RUN=1 print it (shell-quoted, one line on stdout) instead.
run() {
  if dry_run; then
    printf '%q' "$1"; shift
    [ "$#" -eq 0 ] || printf ' %q' "$@"
    printf '\n'
    exit 0
  fi
  exec "$@"
}

has_arg() {  # has_arg NAME: NAME (or NAME=...) is among the arguments the learner passed on
  local arg
  for arg in "${rest[@]+"${rest[@]}"}"; do
    case "$arg" in "$1"|"$1"=*) return 0 ;; esac
  done
  return 1
}

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
  if dry_run; then
    return 0
  fi
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

lab() {
  local args=(labs/) shown_port="${port:-8888}" headless=""
  if [ "$(id -u)" = 0 ] && ! has_arg --allow-root; then
    say "Running as root (in a container?): adding --allow-root, without which JupyterLab refuses to start."
    args+=(--allow-root)
  fi
  if [ -n "${SSH_CONNECTION:-}" ]; then
    headless="you are logged in over SSH"
  elif [ "$(uname -s)" = Linux ] && [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
    headless="no display here (\$DISPLAY and \$WAYLAND_DISPLAY are unset)"
  fi
  if [ -n "$headless" ] && ! has_arg --no-browser && ! has_arg --ServerApp.open_browser; then
    say "Not opening a browser: $headless. Open the URL with its token that JupyterLab prints below" \
        "(http://127.0.0.1:$shown_port/lab?token=...) in a browser yourself."
    [ -z "${SSH_CONNECTION:-}" ] \
      || say "From your own computer, forward the port first: ssh -L $shown_port:localhost:$shown_port <this machine>"
    args+=(--no-browser)
  fi
  [ -z "$port" ] || args+=("--port=$port")
  say "Opening JupyterLab on labs/ - start with 00_setup.ipynb"
  cd "$ROOT"
  run "$VENV/bin/jupyter" lab "${args[@]}" "${rest[@]+"${rest[@]}"}"
}

case "$cmd" in
  setup) setup ;;
  lab)
    setup
    lab ;;
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
    run "$VENV/bin/python" -m pytest "${rest[@]}" ;;
esac
