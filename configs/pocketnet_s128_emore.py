# PocketNet-S-128 trained from scratch with ArcFace on MS1MV2 (`emore`), the release's recipe.
# Global batch 512 (128 x 4 GPUs), SGD lr 0.1, momentum 0.9, weight decay 5e-4, learning rate x0.1 from the
# 8th, 14th, 20th and 25th of 26 epochs, gradients clipped to a global L2 norm of 5, mirror augmentation only.
# One epoch is 5,822,653 images // 512 = 11,372 updates (the last partial batch dropped), so the decays fall
# after 7, 13, 19 and 24 epochs of updates.
network = "pocketnet_s128"
dataset = "emore"
loss = "arcface"

emb_size = 128
net_init = "xavier_uniform_in_6"  # U(+-sqrt(6 / fan_in)), as the release's kaiming_uniform_

ctx = "gpu:0,1,2,3"
kvstore = "device"
per_batch_size = 128

lr = 0.1
mom = 0.9
wd = 5e-4
lr_schedule = "step"
lr_factor = 0.1
lr_steps = [79604, 147836, 216068, 272928]
warmup_steps = 0
end_epoch = 26
max_steps = 295672
clip_grad_norm = 5.0

loss_s = 64.0
loss_m1 = 1.0
loss_m2 = 0.5
loss_m3 = 0.0

data_rand_mirror = True
data_cutoff = 0
data_color = 0
val_targets = ["lfw", "cfp_fp", "agedb_30"]
verbose = 5686  # verify every half epoch, as the release's eval_step
frequent = 50
