#!/usr/bin/env bash
# Build the step_with_logits pull request on upstream moshi 0.2.13 from PyPI and check it (see README.md).
#
#   contrib/upstream_pr/check.sh [--out DIR] [--skip-upstream-tests] [--time]
#
# --out DIR               keep the patched package (and DIR/step_with_logits.patch) in DIR instead of a temporary folder
# --skip-upstream-tests   leave out upstream's own tests (about 5 minutes on 2 busy cores)
# --time                  also print the step_with_logits / step time ratio of the patched package (CPU)
# PYTHON                  the interpreter with this repository's dependencies (default python3); the temporary venv
#                         is made from it with --system-site-packages, so its torch is used and no other is downloaded
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
out="" upstream_tests=1 timing=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="${2:?--out needs a folder}"; shift 2 ;;
        --skip-upstream-tests) upstream_tests=0; shift ;;
        --time) timing=1; shift ;;
        *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
patched="${out:-$work/patched}"
say() { echo "== $*" >&2; }

say "temporary venv with moshi==0.2.13 from PyPI (over $("$python" -c 'import sys; print(sys.executable)'))"
"$python" -m venv --system-site-packages "$work/venv"
venv="$work/venv/bin/python"
# --ignore-installed: this repository's own moshi (0.2.13+fork.1) would otherwise count as 0.2.13. einops is the one
# import of upstream that this repository's dependencies lack.
"$venv" -m pip install --quiet --no-deps --ignore-installed "moshi==0.2.13" "einops>=0.7,<0.9"
"$venv" -m pip download --quiet --no-deps --no-binary :all: --dest "$work/sdist" "moshi==0.2.13"
tar xzf "$work/sdist/moshi-0.2.13.tar.gz" -C "$work"
upstream="$work/moshi-0.2.13"

say "build: $patched"
"$python" "$here/build.py" --upstream "$upstream" --out "$patched"

say "only moshi/models/lm.py differs"
differences="$(diff -rq "$upstream" "$patched" || true)"
expected="Files $upstream/moshi/models/lm.py and $patched/moshi/models/lm.py differ
Only in $patched: step_with_logits.patch"
if [[ "$differences" != "$expected" ]]; then
    echo "error: the patched copy differs from upstream in more than moshi/models/lm.py:" >&2
    echo "$differences" >&2
    exit 1
fi

if [[ $upstream_tests == 1 ]]; then
    say "upstream's tests on the patched package"
    (cd "$patched" && PYTHONPATH="$patched" "$venv" -m pytest -q -p no:cacheprovider \
        tests/test_lm.py moshi/modules/conv_test.py moshi/modules/seanet_test.py)
fi

say "patched step_with_logits vs this fork's, patched step vs upstream's"
cd "$work"
PYTHONPATH="$patched" "$venv" "$here/parity.py" model "$work/parity"
PYTHONPATH="$patched" "$venv" "$here/parity.py" run "$work/parity" patched
env -u PYTHONPATH "$venv" "$here/parity.py" run "$work/parity" upstream
PYTHONPATH="$repo" "$python" "$here/parity.py" run "$work/parity" fork
"$python" "$here/parity.py" compare "$work/parity"

if [[ $timing == 1 ]]; then
    say "time (patched package, CPU)"
    PYTHONPATH="$patched" "$venv" "$here/parity.py" time
fi
say "all checks passed"
