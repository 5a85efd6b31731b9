#!/usr/bin/env bash
# Set up the course (a virtual environment with everything it needs) and open it in JupyterLab.
# Extra arguments go to JupyterLab, e.g. `bash start.sh --no-browser --port 8889`.
set -euo pipefail
cd "$(dirname "$0")"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q -e .

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  echo "Tip: 'sudo apt-get install dataset-fashion-mnist' gives you Fashion-MNIST offline;"
  echo "     otherwise the notebooks download it on first use."
fi
.venv/bin/python -c "import course_utils as cu; print(cu.describe_setup())"
exec .venv/bin/jupyter lab notebooks/ "$@"
