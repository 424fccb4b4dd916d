# A small ResNet-IR on synthetic faces (`vargface data synth` + `vargface data rec`): the quick start's settings.
#   vargface train --config configs/r18_tiny_synthetic.py --dataset data --prefix models/r18/model
network = "r18_tiny"
loss = "arcface"
image_size = [32, 32]
per_batch_size = 8
lr = 0.1
max_steps = 4
frequent = 2
verbose = 4
