#!/usr/bin/env bash
# The course's two commands, on a fresh machine or an existing checkout:
#
#   bash start.sh          set up the course (a virtual environment, .venv, with everything it needs)
#                          and open it in JupyterLab; extra arguments go to JupyterLab,
#                          e.g. `bash start.sh --no-browser --port 8889`
#   bash start.sh test     set up the same environment if it is missing or out of date, then run the
#                          tests: unit tests, then every notebook through nbval, in the fast `smoke`
#                          profile; extra arguments go to pytest, e.g. `bash start.sh test tests/test_engine.py`
#
# COURSE_EXTRAS adds optional parts of the package, e.g. COURSE_EXTRAS=browser (Playwright, for the browser
# test; CI sets it).
set -euo pipefail
cd "$(dirname "$0")"

mode=open
if [ "${1:-}" = "test" ]; then
  mode=test
  shift
fi

# A virtual environment, created once; reinstalled only when requirements.txt, pyproject.toml or the extras change.
extras="course,test${COURSE_EXTRAS:+,$COURSE_EXTRAS}"
stamp=.venv/.course-installed
wanted="$( (cat requirements.txt pyproject.toml; echo "$extras") | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
  echo "Creating the virtual environment .venv (first run: PyTorch is large, this takes a few minutes)..."
  python3 -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$wanted" > "$stamp"
fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  echo "Tip: 'sudo apt-get install dataset-fashion-mnist' gives you Fashion-MNIST offline;"
  echo "     otherwise the notebooks download it on first use."
fi

if [ "$mode" = "test" ]; then
  export MPLBACKEND=Agg COURSE_PROFILE="${COURSE_PROFILE:-smoke}"
  exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -c "import course_utils as cu; print(cu.describe_setup())"
exec .venv/bin/jupyter lab notebooks/ "$@"
