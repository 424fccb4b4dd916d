# VarGFaceNet's LFR2019 deepglint-light recipe: an r100 ArcFace teacher, frozen; the student VarGFaceNet trains with
# L = L_arc + 7 * angular distance of the embeddings (alpha = 7, paper section 3.3), for two recursive generations
# (generation 2 starts from generation 1's student with a fresh optimizer; same teacher).
# `vargface distill` keys (InsightFace's names for the training ones). Set teacher to your r100 checkpoint.
network = "vargfacenet"
dataset = "retina"
loss = "arcface"
teacher = "models/r100-arcface-retina/model,1"
kd = ["angular:embedding@7"]
generations = 2
teacher_cache = "auto"
prefix = "models/vargfacenet-recursive/model"
