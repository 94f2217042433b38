"""Win32 call overhead: GetWriteWatch on a 16-page MEM_WRITE_WATCH allocation."""
import pytest

from writewatch import _bench as wb

pytest.importorskip("writewatch.win32", reason="writewatch.win32 is not available")


def test_get_write_watch_16_pages(benchmark, backend):
    wc = wb.Win32Call(backend)
    benchmark.group = "win32 GetWriteWatch, 16 pages"
    try:
        result, count, granularity = benchmark(wc.call)
        assert (result, count, granularity) == (0, 4, wb.PAGE)
        assert [int(a) - wc.base for a in wc.addresses[:4]] == [
            i * wb.PAGE for i in (0, 3, 7, 15)]
    finally:
        wc.close()
