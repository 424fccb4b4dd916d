# PocketNet's multi-step distillation (release train_multi_step_kd.py): ArcFace (s=64, m=0.5) + 100 * mse of the
# L2-normalised embeddings; the teacher is an iResNet-100 trained with the student's embedding size (128), kept as
# one checkpoint per epoch (train it with --ckpt 2 and --verbose = its updates per epoch, so checkpoint n is the
# teacher after n epochs); student epoch e trains under checkpoint e+1 (26 checkpoints for 26 epochs).
# Release schedule: MS1MV2, 4 GPUs x 128, SGD lr 0.1, momentum 0.9, wd 5e-4, lr x0.1 from epochs 8, 14, 20, 25
# (1-based). lr_steps count updates: 5,822,653 images / 512 = 11,372 per epoch, so 7, 13, 19 and 24 epochs.
network = "pocketnet_s128"
dataset = "emore"
loss = "arcface"
teacher_schedule = "models/r100-emb128-arcface-emore/model"
kd = ["mse:embedding@100"]
per_batch_size = 128
ctx = "gpu:0,1,2,3"
lr = 0.1
mom = 0.9
wd = 0.0005
lr_schedule = "step"
lr_steps = [79604, 147836, 216068, 272928]
end_epoch = 26
prefix = "models/pocketnet-s128-multistep/model"
clip_grad_norm = 5.0  # the release clips the embedding network's gradient norm at 5
