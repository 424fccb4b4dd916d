# ShrinkTeaNet-style distillation: the angular loss at intermediate stages and at the embedding. ShrinkTeaNet
# publishes neither its stages, nor how channel counts are matched, nor the weights; this is vargface's own design
# (docs/distillation.md): stages matched by resolution (the stride8 and stride16 taps of student and teacher),
# channel vectors compared per location, a train-time 1x1 conv + BN adapter where channel counts differ, stage
# weights below the embedding's (VarGFaceNet's alpha = 7).
network = "vargfacenet"
dataset = "retina"
loss = "arcface"
teacher = "models/r100-arcface-retina/model,1"
kd = ["angular:stride8@1", "angular:stride16@2", "angular:embedding@7"]
prefix = "models/vargfacenet-shrinkteanet/model"

# On 8 GPUs at 64 images each (global batch 512), the live teacher (feature maps cannot be cached) beside the
# student; 180k updates of the vargfacenet preset's warm-up + cosine, as the recursive recipe's students.
ctx = "gpu:0,1,2,3,4,5,6,7"
kvstore = "device"
per_batch_size = 64
max_steps = 180000
lr_total_steps = 180000
