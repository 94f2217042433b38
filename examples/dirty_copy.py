"""Keep a copy of a buffer up to date by copying only the pages written
since the last sync: what a save state, a checkpointer or an upload to a
GPU does every frame.

It is also the typed example: ``mypy --strict examples/dirty_copy.py``
checks it against the type stubs that writewatch ships
(tests/test_typing.py does so).

    python examples/dirty_copy.py
"""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt

import writewatch


def sync(region: writewatch.Region, view: npt.NDArray[np.uint8],
         mirror: npt.NDArray[np.uint8]) -> int:
    """Copy the pages of `region` written since the last sync from `view` (a
    view of the region) into `mirror`, and re-arm them; return how many."""
    page = region.page_size
    written: npt.NDArray[np.uint64] = region.get_write_watch(reset=True)
    for address in written:
        start = int(address) - region.address
        mirror[start:start + page] = view[start:start + page]
    return len(written)


def main(frames: int = 10, npages: int = 256, per_frame: int = 8) -> int:
    try:
        region = writewatch.Region(npages * writewatch.PAGE_SIZE)
    except writewatch.BackendUnavailable as e:
        print("no write-watch backend can run here:", e, file=sys.stderr)
        return 1
    with region:
        # np.frombuffer(region) works as well; memoryview() is for mypy:
        # numpy's stubs take any buffer there only for Python >= 3.12.
        view = np.frombuffer(memoryview(region), dtype=np.uint8)
        mirror = np.zeros(region.size, dtype=np.uint8)
        rng = np.random.default_rng(1)
        copied = 0
        for frame in range(frames):
            for p in rng.choice(npages, size=per_frame, replace=False):
                view[int(p) * region.page_size + frame] = frame + 1
            copied += sync(region, view, mirror)
        identical = bool(np.array_equal(view, mirror))
        print("%s backend: %d frames, %d of %d pages copied, copy %s"
              % (region.backend, frames, copied, frames * npages,
                 "identical" if identical else "DIFFERS"))
        del view        # no view may outlive the region: close() refuses
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
