"""How many examples the property-based (hypothesis) tests draw: bounded for CI, scaled for a long run.

    SWAPWATCH_FUZZ_SCALE=50 python -m pytest -q tests/stream/server/test_fuzz_inputs.py \
        tests/stream/server/test_hardening_http.py tests/stream/test_stream_url_contract.py

`bench/reliability.py --parts properties` runs exactly that and reports the result.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("SWAPWATCH_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    """`n` examples in CI, `n * SWAPWATCH_FUZZ_SCALE` in a long run."""
    return max(1, round(n * SCALE))
