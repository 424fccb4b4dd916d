# VarGFaceNet from scratch with ArcFace on ms1m-retinaface-t1: the baseline of the LFR2019 deepglint-light
# recipe. At lr 0.1 with step decay VarGFaceNet's loss went to NaN for users of the release, so it follows the
# authors' advice: 2000 updates of linear warm-up, then cosine decay to 0 at 180k updates, and
# Xavier(gaussian, out, 2) initialisation. 64 images per GPU on 8 GPUs (global batch 512), kvstore device.
network = "vargfacenet"
dataset = "retina"
loss = "arcface"

net_init = "xavier_gaussian_out_2"

ctx = "gpu:0,1,2,3,4,5,6,7"
kvstore = "device"
per_batch_size = 64

lr = 0.1
mom = 0.9
wd = 5e-4
lr_schedule = "cosine"
warmup_steps = 2000
warmup_lr = 0.0
lr_total_steps = 180000
lr_min = 0.0
max_steps = 180000
on_nan = "rollback"

loss_s = 64.0
loss_m2 = 0.5

val_targets = ["lfw", "cfp_fp", "agedb_30"]
verbose = 2000  # verify and checkpoint every 2000 updates
frequent = 20
ckpt = 3  # the latest weights as epoch 1, which the later steps load
