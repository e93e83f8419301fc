"""Memory control for the labelling pass: handing the heap's free pages back to the OS, glibc's mmap threshold.

Private: `tmkd_hf.labelling` trims the heap while the teachers run; `use_fixed_mmap_threshold` is public API as
`tmkd_hf.use_fixed_mmap_threshold`. Everything here is a no-op (or says it could not apply) where the C library is
not glibc.
"""

from __future__ import annotations


def libc_function(name: str):
    """A function of the process's C library by name, or None where it has none (glibc extensions elsewhere)."""
    try:
        import ctypes

        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError, TypeError):
        return None


_MALLOC_TRIM = libc_function("malloc_trim")


def trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc's `malloc_trim`; elsewhere a no-op).

    Why: the teachers' activations change shape with every batch width; once glibc has raised its dynamic mmap
    threshold they are carved from the heap, and the holes they leave stay resident. Peak RSS growth from 10k to 100k
    rows, one MiniLM teacher (`benchmarks/RESULTS.md`): +267 MB untrimmed, +224 MB trimmed after each shard, +81 MB
    trimmed after each batch (the default), which costs 1.043x the labelling time of trimming per shard.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def use_fixed_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Keep glibc's mmap threshold fixed at `threshold` bytes for the rest of this process.

    Why: glibc raises its threshold to the size of every mmapped block it frees (up to 32 MiB). From then on the
    teachers' activations, a different size for every batch width, are carved from the heap and fragment it. The
    default per-batch `malloc_trim` of `label_with_teachers` already keeps the growth of peak RSS from 10k to 100k rows
    at +81 MB; a fixed 128 KiB threshold gave +62 MB (with per-shard trimming), but labelling took 1.32x as long, as
    every large activation becomes a fresh mmap (`benchmarks/RESULTS.md`). For when memory, not time, is short. Same
    effect as `MALLOC_MMAP_THRESHOLD_=131072` in the environment, but callable once the process runs.

    Process-wide and irreversible (glibc has no way back to the dynamic threshold), so nothing calls it by default:
    `recipes/label_teachers.py --fixed_mmap_threshold` does. Returns False where the C library has no `mallopt` (not
    glibc) or refuses the value.
    """
    if not isinstance(threshold, int) or threshold <= 0:
        raise ValueError(f"threshold must be a positive number of bytes, got {threshold!r}.")
    mallopt = libc_function("mallopt")
    if mallopt is None:
        return False
    import ctypes

    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, threshold) == 1
