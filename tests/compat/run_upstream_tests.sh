#!/usr/bin/env bash
# Run upstream moshi's own tests against this package, unchanged except for the in-package tests' relative imports.
#
#   tests/compat/run_upstream_tests.sh /path/to/kyutai-labs-moshi [extra pytest arguments]
#
# The argument is a checkout of github.com/kyutai-labs/moshi (its `moshi/` folder is enough; the 0.2.13 release commit
# is b349f4d). The tests run from a temporary copy: moshi/tests/test_lm.py with its assets, and
# moshi/moshi/modules/{conv,seanet}_test.py with `from .conv import` / `from .seanet import` made absolute
# (`from moshi.modules.conv import` ...). This repository's `moshi` is put first on PYTHONPATH.
set -euo pipefail

upstream="${1:?usage: $0 /path/to/kyutai-labs-moshi [pytest arguments]}"
shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
for needed in moshi/tests/test_lm.py moshi/moshi/modules/conv_test.py moshi/moshi/modules/seanet_test.py; do
    if [[ ! -f "$upstream/$needed" ]]; then
        echo "error: $upstream/$needed not found (expected a kyutai-labs/moshi checkout)" >&2
        exit 2
    fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/upstream_tests"
cp -r "$upstream/moshi/tests/." "$work/upstream_tests/"
for name in conv_test seanet_test; do
    sed -E 's/^from \.([a-z_]+) import/from moshi.modules.\1 import/' \
        "$upstream/moshi/moshi/modules/$name.py" > "$work/upstream_tests/$name.py"
done

cd "$work"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
python -c 'import moshi, sys; print(f"testing moshi {moshi.__version__} from {moshi.__file__}", file=sys.stderr)'
python -m pytest -q -p no:cacheprovider upstream_tests "$@"
