"""InsightFace-compatible RecordIO data: conversion, checks, verification packs, synthetic faces, iterators."""
