"""InsightFace-compatible RecordIO data: conversion, checks, verification packs, synthetic faces, iterators.

Light to import (the CLI loads it); ``load_bin`` and ``FaceRecordIter`` are resolved on first use."""

_LAZY = {"load_bin": "vargface.data.verification", "write_bin": "vargface.data.verification",
         "FaceRecordIter": "vargface.data.iterator", "read_property": "vargface.data.recordio",
         "make_synthetic": "vargface.data.synth", "make_synthetic_rec": "vargface.data.synth"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vargface.data' has no attribute {name!r}")
