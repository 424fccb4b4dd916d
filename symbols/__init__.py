"""MXNet Symbol-API networks: VarGFaceNet (as released), ResNet-IR teachers, MobileFaceNet, FLOPs counter."""
