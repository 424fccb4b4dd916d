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

# Each generation trains like the student from scratch (configs/vargfacenet_retina.py): warm-up + cosine,
# 180k updates, 64 images per GPU on 8 GPUs.
ctx = "gpu:0,1,2,3,4,5,6,7"
kvstore = "device"
per_batch_size = 64
lr = 0.1
mom = 0.9
wd = 5e-4
lr_schedule = "cosine"
warmup_steps = 2000
lr_total_steps = 180000
max_steps = 180000
on_nan = "rollback"
val_targets = ["lfw", "cfp_fp", "agedb_30"]
verbose = 2000
frequent = 20
ckpt = 3  # the latest weights as epoch 1: generation 2 starts from it
