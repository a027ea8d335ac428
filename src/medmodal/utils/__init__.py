"""Helpers with no medmodal dependency but :mod:`medmodal.errors`: :mod:`.io` (checksums, the one
strict JSON writer) and :mod:`.runtime` (seeds, devices, threads, autocast)."""

__all__ = ["io", "runtime"]
