#!/usr/bin/env bash
# Run the project's test suite, the same way CI does (.ci/run calls this after setting up services):
#
#   deploy/test.sh [pytest args...]          e.g. deploy/test.sh tests/gateway -k docker
#
# Uses .venv/bin/python when the checkout has one (PYTHON=... overrides), and runs
#   python -m pytest -q -p no:cacheprovider -rfEs [args]   (-rfEs: failures, errors and skips summarized)
# Fails when pytest fails, when it collected no test (exit 5), and, with AISTUDIO_REQUIRE_ALL=1, when any
# test was skipped, whatever the reason (the tests turn a missing Docker, Postgres or Chromium into a
# failure themselves under AISTUDIO_REQUIRE_ALL=1; this is the safety net for every other skip).
#
# Services the tests look for (all optional outside CI; a missing one skips its tests):
#   AISTUDIO_TEST_POSTGRES_URL   e.g. postgresql+asyncpg://postgres@127.0.0.1:5433/aistudio_test
#   a Docker engine and the images from deploy/build-images.sh (AISTUDIO_INSTANCE_IMAGE, ...)
#   Debian's Chromium at /usr/bin/chromium (INSTANCE_CHROMIUM_PATH)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

OUT="$(mktemp /tmp/aistudio-pytest.XXXXXX.log)"
trap 'rm -f "$OUT"' EXIT
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider -rfEs "$@" 2>&1 | tee "$OUT"
rc=${PIPESTATUS[0]}
set -e

if [ "$rc" = 5 ]; then
  echo "deploy/test.sh: pytest collected no test (exit 5): failing" >&2
  exit 1
fi
if [ "$rc" != 0 ]; then
  exit "$rc"
fi
if [ "${AISTUDIO_REQUIRE_ALL:-0}" = 1 ]; then
  bad="$(grep -E '^SKIPPED ' "$OUT" || true)"
  if [ -n "$bad" ]; then
    printf '%s\n' "deploy/test.sh: AISTUDIO_REQUIRE_ALL=1 but tests were skipped:" "$bad" >&2
    exit 1
  fi
fi
exit 0
