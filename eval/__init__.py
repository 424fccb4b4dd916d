"""Evaluation and export: .bin verification, TAR@FAR, LFR2019 feature files, ONNX, embeddings."""
