# The teacher of the LFR2019 deepglint-light recipe: LResNet100E-IR (r100) with ArcFace on ms1m-retinaface-t1,
# InsightFace's r100 schedule: SGD lr 0.1, momentum 0.9, weight decay 5e-4, learning rate x0.1 at 100k and 160k
# updates, 180k updates in all, 64 images per GPU on 8 GPUs (global batch 512), kvstore device.
network = "r100"
dataset = "retina"
loss = "arcface"

ctx = "gpu:0,1,2,3,4,5,6,7"
kvstore = "device"
per_batch_size = 64

lr = 0.1
mom = 0.9
wd = 5e-4
lr_schedule = "step"
lr_factor = 0.1
lr_steps = [100000, 160000]
max_steps = 180000

loss_s = 64.0
loss_m2 = 0.5

val_targets = ["lfw", "cfp_fp", "agedb_30"]
verbose = 2000  # verify and checkpoint every 2000 updates
frequent = 20
ckpt = 3  # the latest weights as epoch 1, which the later steps load
