"""Reproduction studies: a grid of federated runs (task × partition × codec × seed), resumable, aggregated.

``fedsqueeze study CONFIG`` reads a study TOML (:mod:`.grid`), runs every cell with
:func:`fedsqueeze.fl.loop.run` (:mod:`.runner`) into ``OUT/<task>/<partition>/<codec>/seed<k>/`` and writes
``OUT/results.{json,csv,md}`` and ``OUT/bd_rate.json`` (:mod:`.aggregate`, over :mod:`.load`, :mod:`.stats`
and :mod:`.report`) and ``OUT/plots/`` (:mod:`.plots`).
"""

from __future__ import annotations

from .grid import Cell, CodecEntry, PartitionEntry, StudyGrid, TaskEntry, load_study

__all__ = ["Cell", "CodecEntry", "PartitionEntry", "StudyGrid", "TaskEntry", "load_study"]
