# r100 with ArcFace on Glint360K (360,232 identities, 17.1M images) on 8 GPUs, the classifier sharded over them
# and sampled (Partial FC: every class of the batch plus random others up to a tenth of each shard; the Partial FC
# papers report no loss of accuracy at 0.1, IJB-C 97.3 at r = 1 and r = 0.1). InsightFace's schedule for this set
# on 8 GPUs: 64 images per GPU, lr 0.1, x0.1 at 200k, 400k, 500k and 550k updates, 600k in all. The data: the
# folder made by `vargface data rec` from Glint360K, at ../datasets/glint360k or given by --dataset-path DIR.
network = "r100"
dataset = "glint360k"
loss = "arcface"

ctx = "gpu:0,1,2,3,4,5,6,7"
kvstore = "device"
per_batch_size = 64
fc_parallel = True
sample_ratio = 0.1

lr = 0.1
mom = 0.9
wd = 5e-4
lr_schedule = "step"
lr_factor = 0.1
lr_steps = [200000, 400000, 500000, 550000]
max_steps = 600000

loss_s = 64.0
loss_m2 = 0.5

val_targets = ["lfw", "cfp_fp", "agedb_30"]
verbose = 2000
frequent = 20
ckpt = 3
