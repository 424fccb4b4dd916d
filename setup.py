"""vargface: VarGFaceNet face-recognition training toolkit on Apache MXNet 1.x.

The repository's top-level folders are the sub-packages: ``symbols/`` installs as ``vargface.symbols``,
``data/`` as ``vargface.data``, ``train/`` as ``vargface.train`` and ``eval/`` as ``vargface.eval``.
"""
from setuptools import setup

SUBPACKAGES = ["symbols", "data", "train", "eval"]

setup(
    name="vargface",
    version="0.1.0",
    description="VarGFaceNet face recognition on MXNet: networks, RecordIO tools, training, distillation, evaluation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=["vargface"] + ["vargface." + name for name in SUBPACKAGES],
    package_dir={"vargface": "vargface", **{"vargface." + name: name for name in SUBPACKAGES}},
    # Versions that work together are pinned in requirements.txt; these are the loose needs.
    install_requires=[
        "mxnet>=1.9,<2",  # or mxnet-cu112 on GPUs: install it first, then `pip install --no-deps -e .`
        "numpy>=1.20,<1.24",
        "gluoncv>=0.10",
        "opencv-python",
        "scikit-learn",
        "easydict",
        "tqdm",
        "matplotlib",
        "portalocker",
    ],
    extras_require={"onnx": ["onnx==1.18.0", "onnxruntime"]},
    entry_points={"console_scripts": ["vargface=vargface.cli:main"]},
)
