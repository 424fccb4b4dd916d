"""bfloat16 inference on CPU (oneDNN, MXNet's AMP conversion of the inference graph) against float32, in one run.

Speed: images/s of full-size presets (random weights) in float32 and bfloat16, alternating rounds. Accuracy: with
--model and --target, the 10-fold Accuracy-Flip and TAR@FAR of a trained checkpoint on a verification pack in
both types. docs/inference.md#bfloat16 has the figures and why bfloat16 is not offered as an option.
Run: OMP_NUM_THREADS=2 .venv/bin/python bench/bf16.py [--model PREFIX,EPOCH --target PACK.bin]"""
import argparse
import os
import statistics
import sys

from vargface.openmp import configure  # noqa: E402

configure(one_cpu_device=True)
os.environ.update(MXNET_SUBGRAPH_BACKEND="default", MXNET_SUBGRAPH_VERBOSE="0")  # as the runner binds

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from infer import images_per_second  # noqa: E402  (bench/infer.py: the median pass of a timed run)


def executors(sym, arg, aux, batch, size):
    """{'float32': forward, 'bfloat16': forward} of the inference graph of ``sym``."""
    from mxnet.contrib import amp

    from vargface.symbols.inference import InferenceGraph

    graph = InferenceGraph(sym, arg, size)
    arrays = [{k: mx.nd.array(v) for k, v in part.items()} for part in graph.params(arg, aux)]
    variants = {"float32": (graph.symbol, *arrays),
                "bfloat16": amp.convert_model(graph.symbol, *arrays, target_dtype="bfloat16",
                                              # a PReLU kept for a slope above 1 has no bfloat16 kernel
                                              conditional_fp32_ops=[("LeakyReLU", "act_type",
                                                                     ["elu", "selu", "prelu"]),
                                                                    ("Activation", "act_type", ["softrelu"])],
                                              cast_optional_params=True)}
    forwards = {}
    for name, (symbol, args, auxs) in variants.items():
        types = {k: v.dtype for k, v in {**args, **auxs}.items()}
        executor = symbol.simple_bind(mx.cpu(), data=(batch, 3, size, size), grad_req="null",
                                      type_dict={**types, "data": np.float32})
        executor.copy_params_from(args, auxs)

        def forward(images, executor=executor):
            padded = np.zeros((batch,) + images.shape[1:], np.float32)
            padded[:len(images)] = images
            out = executor.forward(is_train=False, data=mx.nd.array(padded))[0]
            return out.astype("float32").asnumpy()[:len(images)]
        forwards[name] = forward
    return forwards


def speed(presets, batch, rounds, seconds):
    from vargface.symbols import get_symbol
    from vargface.train.checkpoint import random_params

    for preset in presets:
        sym = get_symbol(preset)
        arg, aux = random_params(sym, 112)
        forwards = executors(sym, arg, aux, batch, 112)
        images = np.random.RandomState(0).uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32)
        rates = {name: [] for name in forwards}
        for forward in forwards.values():
            forward(images)
        for _ in range(rounds):
            for name, forward in forwards.items():
                rates[name].append(images_per_second(lambda: forward(images), batch, seconds))
        f32, b16 = (statistics.median(rates[k]) for k in ("float32", "bfloat16"))
        print(f"{preset:<24} batch {batch}: float32 {f32:7.1f} img/s  bfloat16 {b16:7.1f} img/s  "
              f"ratio {b16 / f32:.2f}", flush=True)


def accuracy(model, target, batch):
    from vargface.eval.runner import flip_sum_embeddings
    from vargface.eval.verification import evaluate, load_pairs
    from vargface.symbols.checkpoint import input_size_of, load_checkpoint, parse_model_arg

    sym, arg, aux = load_checkpoint(*parse_model_arg(model))
    size = input_size_of(sym)
    images, issame = load_pairs(target, size)
    for name, forward in executors(sym, arg, aux, batch, size).items():
        result = evaluate(flip_sum_embeddings(images, forward, batch, dtype=np.float64), issame)
        tars = ", ".join(f"TAR {row['tar']:.4f} @ FAR {row['far']:g}" for row in result["tar_at_far"])
        print(f"{name:<9} accuracy {100 * result['accuracy']:.2f}% (+-{100 * result['std']:.2f})  {tars}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="vargfacenet,y2,pocketnet_s128,r50")
    parser.add_argument("--per-batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--model", help="PREFIX,EPOCH of a trained checkpoint for the accuracy comparison")
    parser.add_argument("--target", help="verification pack (.bin) for the accuracy comparison")
    args = parser.parse_args(argv)
    print(f"{os.environ['OMP_NUM_THREADS']} threads, MXNet {mx.__version__}")
    if args.model and args.target:
        accuracy(args.model, args.target, args.per_batch_size)
    if args.presets:
        speed(args.presets.split(","), args.per_batch_size, args.rounds, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
