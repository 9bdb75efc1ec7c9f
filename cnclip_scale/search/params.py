"""Which index a collection gets, from its size and a memory budget, before any vector is read.

The rule (the budget is what the index keeps in RAM; the float32 vectors always sit beside it on disk):

1. exact: ``n <= exact_max`` (2M by default) and the float32 vectors fit the budget. Exact search reads every
   vector per query; past a few million that is more than interactive latency on a CPU, whatever the memory.
2. HNSW (``HNSW32,Flat``): the float32 vectors plus the graph (2 x 32 int32 links per vector on level 0) fit the
   budget and ``n <= hnsw_max``. The best latency at a given recall, but its build is the slowest and its memory the
   largest, so it is taken only when the budget allows it outright.
3. IVF-PQ (``IVF{nlist},PQ{m}x8np``): everything else. ``nlist`` is the power of two nearest ``4 sqrt(n)`` (at least
   39 training points per centroid, as FAISS asks); past 2^13 lists the coarse assignment itself is an HNSW
   (``IVF{nlist}_HNSW32``), because assigning n vectors to that many centroids exhaustively dominates the build.
   ``m`` (one byte per sub-vector) is the largest divisor of d in [d/32, min(d/4, 64)] whose codes (m + 8 id bytes
   per vector, +10% list overhead) fit the budget; a budget below the smallest m is an error naming the minimum.
   (``np``: no polysemous training, a code reordering only polysemous search uses, which would triple the build.)
   Compressed scores are approximate, so each search re-ranks ``RERANK x k`` candidates with exact inner products
   read from the memory-mapped float32 vectors: the scores a search returns are always exact.

The search-time knob (``nprobe`` for IVF, ``efSearch`` for HNSW) is not guessed: the build measures recall@10 on
sample queries against exact search and keeps the smallest setting that reaches the target (``tune.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cnclip_scale.errors import UserError

EXACT_MAX = 2_000_000
HNSW_MAX = 10_000_000
HNSW_LINKS = 32
MAX_PQ_M = 64  # past 64 bytes per vector the recall gain is small and every probe scans twice the bytes
MIN_POINTS_PER_LIST = 39
HNSW_QUANTIZER_FROM = 2**13
RERANK = 4  # candidates per wanted result, re-scored exactly (the start; tuning may raise it)
ID_BYTES = 8
KINDS = ("auto", "exact", "hnsw", "ivfpq")


class IndexParamsError(UserError):
    """A budget or a forced kind the collection cannot be indexed with."""


@dataclass(frozen=True, kw_only=True)
class IndexParams:
    kind: str  # exact | hnsw | ivfpq
    factory: str = ""  # the faiss.index_factory string ("" for exact)
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = 0
    hnsw_links: int = 0
    nprobe: int = 0  # set by tuning
    ef_search: int = 0  # set by tuning
    rerank: int = 0  # candidates per result re-scored exactly (0: the index's scores are exact already)
    ram_bytes: int = 0  # the estimate the choice was made on

    def to_dict(self) -> dict:
        return asdict(self)


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"4G"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (binary multiples)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (s[:-1], s[-1]) if s and s[-1] in units else (s, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise IndexParamsError(f"memory budget {text!r}: expected a size such as 512M, 4G or 1.5GiB") from None
    if value <= 0:
        raise IndexParamsError(f"memory budget {text!r} must be positive")
    return int(value)


def human(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def exact_bytes(n: int, d: int) -> int:
    return n * (4 * d + ID_BYTES)


def hnsw_bytes(n: int, d: int) -> int:
    return int(n * (4 * d + ID_BYTES + 2 * HNSW_LINKS * 4) * 1.1)


def ivfpq_bytes(n: int, d: int, m: int, nlist: int) -> int:
    return int(n * (m + ID_BYTES) * 1.1) + nlist * d * 4


def nlist_for(n: int) -> int:
    most = max(1, n // MIN_POINTS_PER_LIST)
    nearest = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(nearest, 2 ** int(math.log2(most)), 2**16))


def pq_m_candidates(d: int) -> list[int]:
    """Divisors of d from min(d/4, 64) down to d/32, largest first (at least 1)."""
    top, bottom = min(d // 4, MAX_PQ_M), max(1, d // 32)
    return [m for m in range(max(top, 1), bottom - 1, -1) if d % m == 0] or [1]


def choose(
    n: int, d: int, budget: int, *, kind: str = "auto", exact_max: int = EXACT_MAX, hnsw_max: int = HNSW_MAX
) -> IndexParams:
    if kind not in KINDS:
        raise IndexParamsError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "exact" or (kind == "auto" and n <= exact_max and exact_bytes(n, d) <= budget):
        return IndexParams(kind="exact", ram_bytes=exact_bytes(n, d))
    if kind == "hnsw" or (kind == "auto" and n <= hnsw_max and hnsw_bytes(n, d) <= budget):
        return IndexParams(
            kind="hnsw", factory=f"HNSW{HNSW_LINKS},Flat", hnsw_links=HNSW_LINKS, ram_bytes=hnsw_bytes(n, d)
        )
    nlist = nlist_for(n)
    coarse = f"IVF{nlist}_HNSW{HNSW_LINKS}" if nlist >= HNSW_QUANTIZER_FROM else f"IVF{nlist}"
    candidates = pq_m_candidates(d)
    fitting = [m for m in candidates if ivfpq_bytes(n, d, m, nlist) <= budget]
    if not fitting:
        need = ivfpq_bytes(n, d, candidates[-1], nlist)
        raise IndexParamsError(
            f"memory budget {human(budget)} is too small for {n:,} vectors of dim {d}: "
            f"the most compressed index (PQ{candidates[-1]}) needs {human(need)}"
        )
    m = fitting[0]
    return IndexParams(
        kind="ivfpq",
        factory=f"{coarse},PQ{m}x8np",
        nlist=nlist,
        pq_m=m,
        pq_bits=8,
        rerank=RERANK,
        ram_bytes=ivfpq_bytes(n, d, m, nlist),
    )
