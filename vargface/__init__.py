"""vargface: VarGFaceNet face recognition on MXNet 1.x (networks, RecordIO data, training, distillation, eval)."""
__version__ = "0.1.0"
