#!/usr/bin/env bash
# timm's own model tests on our six models (issue: drop-in through timm). timm's source distribution
# on the package registry carries its tests/; this unpacks the one of the installed timm and runs its
# tests/test_models.py with our models registered (tools/pytest_timm_suite.py), then the tests it
# selects by model family on ours (tests/test_timm_contract.py). The tests that download pretrained
# weights are left out (no network). Run from the repository root, in the environment to test.
set -euo pipefail
dest=${1:-build/timm-suite}
version=$(python -c "import timm; print(timm.__version__)")
rm -rf "$dest"
mkdir -p "$dest"
python -m pip download -q --no-deps --no-binary :all: --dest "$dest" "timm==$version"
tar -xzf "$dest/timm-$version.tar.gz" -C "$dest"
suite="$dest/timm-$version/tests/test_models.py"
INCEPTION_FAST_TIMM_TESTS="$suite" python -m pytest -p tools.pytest_timm_suite "$suite" tests/test_timm_contract.py \
  -k "(inception_fast_ and not pretrained and not by_family) or by_family" -q -p no:cacheprovider \
  -W ignore::pytest.PytestUnknownMarkWarning
