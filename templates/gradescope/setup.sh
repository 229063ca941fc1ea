#!/usr/bin/env bash
# Gradescope runs this once, in /autograder/source, while it builds the autograder image.
# It installs the grader (this bundle's source) with the CPU build of torch in its own venv,
# and bubblewrap for the sandbox (grading falls back to process limits, with a warning in
# the log, if the container cannot create namespaces).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv python3-pip bubblewrap
python3 -m venv /opt/specialist-labs
/opt/specialist-labs/bin/pip install --upgrade pip
/opt/specialist-labs/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
/opt/specialist-labs/bin/pip install /autograder/source
# Labs that load the course's base model find it in the cache (read-only under the sandbox): build it now.
/opt/specialist-labs/bin/python -m labkit.zoo build
/opt/specialist-labs/bin/grader doctor || true
