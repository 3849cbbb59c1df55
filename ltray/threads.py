"""Thread pools for per-request work: torch, FAISS (OpenMP) and BLAS, one thread each.

A user's candidates and ranking are a few small searches, matmuls and a forward pass over a few
hundred rows. With every library's pool at the machine's cores, their threads spin against each
other and a user costs many times the wall time and CPU of one thread.
Serve replicas keep one thread for life (`limit_threads`); offline loops over users hold it while
they run (`single_threaded`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def limit_threads(n: int) -> None:
    """torch, FAISS and BLAS pools at n threads from now on."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One thread for torch, FAISS and BLAS inside the block; the previous sizes after it."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch_n, faiss_n = torch.get_num_threads(), faiss.omp_get_max_threads()
    with threadpool_limits(limits=1):
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(torch_n)
            faiss.omp_set_num_threads(faiss_n)
